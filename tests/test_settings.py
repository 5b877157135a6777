"""AcquisitionSettings: the ome-writers 0.3.2 names and defaults, and errors naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import ome_writers_service as ows
from ome_writers_service import (AcquisitionSettings, Channel, Dimension, OmeTiffFormat, ScratchFormat,
                                 OmeZarrFormat, Plate, Position, PositionDimension,
                                 dims_from_standard_axes)

YX = [Dimension(name="y", count=32), Dimension(name="x", count=32)]


def settings(**kw):
    kw.setdefault("root_path", "a.ome.zarr")
    kw.setdefault("dtype", "uint16")
    kw.setdefault("dimensions", [Dimension(name="t", count=4), *YX])
    return AcquisitionSettings(**kw)


def test_public_names_of_ome_writers_are_exported():
    for name in ["AcquisitionSettings", "Dimension", "PositionDimension", "Position", "Channel",
                 "Plate", "OmeZarrFormat", "OmeTiffFormat", "ScratchFormat", "StandardAxis",
                 "dims_from_standard_axes", "create_stream", "OMEStream"]:
        assert hasattr(ows, name), name


def test_defaults_match_ome_writers_0_3_2():
    s = AcquisitionSettings()
    assert (s.root_path, s.dimensions, s.dtype, s.format, s.compression, s.storage_order,
            s.plate, s.overwrite) == ("", (), "", ScratchFormat(), None, "ome", None, False)
    d = Dimension(name="q")
    assert (d.count, d.chunk_size, d.shard_size_chunks, d.unit, d.scale, d.translation,
            d.coords) == (None, None, None, None, None, None, None)
    assert PositionDimension().name == "p" and PositionDimension().type == "position"
    assert OmeZarrFormat().suffix == ".ome.zarr" and OmeTiffFormat().suffix == ".ome.tiff"
    t = OmeTiffFormat()
    # (not the companion file's name: 0.3.2's "companion.ome" is not one Bio-Formats reads)
    assert (t.prefer_single_file, t.multi_file_metadata, t.companion_file) == \
        ("auto", "redundant", None)
    assert t.companion_name("run") == "run.companion.ome"
    assert Position(name="A1").plate_row is None and Channel(name="GFP").color is None


@pytest.mark.parametrize("name,kind", [("t", "time"), ("c", "channel"), ("z", "space"),
                                       ("y", "space"), ("p", "position"), ("angle", "other")])
def test_dimension_type_is_inferred_from_its_name(name, kind):
    assert Dimension(name=name, count=2).type == kind


def test_format_inferred_from_suffix():
    assert isinstance(settings(root_path="x.ome.zarr").format, OmeZarrFormat)
    assert isinstance(settings(root_path="x.ome.tiff").format, OmeTiffFormat)
    assert isinstance(settings(root_path="x.tif").format, OmeTiffFormat)
    assert isinstance(settings(root_path="x.data", format="ome-zarr").format, OmeZarrFormat)


@pytest.mark.parametrize("make,message", [
    (lambda: dict(dimensions=[Dimension(name="t", count=4, chunk_size=5), *YX]),
     "chunk_size=5 is larger than count=4"),
    (lambda: dict(dimensions=[Dimension(name="t", count=None), Dimension(name="z", count=None), *YX]),
     "Only the first dimension may be unbounded"),
    (lambda: dict(dimensions=[Dimension(name="t", count=3), Dimension(name="z", count=None), *YX]),
     "'z' is unbounded"),
    (lambda: dict(dtype="complex64"), "dtype 'complex64' is not supported"),
    (lambda: dict(dtype="banana"), "Invalid dtype 'banana': not a numpy dtype"),
    (lambda: dict(storage_order=["t", "q"]), "not a permutation"),
    (lambda: dict(dimensions=[Dimension(name="t", count=2), Dimension(name="t", count=2), *YX]),
     "duplicate names"),
    (lambda: dict(dimensions=[Dimension(name="y", count=8), Dimension(name="t", count=2),
                      Dimension(name="x", count=8)]), "The last two dimensions must be spatial"),
    (lambda: dict(dimensions=[Dimension(name="t", count=2), Dimension(name="z", count=2), *YX],
          storage_order=["z", "t"]), "time must come first"),
    (lambda: dict(compression="lzw"), "not available for OME-Zarr"),
    (lambda: dict(root_path="a.ome.tiff", compression="blosc-zstd"), "not available for OME-TIFF"),
    (lambda: dict(root_path="a.ome.tiff", dimensions=[Dimension(name="angle", count=2), *YX]),
     "cannot be represented"),
    (lambda: dict(plate=Plate(row_names=["A"], column_names=["1"])), "requires a position dimension"),
    (lambda: dict(plate=Plate(row_names=["A"], column_names=["1"]), dimensions=[
        PositionDimension(coords=[Position(name="f0")]), *YX]),
     "Missing row/column for positions: \['f0'\]"),
])
def test_invalid_settings_fail_at_construction_naming_the_problem(make, message):
    with pytest.raises(ValidationError, match=message):
        settings(**make())


def test_coords_set_the_count_and_must_agree_with_it():
    d = Dimension(name="c", coords=["DAPI", "GFP"])
    assert d.count == 2 and [c.name for c in d.channels] == ["DAPI", "GFP"]
    with pytest.raises(ValidationError, match="count=3 but 2 coords"):
        Dimension(name="c", count=3, coords=["DAPI", "GFP"])


def test_storage_order_ome_sorts_time_channel_space_and_keeps_frame_last():
    s = settings(dimensions=[Dimension(name="z", count=3), Dimension(name="c", count=2),
                             Dimension(name="t", count=4), *YX])
    assert [d.name for d in s.storage_dimensions] == ["t", "c", "z", "y", "x"]
    s = settings(root_path="a.ome.tiff", storage_order="acquisition",
                 dimensions=[Dimension(name="z", count=3), Dimension(name="t", count=4), *YX])
    assert [d.name for d in s.storage_dimensions] == ["z", "t", "y", "x"]


def test_position_dimension_is_not_an_array_axis_and_may_sit_anywhere():
    s = settings(dimensions=[Dimension(name="t", count=2),
                             PositionDimension(coords=["A", "B", "C"]),
                             Dimension(name="c", count=2), *YX])
    assert [d.name for d in s.storage_dimensions] == ["t", "c", "y", "x"]
    assert [p.name for p in s.positions] == ["A", "B", "C"]
    assert s.num_frames == 12
    plain = settings(dimensions=[Dimension(name="p", count=2, type="position"), *YX])
    assert isinstance(plain.position_dimension, PositionDimension)


def test_dims_from_standard_axes():
    dims = dims_from_standard_axes({"t": 3, "p": ["A1", "B2"], "c": ["DAPI", "GFP"], "z": 4,
                                    "y": 64, "x": 64}, chunk_shapes={"z": 2, "y": 32},
                                   shard_shapes={"y": 2})
    assert [(d.name, d.type, d.count) for d in dims] == [
        ("t", "time", 3), ("p", "position", 2), ("c", "channel", 2), ("z", "space", 4),
        ("y", "space", 64), ("x", "space", 64)]
    assert dims[3].chunk_size == 2 and dims[4].chunk_size == 32 and dims[4].shard_size_chunks == 2
    assert isinstance(dims[1], PositionDimension) and dims[1].coords[0].name == "A1"
    with pytest.raises(ValueError, match="'q' is not one of"):
        dims_from_standard_axes({"q": 2, "y": 4, "x": 4})


def test_settings_round_trip_through_json():
    s = settings(dimensions=[Dimension(name="t", count=None, chunk_size=2),
                             PositionDimension(coords=[Position(name="A", x_coord=1.5)]),
                             Dimension(name="c", coords=[Channel(name="GFP", color="green")]),
                             *YX])
    again = AcquisitionSettings.model_validate_json(s.model_dump_json())
    assert again == s


# ---- drop-in behaviour checked against ome-writers 0.3.2 ----

def test_dimension_type_inferred_from_coords_then_unit_then_name_as_ome_writers():
    pos = Dimension(name="pos", coords=[Position(name="A1"), Position(name="B2")])
    assert (pos.type, pos.count) == ("position", 2)
    s = settings(dimensions=[pos, *YX])
    assert isinstance(s.position_dimension, PositionDimension)
    assert s.position_dimension.name == "pos" and [p.name for p in s.positions] == ["A1", "B2"]
    assert Dimension(name="ch", coords=[Channel(name="GFP"), "DAPI"]).type == "channel"
    assert Dimension(name="ch", coords=[Channel(name="GFP")]).coords[0].name == "GFP"
    # a unit of length makes a space axis, of time a time axis; stored as the OME-Zarr name
    q = Dimension(name="q", count=2, unit="um")
    assert (q.type, q.unit) == ("space", "micrometer")
    assert Dimension(name="q", count=2, unit="ms").type == "time"
    assert Dimension(name="q", count=2, unit="furlongs").type == "other"  # nothing says
    with pytest.raises(ValidationError, match="conflicting dimension type inference"):
        Dimension(name="ch", coords=[Channel(name="GFP")], unit="um")
    with pytest.raises(ValidationError, match="Channel objects in coords require type='channel'"):
        Dimension(name="ch", type="other", coords=[Channel(name="GFP")])
    with pytest.raises(ValidationError, match="Position objects in coords require type='position'"):
        Dimension(name="q", type="channel", coords=[Position(name="A1")])
    with pytest.raises(ValidationError, match="May not mix Channel objects"):
        Dimension(name="ch", coords=[Channel(name="GFP"), 1.5])


def test_root_path_accepts_a_pathlike_and_stores_a_str(tmp_path):
    s = settings(root_path=tmp_path / "a.ome.tiff")
    assert s.root_path == str(tmp_path / "a.ome.tiff") and type(s.root_path) is str
    assert isinstance(s.format, OmeTiffFormat)
    assert AcquisitionSettings(root_path=tmp_path / "b.ome.zarr").root_path.endswith("b.ome.zarr")


@pytest.mark.parametrize("name,cls,backend", [
    ("tensorstore", OmeZarrFormat, "tensorstore"), ("zarr-python", OmeZarrFormat, "zarr-python"),
    ("acquire-zarr", OmeZarrFormat, "acquire-zarr"), ("zarrs-python", OmeZarrFormat, "zarrs-python"),
    ("tifffile", OmeTiffFormat, "tifffile"), ("ome-zarr", OmeZarrFormat, "auto"),
    ("zarr", OmeZarrFormat, "auto"), ("ome-tiff", OmeTiffFormat, "auto"),
    ("tiff", OmeTiffFormat, "auto"),
])
def test_format_accepts_backend_names_as_ome_writers(name, cls, backend):
    root = "a.data" if cls is OmeZarrFormat else "b.data"
    s = settings(root_path=root, format=name)
    assert isinstance(s.format, cls) and s.format.backend == backend


def test_assignments_are_validated_and_a_rejected_one_changes_nothing(tmp_path):
    import numpy as np

    from ome_writers_service import create_stream
    from ome_writers_service.metadata import dataset_info

    s = AcquisitionSettings(root_path=str(tmp_path / "late.ome.zarr"))
    s.dimensions = [Dimension(name="t", count=2), Dimension(name="y", count=4),
                    Dimension(name="x", count=4)]
    s.dtype = np.uint16
    assert isinstance(s.format, OmeZarrFormat) and s.dtype == "uint16"
    with create_stream(s, in_process=True) as stream:
        for i in range(2):
            stream.append(np.full((4, 4), i, np.uint16))
    assert dataset_info(s.root_path)["images"][0]["shape"] == [2, 4, 4]
    before = s.model_dump()
    for field, value, message in [
        ("dtype", "complex64", "not supported"), ("compression", "lzw", "not available for OME-Zarr"),
        ("storage_order", ["q"], "not a permutation"),
        ("dimensions", [Dimension(name="y", count=4)], "At least 2 non-position dimensions"),
    ]:
        with pytest.raises(ValidationError, match=message):
            setattr(s, field, value)
        assert s.model_dump() == before, field
    copy = s.model_copy(update={"root_path": str(tmp_path / "other.ome.zarr")})
    assert copy.root_path.endswith("other.ome.zarr") and copy.format == s.format
    # derived values follow the fields they come from
    d = Dimension(name="q", count=2)
    assert d.type == "other"
    d.unit = "um"
    assert (d.type, d.unit) == ("space", "micrometer")
    c = Dimension(name="c", coords=["DAPI", "GFP"])
    c.coords = ["DAPI", "GFP", "Cy5"]
    assert c.count == 3 and [ch.name for ch in c.channels] == ["DAPI", "GFP", "Cy5"]
    with pytest.raises(ValidationError, match="count=3 but 2 coords"):
        Dimension(name="c", count=3, coords=["DAPI", "GFP"])


def test_last_two_dims_with_non_standard_names_become_space_with_a_warning():
    with pytest.warns(UserWarning, match="non-standard dimension name") as record:
        s = settings(dimensions=[Dimension(name="t", count=2), Dimension(name="row", count=8),
                                 Dimension(name="col", count=8)])
    assert {str(w.message).split()[-1] for w in record} == {"'row'.", "'col'."}
    assert [d.type for d in s.dimensions] == ["time", "space", "space"]
    assert s.frame_shape == (8, 8)
    with pytest.raises(ValidationError, match="The last two dimensions must be spatial"):
        settings(dimensions=[Dimension(name="row", count=8, type="other"),
                             Dimension(name="col", count=8, type="space")])


def test_dims_from_standard_axes_units_and_chunks_as_ome_writers():
    dims = dims_from_standard_axes({"t": 2, "p": ["a"], "c": ["DAPI"], "z": 3, "y": 4, "x": 5})
    assert [(d.name, d.type, d.unit, d.chunk_size) for d in dims] == [
        ("t", "time", "second", 1), ("p", "position", None, None), ("c", "channel", None, 1),
        ("z", "space", "micrometer", 1), ("y", "space", "micrometer", 4),
        ("x", "space", "micrometer", 5)]
    p = dims_from_standard_axes({"p": 3, "y": 4, "x": 4})[0]
    assert [q.name for q in p.coords] == ["0", "1", "2"]


XML_BAD = "bad\x01name"


@pytest.mark.parametrize("make,message", [
    (lambda: dict(dimensions=[Dimension(name="z", count=2, translation=float("nan")), *YX]),
     "dimension 'z': translation must be a finite number"),
    (lambda: dict(dimensions=[Dimension(name="z", count=2, translation=float("-inf")), *YX]),
     "dimension 'z': translation must be a finite number"),
    (lambda: dict(dimensions=[Dimension(name="z", count=2, scale=float("inf")), *YX]),
     "dimension 'z': scale must be a positive finite number"),
    (lambda: dict(dimensions=[Dimension(name="c", coords=[]), *YX]), "coords is empty"),
    (lambda: dict(dimensions=[Dimension(name="z", count=2, type="space", unit="s"), *YX]),
     "unit 's' is a unit of time, but 'z' is a space axis"),
    (lambda: dict(dimensions=[Dimension(name="t", count=2, type="time", unit="um"), *YX]),
     "unit 'um' is a unit of length, but 't' is a time axis"),
    (lambda: dict(dimensions=[Dimension(name="z", count=2, unit="furlong"), *YX]),
     r"Unrecognized unit of length 'furlong'.*micrometer"),
    (lambda: dict(dimensions=[Dimension(name="t", count=2, unit="fortnight"), *YX]),
     r"Unrecognized unit of time 'fortnight'.*millisecond"),
    (lambda: dict(plate=Plate(row_names=["A-1"], column_names=["1"])),
     r"\['A-1'\] are not valid row/column names"),
    (lambda: dict(plate=Plate(row_names=["A"], column_names=["1 "])),
     r"\['1 '\] are not valid row/column names"),
    (lambda: dict(dimensions=[PositionDimension(coords=[Position(name="f", plate_row="A")]), *YX]),
     "plate_row and plate_column must both be set"),
    (lambda: dict(dimensions=[PositionDimension(coords=[Position(name="f", grid_column=1)]), *YX]),
     "grid_row and grid_column must both be set"),
    (lambda: dict(dimensions=[PositionDimension(coords=["a", "b", "a"]), *YX]),
     r"must have unique names.*duplicates: \['a'\]"),
    (lambda: dict(dimensions=[PositionDimension(coords=[
        Position(name="f0", plate_row="A", plate_column="1"),
        Position(name="f0", plate_row="A", plate_column="1")]), *YX]),
     r"unique within each group; duplicates in well \('A', '1'\)"),
    (lambda: dict(dimensions=[Dimension(name="c", coords=["GFP", "GFP"]), *YX]),
     r"Channel names must be unique; duplicates: \['GFP'\]"),
    (lambda: dict(dimensions=[Dimension(name="c", coords=[Channel(name="")]), *YX]),
     "at least 1 character"),
    (lambda: dict(dimensions=[PositionDimension(coords=[Position(name="")]), *YX]),
     "at least 1 character"),
    (lambda: dict(dimensions=[Dimension(name="c", coords=[XML_BAD]), *YX]),
     r"name 'bad\\x01name' contains the character '\\x01'.*XML 1.0 forbids"),
    (lambda: dict(dimensions=[Dimension(name="c", coords=[Channel(name="G", fluorophore="\x0b")]),
                              *YX]), "fluorophore '.*XML 1.0 forbids"),
    (lambda: dict(dimensions=[PositionDimension(coords=[XML_BAD]), *YX]),
     "name 'bad.*XML 1.0 forbids"),
    (lambda: dict(image_name="HeLa\x07"), "image_name 'HeLa.*XML 1.0 forbids"),
    (lambda: dict(plate=Plate(row_names=["A"], column_names=["1"], name="P\x00")),
     "name 'P.*XML 1.0 forbids"),
    (lambda: dict(instrument=ows.Instrument(microscope_model="Ti\x1f")),
     "microscope_model 'Ti.*XML 1.0 forbids"),
    (lambda: dict(instrument=ows.Instrument(objective=ows.Objective(manufacturer="N\x0c"))),
     "manufacturer 'N.*XML 1.0 forbids"),
    (lambda: dict(root_path="a.ome.tiff", dtype="int64"), "no 64-bit integer PixelType"),
    (lambda: dict(root_path="a.ome.tiff", dtype="uint64"), "no 64-bit integer PixelType"),
])
def test_more_invalid_settings_fail_at_construction_naming_the_problem(make, message):
    with pytest.raises(ValidationError, match=message):
        settings(**make())


def test_valid_corner_cases_are_accepted():
    # the same position name in different wells or grid cells, as ome-writers allows
    s = settings(plate=Plate(row_names=["A"], column_names=["1", "2"]), dimensions=[
        PositionDimension(coords=[Position(name="f0", plate_row="A", plate_column="1"),
                                  Position(name="f0", plate_row="A", plate_column="2")]), *YX])
    assert len(s.positions) == 2
    assert Position(name="0", grid_row=0, grid_column=1).grid_column == 1
    # tab, newline and non-ASCII are legal XML
    assert Channel(name="mCherry\tλ 610\n").name == "mCherry\tλ 610\n"
    # 64-bit integers: OME-Zarr stores them, as in ome-writers
    assert settings(dtype="int64").dtype == "int64" and settings(dtype="uint64").dtype == "uint64"


def test_settings_helpers_of_ome_writers():
    s = settings(root_path="a.ome.zarr", dimensions=[
        Dimension(name="z", count=3), Dimension(name="p", type="position", coords=["A", "B"]),
        Dimension(name="t", count=2), Dimension(name="c", coords=["DAPI", "GFP"]), *YX])
    # values as ome-writers 0.3.2 gives them for the same settings
    assert s.shape == (3, 2, 2, 2, 32, 32)
    assert [d.name for d in s.frame_dimensions] == ["y", "x"]
    assert [d.name for d in s.index_dimensions] == ["z", "t", "c"]
    assert [d.name for d in s.array_storage_dimensions] == ["t", "c", "z", "y", "x"]
    assert s.position_dimension_index == 1
    assert s.storage_index_permutation == (1, 2, 0)
    assert s.validate_stream_ready() is True
    assert settings(dimensions=[Dimension(name="t", count=2), *YX]).position_dimension_index is None
    empty = AcquisitionSettings(root_path="a.ome.zarr")
    with pytest.raises(ValueError, match="dimensions has not been set yet"):
        empty.shape
    with pytest.raises(ValueError, match="dimensions is empty"):
        empty.validate_stream_ready()


def test_position_dimension_positions_keyword_plate_from_standard_wells_channel_from_str():
    pd = PositionDimension(positions=["A1", Position(name="B2", x_coord=1.0)])
    assert [p.name for p in pd.coords] == ["A1", "B2"] and pd.count == 2
    plate = Plate.from_standard_wells(96)
    assert plate.row_names == list("ABCDEFGH") and plate.column_names == [str(i) for i in range(1, 13)]
    assert Plate.from_standard_wells((30, 2)).row_names[-5:] == ["Z", "AA", "BB", "CC", "DD"]
    with pytest.raises(ValueError, match="Unrecognized standard plate size: 7"):
        Plate.from_standard_wells(7)
    assert Channel.model_validate("GFP") == Channel(name="GFP")
    assert Position.model_validate("A1") == Position(name="A1")


def test_int64_zarr_is_written(tmp_path):
    import numpy as np
    import tensorstore as ts

    from ome_writers_service import create_stream

    s = settings(root_path=str(tmp_path / "i64.ome.zarr"), dtype="int64",
                 dimensions=[Dimension(name="t", count=2), Dimension(name="y", count=4),
                             Dimension(name="x", count=4)])
    with create_stream(s, in_process=True) as stream:
        for i in range(2):
            stream.append(np.full((4, 4), -(2**40) - i, np.int64))
    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                                                  "path": str(tmp_path / "i64.ome.zarr" / "0")}}
                  ).result().read().result()
    assert arr.dtype == np.int64 and arr[1, 0, 0] == -(2**40) - 1


def test_settings_from_plain_mappings_promote_inferred_position_dimensions():
    s = AcquisitionSettings.model_validate({"root_path": "a.ome.zarr", "dtype": "uint8",
                                            "dimensions": [
        {"name": "p", "count": 2},
        {"name": "c", "coords": [{"name": "GFP"}, {"name": "DAPI", "fluorophore": "DAPI"}]},
        {"name": "y", "count": 4}, {"name": "x", "count": 4}]})
    assert isinstance(s.dimensions[0], PositionDimension)
    assert [p.name for p in s.positions] == ["0", "1"] and s.num_frames == 4
    assert [d.name for d in s.storage_dimensions] == ["c", "y", "x"]
    assert [c.name for c in s.dimensions[1].channels] == ["GFP", "DAPI"]
    pos = AcquisitionSettings.model_validate({"root_path": "a.ome.zarr", "dtype": "uint8",
                                              "dimensions": [
        {"name": "fields", "coords": [{"name": "a", "x_coord": 1.0}, {"name": "b"}]},
        {"name": "y", "count": 4}, {"name": "x", "count": 4}]})
    assert isinstance(pos.position_dimension, PositionDimension)
    assert [p.x_coord for p in pos.positions] == [1.0, None]
    assert AcquisitionSettings.model_validate_json(pos.model_dump_json()) == pos
