"""Both formats written in-process and read back with tools we did not write: tensorstore,
zarr-python, tifffile, ome-types (XSD-validated), yaozarrs and the conformance checker.
Pixel data is compared exactly with the frames sent."""

from __future__ import annotations

import json
import os
import re
import threading
import time
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

from service_util import IS_ROOT, WINDOWS, expected_images, frame_pixels, read_image, run_checker

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
    positions = [Position(name=f"f{f}", plate_row=r, plate_column=c)
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
        # fields named after their positions, as ome-writers 0.3.2 names them
        assert [i["path"] for i in well["well"]["images"]] == ["f0", "f1"]
        assert (Path(s.root_path) / "B/2/f1/0/zarr.json").is_file()


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


@pytest.mark.parametrize("suffix,compression,level", [(".ome.zarr", "blosc-zstd", 1),
                                                      (".ome.zarr", "blosc-lz4", 9),
                                                      (".ome.zarr", "zstd", -3),
                                                      (".ome.tiff", "zstd", 12)])
def test_compression_level(tmp_path, suffix, compression, level):
    """The level the user chose is the one in the file (ome-writers' spelling of the codec
    kept; None keeps 0.3.2's levels, checked in the zarr.json below for blosc-zstd)."""
    s = acq(tmp_path, suffix, [Dimension(name="t", count=4, chunk_size=2), *YX],
            compression=compression, compression_level=level)
    verify(s, write(s, 9), 9)
    if suffix == ".ome.tiff":
        import imagecodecs

        with tifffile.TiffFile(s.root_path) as tf:
            page = tf.pages[0]
            assert page.compression.name == "ZSTD"
            fh = tf.filehandle
            fh.seek(page.dataoffsets[0])
            raw = fh.read(page.databytecounts[0])
        # the level is not stored; a harder level gives a smaller frame than the fastest
        fast = imagecodecs.zstd_encode(imagecodecs.zstd_decode(raw), level=1)
        assert len(raw) <= len(fast)
    else:
        codec = json.loads((Path(s.root_path) / "0" / "zarr.json").read_text())["codecs"][-1]
        key = "clevel" if compression.startswith("blosc") else "level"
        assert codec["configuration"][key] == level
    default = acq(tmp_path / "d", suffix, [Dimension(name="t", count=2), *YX],
                  compression=compression)
    assert default.codec_level == (3 if compression != "blosc-lz4" else 5)


@pytest.mark.parametrize("compression,level,says", [
    ("blosc-zstd", 10, "out of range for 'blosc-zstd': use 1..9"),
    ("zstd", 0, "use -7..22 (not 0)"),
    ("none", 3, "compression 'none' has no levels"),
    (None, 3, "compression None has no levels"),
])
def test_compression_level_refused(tmp_path, compression, level, says):
    with pytest.raises(ValidationError, match=re.escape(says)):
        acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=2), *YX],
            compression=compression, compression_level=level)


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
    with pytest.raises(FrameCountError, match="frame 3: Cannot append frame: would exceed total of 3 frames"):
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
    with pytest.raises(FileExistsError, match="not a zarr store" if suffix == ".ome.zarr"
                       else "is a directory, not a file"):
        create_stream(s, in_process=True)
    assert (other / "thesis.docx").read_text() == "years of work"


def test_overwrite_never_deletes_a_file_named_like_a_zarr_store(tmp_path):
    """A regular file at an OME-Zarr path is refused (as OME-TIFF refuses a non-TIFF file),
    in process and through the daemon alike."""
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=2), *YX])
    victim = Path(s.output_path)
    victim.write_text("not a store")
    with pytest.raises(FileExistsError, match="is a file, not a zarr store"):
        create_stream(s, in_process=True)
    assert victim.read_text() == "not a store"


def test_the_journal_never_writes_through_a_symlink(tmp_path):
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=2), *YX])
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    journal = Path(s.root_path + ".ows-journal")
    journal.symlink_to(victim)
    stream = create_stream(s, in_process=True)  # the planted link is removed, not followed
    assert journal.is_file() and not journal.is_symlink()
    for i in range(2):
        stream.append(frame_pixels(8, i, s.frame_shape, s.dtype))
    stream.close()
    assert victim.read_text() == "keep"
    verify(s, stream.paths, 8)


