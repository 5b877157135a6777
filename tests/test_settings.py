"""AcquisitionSettings: the ome-writers 0.3.2 names and defaults, and errors naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import ome_writers_service as ows
from ome_writers_service import (AcquisitionSettings, Channel, Dimension, OmeTiffFormat,
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
                 "Plate", "OmeZarrFormat", "OmeTiffFormat", "StandardAxis",
                 "dims_from_standard_axes", "create_stream", "OMEStream"]:
        assert hasattr(ows, name), name


def test_defaults_match_ome_writers_0_3_2():
    s = AcquisitionSettings()
    assert (s.root_path, s.dimensions, s.dtype, s.format, s.compression, s.storage_order,
            s.plate, s.overwrite) == ("", (), "", "auto", None, "ome", None, False)
    d = Dimension(name="q")
    assert (d.count, d.chunk_size, d.shard_size_chunks, d.unit, d.scale, d.translation,
            d.coords) == (None, None, None, None, None, None, None)
    assert PositionDimension().name == "p" and PositionDimension().type == "position"
    assert OmeZarrFormat().suffix == ".ome.zarr" and OmeTiffFormat().suffix == ".ome.tiff"
    t = OmeTiffFormat()
    assert (t.prefer_single_file, t.multi_file_metadata, t.companion_file) == \
        ("auto", "redundant", "companion.ome")
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
     "only the first dimension may be unbounded"),
    (lambda: dict(dimensions=[Dimension(name="t", count=3), Dimension(name="z", count=None), *YX]),
     "'z' is unbounded"),
    (lambda: dict(dtype="complex64"), "dtype 'complex64' is not supported"),
    (lambda: dict(dtype="banana"), "dtype 'banana' is not a numpy dtype"),
    (lambda: dict(storage_order=["t", "q"]), "not a permutation"),
    (lambda: dict(dimensions=[Dimension(name="t", count=2), Dimension(name="t", count=2), *YX]),
     "duplicate names"),
    (lambda: dict(dimensions=[Dimension(name="y", count=8), Dimension(name="t", count=2),
                      Dimension(name="x", count=8)]), "last two dimensions are the frame"),
    (lambda: dict(dimensions=[Dimension(name="t", count=2), Dimension(name="z", count=2), *YX],
          storage_order=["z", "t"]), "time must come first"),
    (lambda: dict(compression="lzw"), "not available for OME-Zarr"),
    (lambda: dict(root_path="a.ome.tiff", compression="blosc-zstd"), "not available for OME-TIFF"),
    (lambda: dict(root_path="a.h5"), "cannot infer the format"),
    (lambda: dict(root_path="a.ome.tiff", dimensions=[Dimension(name="angle", count=2), *YX]),
     "cannot be represented"),
    (lambda: dict(plate=Plate(row_names=["A"], column_names=["1"])), "needs a position dimension"),
    (lambda: dict(plate=Plate(row_names=["A"], column_names=["1"]), dimensions=[
        PositionDimension(coords=[Position(name="f0", plate_row="A")]), *YX]),
     "has no plate_row/plate_column"),
    (lambda: dict(plate=Plate(row_names=["A"], column_names=["1"]), dimensions=[
        PositionDimension(coords=[Position(name="f0", plate_row="B", plate_column="1")]), *YX]),
     "plate_row 'B' not in row_names"),
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
