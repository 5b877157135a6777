"""Both formats written in-process and read back with tools we did not write: tensorstore,
zarr-python, tifffile, ome-types (XSD-validated), yaozarrs and the conformance checker.
Pixel data is compared exactly with the frames sent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaozarrs
import zarr
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from ome_types import from_xml
from pydantic import ValidationError

from ome_writers_service import (AcquisitionSettings, Channel, Dimension, Plate, Position,
                                 PositionDimension, create_stream)
from ome_writers_service.stream import FrameCountError, FrameMismatchError

from service_util import expected_images, frame_pixels, read_image, run_checker

FORMATS = [".ome.zarr", ".ome.tiff"]
YX = [Dimension(name="y", count=24, chunk_size=12), Dimension(name="x", count=20)]


def write(settings: AcquisitionSettings, seed: int, frames: int | None = None,
          reuse_buffer: bool = True) -> list[str]:
    """Append frames 0..n-1 of frame_pixels(seed) through one reused, scribbled-on buffer."""
    n = settings.num_frames if frames is None else frames
    buf = np.empty(settings.frame_shape, settings.dtype)
    with create_stream(settings, in_process=True) as stream:
        for i in range(n):
            pixels = frame_pixels(seed, i, settings.frame_shape, settings.dtype)
            if reuse_buffer:
                buf[...] = pixels
                stream.append(buf)
                buf[...] = 12345  # the caller reuses its buffer at once
            else:
                stream.append(pixels)
        paths = stream.paths
    return paths


def verify(settings: AcquisitionSettings, paths: list[str], seed: int, checker: bool = True,
           **kw) -> None:
    want = expected_images(settings, seed, **kw)
    assert len(paths) == len(want)
    is_tiff = settings.format_name == "ome-tiff"
    for i, (path, arr) in enumerate(zip(paths, want)):
        if is_tiff:  # tifffile drops axes of size 1 from a series
            want[i] = arr = arr.reshape([n for n in arr.shape if n != 1])
        got = read_image(path)
        assert got.shape == arr.shape, path
        np.testing.assert_array_equal(got, arr, err_msg=path)
    if not is_tiff:
        yaozarrs.validate_zarr_store(settings.root_path)
        if checker:
            run_checker(settings.root_path, shape=want[0].shape, dtype=settings.dtype)
        for path, arr in zip(paths, want):  # a second reader: zarr-python
            np.testing.assert_array_equal(zarr.open_array(path + "/0", mode="r")[...], arr)
    else:
        for path, arr in zip(paths, want):
            with tifffile.TiffFile(path) as tf:
                from_xml(tf.ome_metadata, validate=True)
            if checker and path == paths[0]:  # one checker run per dataset keeps the suite fast
                run_checker(path, shape=arr.shape, dtype=settings.dtype)


def acq(tmp_path: Path, suffix: str, dims, **kw) -> AcquisitionSettings:
    return AcquisitionSettings(root_path=str(tmp_path / f"data{suffix}"), dimensions=dims,
                               dtype=kw.pop("dtype", "uint16"), overwrite=True, **kw)


@pytest.mark.parametrize("suffix", FORMATS)
def test_single_5d_image(tmp_path, suffix):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=3, type="time"),
                               Dimension(name="c", count=2, coords=["DAPI", "GFP"]),
                               Dimension(name="z", count=4, scale=0.5, unit="um"), *YX])
    verify(s, write(s, 1), 1)


@given(order=st.permutations(["t", "z", "c"]), storage=st.permutations(["t", "z", "c"]),
       sizes=st.tuples(*[st.integers(1, 3)] * 3), fmt=st.sampled_from(FORMATS))
@hsettings(max_examples=15, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_storage_order_of_a_tzc_acquisition(tmp_path, order, storage, sizes, fmt):
    dims = [Dimension(name=n, count=c) for n, c in zip(order, sizes)]
    make = lambda: acq(tmp_path, fmt, [*dims, *YX], storage_order=list(storage))  # noqa: E731
    ngff_ok = storage.index("t") < storage.index("c") < storage.index("z")
    if fmt == ".ome.zarr" and not ngff_ok:
        with pytest.raises(ValidationError, match="OME-Zarr v0.5 forbids"):
            make()
        return
    s = make()
    verify(s, write(s, 2), 2, checker=False)  # the checker (a subprocess) runs elsewhere


@pytest.mark.parametrize("suffix", FORMATS)
def test_multi_position_with_positions_in_the_middle(tmp_path, suffix):
    s = acq(tmp_path, suffix, [
        Dimension(name="t", count=2),
        PositionDimension(coords=[Position(name="left", x_coord=1.0, y_coord=2.0),
                                  Position(name="mid"), Position(name="right")]),
        Dimension(name="c", count=2), *YX])
    paths = write(s, 3)
    assert len(paths) == 3
    verify(s, paths, 3)


@pytest.mark.parametrize("suffix", FORMATS)
def test_plate_two_by_two_wells_two_fields(tmp_path, suffix):
    positions = [Position(name=f"{r}{c}-f{f}", plate_row=r, plate_column=c)
                 for r in "AB" for c in "12" for f in range(2)]
    s = acq(tmp_path, suffix, [PositionDimension(coords=positions),
                               Dimension(name="c", count=2), *YX],
            plate=Plate(row_names=["A", "B"], column_names=["1", "2"], name="test plate"))
    paths = write(s, 4)
    assert len(paths) == 8
    verify(s, paths, 4)
    if suffix == ".ome.zarr":
        root = json.loads((Path(s.root_path) / "zarr.json").read_text())["attributes"]["ome"]
        assert [w["path"] for w in root["plate"]["wells"]] == ["A/1", "A/2", "B/1", "B/2"]
        well = json.loads((Path(s.root_path) / "B/2/zarr.json").read_text())["attributes"]["ome"]
        assert [i["path"] for i in well["well"]["images"]] == ["0", "1"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_unbounded_time_records_the_true_size(tmp_path, suffix):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=None, chunk_size=2),
                               Dimension(name="c", count=2), *YX])
    paths = write(s, 5, frames=14)
    verify(s, paths, 5, frames=14)
    if suffix == ".ome.zarr":
        meta = json.loads((Path(paths[0]) / "0" / "zarr.json").read_text())
        assert meta["shape"][0] == 7
    else:
        with tifffile.TiffFile(paths[0]) as tf:
            assert from_xml(tf.ome_metadata).images[0].pixels.size_t == 7
            assert tf.is_bigtiff  # an unbounded file may pass 4 GB


@pytest.mark.parametrize("suffix", FORMATS)
def test_unbounded_with_a_partial_last_step(tmp_path, suffix):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=None), Dimension(name="c", count=3),
                               *YX])
    paths = write(s, 6, frames=8)  # t=2 has 2 of its 3 channels
    verify(s, paths, 6, frames=8)


@pytest.mark.parametrize("suffix", FORMATS)
def test_chunks_of_several_frames_not_dividing_the_axes(tmp_path, suffix):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=5, chunk_size=2),
                               Dimension(name="z", count=3, chunk_size=2), *YX])
    verify(s, write(s, 7), 7)
    if suffix == ".ome.zarr":
        meta = json.loads((Path(s.root_path) / "0" / "zarr.json").read_text())
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [2, 2, 12, 20]


def test_zarr_sharding(tmp_path):
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=6, chunk_size=1, shard_size_chunks=4),
                                    Dimension(name="y", count=24, chunk_size=8, shard_size_chunks=3),
                                    Dimension(name="x", count=20, chunk_size=10)])
    verify(s, write(s, 8), 8)
    meta = json.loads((Path(s.root_path) / "0" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 24, 10]  # x: 1 chunk a shard
    (codec,) = meta["codecs"]
    assert codec["name"] == "sharding_indexed"
    assert codec["configuration"]["chunk_shape"] == [1, 8, 10]


@pytest.mark.parametrize("suffix,compression", [(".ome.zarr", "blosc-zstd"),
                                                (".ome.zarr", "blosc-lz4"),
                                                (".ome.zarr", "zstd"),
                                                (".ome.tiff", "lzw"), (".ome.tiff", "zstd")])
def test_compression(tmp_path, suffix, compression):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=4, chunk_size=2), *YX],
            compression=compression)
    verify(s, write(s, 9), 9)
    if suffix == ".ome.tiff":
        with tifffile.TiffFile(s.root_path) as tf:
            assert tf.pages[0].compression.name.lower().startswith(compression[:3])
    else:
        meta = json.loads((Path(s.root_path) / "0" / "zarr.json").read_text())
        assert meta["codecs"][-1]["name"] == compression.split("-")[0]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "float32"])
def test_dtypes(tmp_path, suffix, dtype):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=2), *YX], dtype=dtype)
    n = s.num_frames
    frames = [np.arange(24 * 20, dtype=dtype).reshape(24, 20) * (i + 1) for i in range(n)]
    with create_stream(s, in_process=True) as stream:
        for f in frames:
            stream.append(f)
    np.testing.assert_array_equal(read_image(stream.paths[0]), np.stack(frames))


@pytest.mark.parametrize("suffix", FORMATS)
def test_bad_frames_raise_naming_the_frame_and_keep_what_was_written(tmp_path, suffix):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=3), *YX])
    stream = create_stream(s, in_process=True)
    stream.append(frame_pixels(10, 0, (24, 20), np.uint16))
    with pytest.raises(FrameMismatchError, match=r"frame 1: shape \(20, 24\)"):
        stream.append(np.zeros((20, 24), np.uint16))
    with pytest.raises(FrameMismatchError, match="frame 1: dtype uint8"):
        stream.append(np.zeros((24, 20), np.uint8))
    with pytest.raises(FrameMismatchError, match="frame 1: expected a numpy array"):
        stream.append([[0] * 20] * 24)
    stream.append(frame_pixels(10, 1, (24, 20), np.uint16))
    stream.append(frame_pixels(10, 2, (24, 20), np.uint16))
    with pytest.raises(FrameCountError, match="frame 3: the acquisition declares 3 frames"):
        stream.append(frame_pixels(10, 3, (24, 20), np.uint16))
    stream.close()
    verify(s, stream.paths, 10)


@pytest.mark.parametrize("suffix", FORMATS)
def test_existing_data_is_never_replaced_without_overwrite(tmp_path, suffix):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=2), *YX])
    paths = write(s, 11)
    before = read_image(paths[0])
    keep = s.model_copy(update={"overwrite": False})
    with pytest.raises(FileExistsError, match=f"{Path(s.root_path).name} already exists"):
        create_stream(keep, in_process=True)
    np.testing.assert_array_equal(read_image(paths[0]), before)
    verify(s, write(s, 12), 12)  # overwrite=True replaces it


@pytest.mark.parametrize("suffix", FORMATS)
def test_overwrite_replaces_datasets_never_other_data(tmp_path, suffix):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=2), *YX])
    other = Path(s.root_path)
    other.mkdir()
    (other / "thesis.docx").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a zarr store"):
        create_stream(s, in_process=True)
    assert (other / "thesis.docx").read_text() == "years of work"


def test_the_journal_never_writes_through_a_symlink(tmp_path):
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=2), *YX])
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    Path(s.root_path + ".ows-journal").symlink_to(victim)
    with pytest.raises(OSError):
        create_stream(s, in_process=True)
    assert victim.read_text() == "keep"


def test_a_zarr_store_moved_away_while_written_is_reported_at_close(tmp_path):
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=6), *YX])
    stream = create_stream(s, in_process=True)
    for i in range(3):
        stream.append(frame_pixels(8, i, s.frame_shape, s.dtype))
    os.rename(s.root_path, s.root_path + ".moved")  # someone tidies up the data folder
    for i in range(3, 6):
        stream.append(frame_pixels(8, i, s.frame_shape, s.dtype))
    with pytest.raises(Exception, match="removed or replaced while it was being written"):
        stream.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: chmod does not stop it")
def test_unwritable_parent_is_refused_before_the_first_frame(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    s = acq(locked, ".ome.tiff", [Dimension(name="t", count=2), *YX])
    with pytest.raises(PermissionError, match="not writable"):
        create_stream(s, in_process=True)


@pytest.mark.parametrize("suffix", FORMATS)
def test_skip_view_and_events(tmp_path, suffix):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=None), Dimension(name="c", count=2),
                               *YX])
    stream = create_stream(s, in_process=True)
    expanded, changed = [], []
    stream.on("coords_expanded", expanded.append)
    stream.on("coords_changed", changed.append)
    view = stream.view()
    assert view.shape == (0, 0, 24, 20)
    stream.append(frame_pixels(13, 0, (24, 20), np.uint16))
    stream.skip(frames=1)
    stream.append(frame_pixels(13, 2, (24, 20), np.uint16))
    assert view.shape == (2, 2, 24, 20)
    np.testing.assert_array_equal(view[0, 0], frame_pixels(13, 0, (24, 20), np.uint16))
    np.testing.assert_array_equal(view[0, 1], np.zeros((24, 20), np.uint16))
    np.testing.assert_array_equal(view[1, 0, 3:5], frame_pixels(13, 2, (24, 20), np.uint16)[3:5])
    assert np.asarray(view).shape == (2, 2, 24, 20)
    with pytest.raises(IndexError):
        stream.view(strict=True)[1, 1]
    assert len(changed) == 3
    assert [u.max_coords["t"] for u in expanded] == [range(1), range(1), range(2)]
    stream.close()
    verify(s, stream.paths, 13, frames=3, missing={1})


@pytest.mark.parametrize("suffix", FORMATS)
def test_metadata_lands_in_its_place(tmp_path, suffix):
    s = acq(tmp_path, suffix, [
        Dimension(name="t", count=2, scale=1.5, unit="s"),
        Dimension(name="c", coords=[Channel(name="DAPI", excitation_wavelength_nm=405,
                                            emission_wavelength_nm=460, color="blue"),
                                    Channel(name="GFP", color="green")]),
        Dimension(name="z", count=2, scale=0.5, unit="um"),
        Dimension(name="y", count=16, scale=0.25, unit="um"),
        Dimension(name="x", count=16, scale=0.25, unit="µm")])
    with create_stream(s, in_process=True) as stream:
        stream.set_global_metadata("my_ns", {"objective": "60x", "na": 1.4})
        for i in range(8):
            stream.append(frame_pixels(14, i, (16, 16), np.uint16), frame_metadata={
                "delta_t": 0.1 * i, "exposure_time": 0.01, "position_x": 10.0,
                "position_y": -2.5, "position_z": 3.0, "laser": "488nm"})
    if suffix == ".ome.tiff":
        with tifffile.TiffFile(s.root_path) as tf:
            ome = from_xml(tf.ome_metadata, validate=True)
        px = ome.images[0].pixels
        assert [c.name for c in px.channels] == ["DAPI", "GFP"]
        assert px.channels[0].excitation_wavelength == 405
        assert (px.physical_size_x, px.physical_size_x_unit.value) == (0.25, "µm")
        assert (px.physical_size_z, px.time_increment, px.time_increment_unit.value) == \
            (0.5, 1.5, "s")
        assert len(px.planes) == 8
        p = next(p for p in px.planes if (p.the_t, p.the_c, p.the_z) == (1, 0, 1))
        assert p.delta_t == pytest.approx(0.5) and p.exposure_time == 0.01  # frame 5
        assert (p.position_x, p.position_y, p.position_z) == (10.0, -2.5, 3.0)
        maps = {a.id: a for a in ome.structured_annotations.map_annotations}
        assert maps[p.annotation_refs[0].id].value.ms[0].k == "laser"
        ns = [maps[r.id].namespace for r in ome.images[0].annotation_refs]
        assert "my_ns" in ns
    else:
        root = json.loads((Path(s.root_path) / "zarr.json").read_text())["attributes"]
        assert root["my_ns"] == {"objective": "60x", "na": 1.4}
        ms = root["ome"]["multiscales"][0]
        assert [(a["name"], a.get("unit")) for a in ms["axes"]] == [
            ("t", "second"), ("c", None), ("z", "micrometer"), ("y", "micrometer"),
            ("x", "micrometer")]
        assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == \
            [1.5, 1.0, 0.5, 0.25, 0.25]
        assert [c["label"] for c in root["ome"]["omero"]["channels"]] == ["DAPI", "GFP"]
        assert root["ome"]["omero"]["channels"][0]["color"] == "0000FF"
        table = root["ome_writers"]["frame_metadata"]
        assert len(table) == 8
        assert table[5] == {"index": {"t": 1, "c": 0, "z": 1}, "delta_t": pytest.approx(0.5),
                            "exposure_time": 0.01, "position_x": 10.0, "position_y": -2.5,
                            "position_z": 3.0, "laser": "488nm"}


@pytest.mark.parametrize("suffix", FORMATS)
def test_closing_early_stores_only_what_arrived(tmp_path, suffix):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=10), Dimension(name="c", count=2), *YX])
    paths = write(s, 15, frames=5)
    verify(s, paths, 15, frames=5)
    assert read_image(paths[0]).shape[0] == 3