def test_a_zarr_store_moved_away_while_written_is_reported_at_close(tmp_path):
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=6), *YX])
    stream = create_stream(s, in_process=True)
    for i in range(3):
        stream.append(frame_pixels(8, i, s.frame_shape, s.dtype))
    os.rename(s.root_path, s.root_path + ".moved")  # someone tidies up the data folder
    # a write still in flight fails on the next append (ENOENT: POSIX's words, or Windows'),
    # or the store check at close
    with pytest.raises(Exception, match="removed or replaced while it was being written|"
                                        "No such file|File not found|Path not found") as err:
        for i in range(3, 6):
            stream.append(frame_pixels(8, i, s.frame_shape, s.dtype))
        stream.close()
    assert s.root_path in str(err.value)
    if not stream.closed:
        with pytest.raises(Exception, match="removed or replaced"):
            stream.close()


@pytest.mark.skipif(WINDOWS or IS_ROOT, reason="POSIX mode bits, as a non-root user (root may "
                    "write anywhere; on Windows a DACL, not a mode, denies writing, and Wine runs "
                    "as root here)")
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
    assert view[0, 0, 3, 4] == frame_pixels(13, 0, (24, 20), np.uint16)[3, 4]  # one pixel
    np.testing.assert_array_equal(view[0, 1], np.zeros((24, 20), np.uint16))
    np.testing.assert_array_equal(view[1, 0, 3:5], frame_pixels(13, 2, (24, 20), np.uint16)[3:5])
    assert np.asarray(view).shape == (2, 2, 24, 20)
    with pytest.raises(IndexError):
        stream.view(strict=True)[1, 1]
    stream._events.flush()  # handlers run on their own thread (as ome-writers' pool)
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
        table = root["ome_writers"]["frame_metadata"]  # ome-writers' layout
        assert len(table) == 8
        assert table[5] == {"delta_t": pytest.approx(0.5), "exposure_time": 0.01,
                            "position_x": 10.0, "position_y": -2.5, "position_z": 3.0,
                            "laser": "488nm", "storage_index": [1, 0, 1]}


@pytest.mark.parametrize("suffix", FORMATS)
def test_closing_early_stores_only_what_arrived(tmp_path, suffix):
    s = acq(tmp_path, suffix, [Dimension(name="t", count=10), Dimension(name="c", count=2), *YX])
    paths = write(s, 15, frames=5)
    verify(s, paths, 15, frames=5)
    assert read_image(paths[0]).shape[0] == 3


# ---- ome-writers 0.3.2 parity: view axes, get/update_metadata, frame table, OME-XML ----

@pytest.mark.parametrize("suffix", FORMATS)
def test_view_is_in_acquisition_order_with_the_position_axis_in_place(tmp_path, suffix):
    # ome-writers' StreamView: the axes of settings.dimensions (acquisition order), the
    # position axis where it was declared, whatever the storage order (here t before z)
    s = acq(tmp_path, suffix, [Dimension(name="z", count=3, type="space"),
                               Dimension(name="t", count=2, type="time"),
                               PositionDimension(coords=["A", "B"]),
                               Dimension(name="y", count=8), Dimension(name="x", count=6)],
            storage_order=["t", "z", "y", "x"])
    assert [d.name for d in s.storage_dimensions[:-2]] == ["t", "z"]
    yx = (8, 6)
    stream = create_stream(s, in_process=True)
    view, full = stream.view(), stream.view(dynamic_shape=False)
    grew = []
    view.coords_changed.connect(lambda: grew.append(view.shape[:3]))
    assert view.dims == ("z", "t", "p", "y", "x")
    assert view.shape == (0, 0, 0, *yx) and full.shape == (3, 2, 2, *yx)
    # the live extent: the highest index reached along each acquisition axis, plus one
    live = {1: (1, 1, 1), 2: (1, 1, 2), 3: (1, 2, 2), 4: (1, 2, 2), 5: (2, 2, 2), 12: (3, 2, 2)}
    for n in range(12):
        stream.append(frame_pixels(21, n, yx, np.uint16))
        stream._events.flush()  # the view's signal is delivered by the events thread
        if n + 1 == 5:
            assert dict(view.coords) == {"z": range(2), "t": range(2), "p": ["A", "B"],
                                         "y": range(8), "x": range(6)}
            # an integer index may reach the declared extent (zeros), as in ome-writers;
            # strict views stop at the live extent
            np.testing.assert_array_equal(view[2, 0, 0], np.zeros(yx, np.uint16))
            with pytest.raises(IndexError, match="live dimension 'z'"):
                stream.view(strict=True)[2, 0, 0]
        if n + 1 in live:
            assert view.shape == (*live[n + 1], *yx), n
    assert grew == [(1, 1, 1), (1, 1, 2), (1, 2, 2), (2, 2, 2), (3, 2, 2)]

    def frame(z, t, p):  # frame number in acquisition order z, t, p
        return frame_pixels(21, (z * 2 + t) * 2 + p, yx, np.uint16)

    want = np.stack([frame(*i) for i in np.ndindex(3, 2, 2)]).reshape(3, 2, 2, *yx)
    np.testing.assert_array_equal(np.asarray(full), want)
    np.testing.assert_array_equal(view[...], want)
    np.testing.assert_array_equal(view[1, 0, 1], frame(1, 0, 1))
    np.testing.assert_array_equal(view[:, 1], want[:, 1])  # (z, p, y, x)
    np.testing.assert_array_equal(view[-1, :, 0, 2:4], want[2, :, 0, 2:4])
    assert len(view) == 3
    stream.close()
    # and the files, read with tifffile/tensorstore, hold the same planes (storage order)
    verify(s, stream.paths, 21)


def test_strict_view_refuses_planes_without_a_frame(tmp_path):
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=4), Dimension(name="c", count=2),
                                    *YX])
    with create_stream(s, in_process=True) as stream:
        stream.append(frame_pixels(22, 0, (24, 20), np.uint16))
        stream.skip(frames=2)
        stream.append(frame_pixels(22, 3, (24, 20), np.uint16))
        strict = stream.view(strict=True)
        np.testing.assert_array_equal(strict[1, 1], frame_pixels(22, 3, (24, 20), np.uint16))
        # the skipped frame 2 (t=1, c=0): zeros in a plain view, an error in a strict one
        np.testing.assert_array_equal(stream.view()[1, 0], np.zeros((24, 20), np.uint16))
        with pytest.raises(IndexError, match="skipped or dropped"):
            strict[1, 0]
        with pytest.raises(IndexError, match="live dimension 't'"):
            strict[2, 0]


@pytest.mark.parametrize("layout", ["single", "positions", "plate"])
def test_zarr_get_and_update_metadata_as_ome_writers(tmp_path, layout):
    # ome-writers 0.3.2: {group path: attributes} of each image group; update_metadata()
    # replaces a group's attributes at once; the per-frame table stays the writer's
    kw, outer = {}, [Dimension(name="t", count=2)]
    if layout == "positions":
        outer.append(PositionDimension(coords=["a", "b"]))
    elif layout == "plate":
        outer.append(PositionDimension(coords=[
            Position(name="f0", plate_row="A", plate_column="1"),
            Position(name="f1", plate_row="A", plate_column="1"),
            Position(name="g", plate_row="B", plate_column="2")]))
        kw["plate"] = Plate(row_names=["A", "B"], column_names=["1", "2"])
    s = acq(tmp_path, ".ome.zarr", [*outer, *YX], **kw)
    keys = {"single": ["."], "positions": ["a", "b"], "plate": ["A/1/f0", "A/1/f1", "B/2/g"]}[layout]
    stream = create_stream(s, in_process=True)
    md = stream.get_metadata()
    assert list(md) == keys
    assert all(isinstance(a, dict) and "multiscales" in a["ome"] for a in md.values())
    key = keys[-1]
    md[key]["my_attrs"] = {"operator": "ada"}
    md[key]["ome"]["multiscales"][0]["name"] = "renamed"
    stream.update_metadata({key: md[key]})

    def attrs():  # read with zarr-python
        return dict(zarr.open_group(str(Path(s.root_path) / key), mode="r").attrs)

    assert attrs()["my_attrs"] == {"operator": "ada"}  # written at once
    with pytest.raises(KeyError, match="Unknown path: nope"):
        stream.update_metadata({"nope": {}})
    stream.set_global_metadata("my_ns", {"k": 1})  # the global metadata API is unchanged
    assert stream.get_global_metadata() == {"my_ns": {"k": 1}}
    # in the root group at once, as ome-writers (a reader sees it during the acquisition)
    assert zarr.open_group(s.root_path, mode="r").attrs["my_ns"] == {"k": 1}
    for i in range(s.num_frames):
        stream.append(frame_pixels(23, i, (24, 20), np.uint16), frame_metadata={"delta_t": i})
    stream.close()
    got = attrs()
    assert got["my_attrs"] == {"operator": "ada"}
    assert got["ome"]["multiscales"][0]["name"] == "renamed"
    assert got["ome_writers"]["frame_metadata"]  # the writer's table is kept
    assert stream.get_metadata()[key]["my_attrs"] == {"operator": "ada"}
    yaozarrs.validate_zarr_store(s.root_path)
    if layout == "single":
        assert got["my_ns"] == {"k": 1}


def test_tiff_get_and_update_metadata_as_ome_writers(tmp_path):
    # ome-writers 0.3.2: {position index: ome_types.OME}; update_metadata() after close only
    from ome_types import OME

    s = acq(tmp_path, ".ome.tiff", [Dimension(name="t", count=2),
                                    PositionDimension(coords=["a", "b"]), *YX])
    stream = create_stream(s, in_process=True)
    md = stream.get_metadata()
    assert list(md) == [0, 1] and all(isinstance(o, OME) for o in md.values())
    # "redundant" (the default): every file's document describes both images
    assert [[i.name for i in o.images] for o in md.values()] == [["a", "b"], ["a", "b"]]
    with pytest.raises(RuntimeError, match="after the stream context exits"):
        stream.update_metadata(md)
    for i in range(4):
        stream.append(frame_pixels(24, i, (24, 20), np.uint16), frame_metadata={"delta_t": i})
    stream.close()
    md = stream.get_metadata()
    assert len(md[1].images[1].pixels.planes) == 2
    md[1].images[1].description = "edited after the acquisition"
    stream.update_metadata({1: md[1]})
    with pytest.raises(TypeError, match="ome_types.model.OME"):
        stream.update_metadata({0: {"a": 1}})
    with pytest.raises(KeyError, match="Unknown position index: 7"):
        stream.update_metadata({7: md[1]})
    stream.set_global_metadata("late", {"k": "v"})  # after an update: added to the user's XML
    with tifffile.TiffFile(stream.paths[1]) as tf:
        ome = from_xml(tf.ome_metadata, validate=True)
        pages = len(tf.pages)
    assert ome.images[1].description == "edited after the acquisition"
    assert "late" in [a.namespace for a in ome.structured_annotations.map_annotations]
    assert pages == 2
    np.testing.assert_array_equal(read_image(stream.paths[1])[1],
                                  frame_pixels(24, 3, (24, 20), np.uint16))


def test_zarr_frame_metadata_uses_ome_writers_layout(tmp_path):
    # attributes.ome_writers.frame_metadata rows: {**frame_metadata, "storage_index": [...]}
    # (storage order: t, z here); read_frame_metadata() still returns {"index": {axis: i}}
    from ome_writers_service import read_frame_metadata

    s = acq(tmp_path, ".ome.zarr", [Dimension(name="z", count=2, type="space"),
                                    Dimension(name="t", count=2, type="time"), *YX])
    with create_stream(s, in_process=True) as stream:
        for i in range(4):
            stream.append(frame_pixels(25, i, (24, 20), np.uint16),
                          frame_metadata={"delta_t": 0.5 * i, "stage": f"s{i}"})
    table = zarr.open_group(s.root_path, mode="r").attrs["ome_writers"]["frame_metadata"]
    assert table == [{"delta_t": 0.5 * i, "stage": f"s{i}", "storage_index": [i % 2, i // 2]}
                     for i in range(4)]  # arrival order, as ome-writers
    rows = read_frame_metadata(s.root_path)
    assert rows == [{"index": {"t": t, "z": z}, "delta_t": 0.5 * (z * 2 + t),
                     "stage": f"s{z * 2 + t}"} for t in range(2) for z in range(2)]


def test_ome_tiff_plate_and_stage_positions_in_ome_xml(tmp_path):
    # ome-writers 0.3.2 writes Plate/Well/WellSample (Plate:0, Well:{row}_{col},
    # WellSample:{position}); stage coordinates are micrometres (StageLabel units)
    positions = [Position(name="f0", plate_row="A", plate_column="1", x_coord=100.5,
                          y_coord=-20.0, z_coord=3.0),
                 Position(name="f1", plate_row="A", plate_column="1", x_coord=110.0),
                 Position(name="g", plate_row="B", plate_column="2")]
    s = acq(tmp_path, ".ome.tiff", [PositionDimension(coords=positions),
                                    Dimension(name="t", count=2), *YX],
            plate=Plate(name="P1", row_names=["A", "B"], column_names=["1", "2"]))
    paths = write(s, 26)
    verify(s, paths, 26)
    docs = []
    for path in paths:
        with tifffile.TiffFile(path) as tf:
            docs.append(from_xml(tf.ome_metadata, validate=True))  # XSD-validated
    for ome in docs:  # every file holds the whole plate ("redundant"); only UUIDs differ
        (plate,) = ome.plates
        assert (plate.id, plate.name, plate.rows, plate.columns) == ("Plate:0", "P1", 2, 2)
        assert (plate.row_naming_convention.value, plate.column_naming_convention.value) == \
            ("letter", "number")
        wells = [(w.id, w.row, w.column, [(ws.id, ws.index, ws.image_ref.id)
                                          for ws in w.well_samples]) for w in plate.wells]
        assert wells == [("Well:0_0", 0, 0, [("WellSample:0", 0, "Image:0"),
                                              ("WellSample:1", 1, "Image:1")]),
                         ("Well:1_1", 1, 1, [("WellSample:2", 2, "Image:2")])]
        assert ome.model_dump(exclude={"uuid"}) == docs[0].model_dump(exclude={"uuid"})
    images = docs[0].images
    label = images[0].stage_label
    assert (label.x, label.y, label.z) == (100.5, -20.0, 3.0)
    assert {label.x_unit.value, label.y_unit.value, label.z_unit.value} == {"µm"}
    sample = docs[0].plates[0].wells[0].well_samples[0]
    assert (sample.position_x, sample.position_x_unit.value) == (100.5, "µm")
    assert (images[1].stage_label.x, images[1].stage_label.y) == (110.0, None)
    assert images[2].stage_label is None


def test_view_reads_a_plane_whose_chunk_write_is_still_in_flight(tmp_path):
    # a unit goes to tensorstore asynchronously; a view read right after must not see the
    # store before the write lands (was: zeros for some or all of its chunks, most tries)
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=2), Dimension(name="c", count=2),
                                    *YX])
    for k in range(60):
        with create_stream(s, in_process=True) as stream:
            stream.append(frame_pixels(27, 0, (24, 20), np.uint16))
            stream.append(frame_pixels(27, k, (24, 20), np.uint16))
            np.testing.assert_array_equal(stream.view()[0, 1],
                                          frame_pixels(27, k, (24, 20), np.uint16), err_msg=k)


def test_event_handlers_never_slow_or_break_append(tmp_path):
    # as ome-writers (a thread pool): a handler that raises is logged, one that is slow
    # delays nobody; every handler still sees every frame, in order, before close() returns
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=6), *YX])
    stream = create_stream(s, in_process=True)
    seen, release = [], threading.Event()

    def slow(update):
        release.wait(10)
        seen.append(update.frame_number)

    stream.on("coords_changed", lambda update: 1 / 0)
    stream.on("coords_changed", slow)
    for i in range(6):  # would block for 10 s (or raise ZeroDivisionError) if run inline
        stream.append(frame_pixels(30, i, (24, 20), np.uint16))
    assert seen == []  # the first handler call is still waiting: append() did not
    release.set()
    stream.close()
    assert seen == list(range(6))


def test_storage_order_ome_per_format_as_ome_writers():
    # "ome": OME-Zarr sorts to NGFF order (t, c, z); OME-TIFF keeps the acquisition order
    # (any [TCZ] DimensionOrder is valid there), so pages arrive in plane order
    dims = [Dimension(name="z", count=3, type="space"), Dimension(name="c", count=2),
            Dimension(name="t", count=2), *YX]
    zarr_s = AcquisitionSettings(root_path="a.ome.zarr", dimensions=dims, dtype="uint8")
    tiff_s = AcquisitionSettings(root_path="a.ome.tiff", dimensions=dims, dtype="uint8")
    assert [d.name for d in zarr_s.storage_index_dimensions] == ["t", "c", "z"]
    assert [d.name for d in tiff_s.storage_index_dimensions] == ["z", "c", "t"]


def test_skip_emits_one_update_only_when_it_reaches_new_coordinates(tmp_path):
    # as ome-writers: a skip of n frames is one update (its last frame), and none when
    # every frame it covers lies within coordinates already reached
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=None), Dimension(name="c", count=2),
                                     *YX])
    stream = create_stream(s, in_process=True)
    changed = []
    stream.on("coords_changed", changed.append)
    for i in range(3):  # t0c0, t0c1, t1c0
        stream.append(frame_pixels(31, i, (24, 20), np.uint16))
    stream.skip(frames=1)  # t1c1: nothing new
    stream.skip(frames=4)  # t2c0 .. t3c1: t grows
    stream.close()
    assert [u.frame_number for u in changed] == [0, 1, 2, 7]
    assert changed[-1].max_coords["t"] == range(4) and changed[-1].is_high_water_mark


def test_event_thread_ends_with_the_stream_and_a_handler_may_close_it(tmp_path):
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=3), *YX])
    before = {t for t in threading.enumerate() if t.name == "ows-events"}
    stream = create_stream(s, in_process=True)
    closed = threading.Event()

    def close_on_last(update):
        if update.frame_number == 2:
            stream.close()  # from the handlers' own thread: must not wait for itself
            closed.set()

    stream.on("coords_changed", close_on_last)
    for i in range(3):
        stream.append(frame_pixels(32, i, (24, 20), np.uint16))
    assert closed.wait(10)
    stream.close()
    for _ in range(100):
        if {t for t in threading.enumerate() if t.name == "ows-events"} <= before:
            break
        time.sleep(0.01)
    assert {t for t in threading.enumerate() if t.name == "ows-events"} <= before


def test_handler_registered_mid_acquisition_knows_the_coordinates_reached(tmp_path):
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=4), Dimension(name="c", count=3),
                                     *YX])
    stream = create_stream(s, in_process=True)
    for i in range(7):  # up to t=2, c=0
        stream.append(frame_pixels(33, i, (24, 20), np.uint16))
    changed, expanded = [], []
    stream.on("coords_changed", changed.append)
    stream.on("coords_expanded", expanded.append)
    stream.append(frame_pixels(33, 7, (24, 20), np.uint16))  # t=2, c=1: nothing new
    stream.close()
    (update,) = changed
    assert update.max_coords["c"] == range(3) and update.max_coords["t"] == range(3)
    assert not update.is_high_water_mark and expanded == []


def test_close_does_not_wait_forever_for_a_blocked_handler(tmp_path, monkeypatch):
    from ome_writers_service import stream as stream_module

    monkeypatch.setattr(stream_module, "CLOSE_WAIT", 0.5)
    s = acq(tmp_path, ".ome.zarr", [Dimension(name="t", count=2), *YX])
    stream = create_stream(s, in_process=True)
    release = threading.Event()
    stream.on("coords_changed", lambda update: release.wait(30))  # e.g. waits for a GUI
    for i in range(2):
        stream.append(frame_pixels(34, i, (24, 20), np.uint16))
    t0 = time.monotonic()
    stream.close()
    assert time.monotonic() - t0 < 10
    release.set()
    verify(s, stream.paths, 34)


def test_zarr_groups_are_named_after_positions_as_ome_writers_0_3_2(tmp_path):
    # read off ome-writers 0.3.2: series <name>, grid positions <name>_<row>_<column>
    from ome_writers_service.schema import zarr_image_groups
    pos = [Position(name="Pos0"), Position(name="Pos1", grid_row=0, grid_column=1),
           Position(name="Pos1", grid_row=1, grid_column=0)]
    s = acq(tmp_path, ".ome.zarr", [PositionDimension(coords=pos), *YX])
    assert zarr_image_groups(s) == ["Pos0", "Pos1_0_1", "Pos1_1_0"]
    paths = write(s, 1)
    assert [Path(p).name for p in paths] == ["Pos0", "Pos1_0_1", "Pos1_1_0"]
    series = json.loads((Path(s.output_path) / "OME/zarr.json").read_text())
    assert series["attributes"]["ome"]["series"] == ["Pos0", "Pos1_0_1", "Pos1_1_0"]
    # one position, even on a position axis: the root is the image (as 0.3.2)
    one = acq(tmp_path / "one", ".ome.zarr", [PositionDimension(coords=["only"]), *YX])
    assert zarr_image_groups(one) == [""]
    for bad in (["a/b", "c"], ["OME", "x"], ["__x", "y"], ["a_0_1", Position(
            name="a", grid_row=0, grid_column=1)]):
        with pytest.raises(ValueError, match="OME-Zarr"):
            acq(tmp_path, ".ome.zarr", [PositionDimension(coords=bad), *YX])
    with pytest.raises(ValueError, match="plate field"):
        acq(tmp_path, ".ome.zarr", [PositionDimension(coords=[
            Position(name="field 1", plate_row="A", plate_column="1")]), *YX],
            plate=Plate(row_names=["A"], column_names=["1"]))
    # the same names are fine for OME-TIFF (files are numbered)
    acq(tmp_path, ".ome.tiff", [PositionDimension(coords=["a/b", "c"]), *YX])
