"""Resolution levels (OmeZarrFormat / OmeTiffFormat ``levels``), computed as frames arrive.

Every level is compared pixel for pixel with an independent reference written here (numpy
padding + block reduction with Python integers), read back with tensorstore, zarr-python and
tifffile; the multiscales metadata is validated by yaozarrs and ome-zarr-models (strict: a
warning fails), in NGFF 0.5 and 0.4 stores alike."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import tifffile
import yaozarrs
import zarr
from ome_types import from_xml

from ome_writers_service import (AcquisitionSettings, Dimension, OmeTiffFormat, OmeZarrFormat,
                                 Plate, Position, PositionDimension, create_stream)
from ome_writers_service.format_metadata import read_zarr_attributes
from ome_writers_service.recover import recover
from ome_writers_service.validate import validate_all

from service_util import (SIGKILL, expected_images, frame_pixels, reference_level,
                          reference_levels, shm_rings, start_daemon)

METHODS = ["mean", "stride", "min", "max"]


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path / "rt")
    yield d
    assert d.stop() == 0, d.log_text()
    assert not shm_rings(d.pid), "daemon left a ring"


def strict_ome_zarr_models(group_path: str, version: str = "0.5") -> None:
    """ome-zarr-models reads the image group; any warning is a failure."""
    if version == "0.5":
        from ome_zarr_models.v05.image import Image
    else:
        from ome_zarr_models.v04.image import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Image.from_zarr(zarr.open_group(group_path, mode="r"))


def multiscale_of(image_group: str, version: str = "0.5") -> dict:
    """An image group's multiscales: 0.5 under "ome" of zarr.json, 0.4 in .zattrs."""
    attrs = read_zarr_attributes(image_group)
    return (attrs["ome"] if version == "0.5" else attrs)["multiscales"][0]


def array_shape(level: Path) -> list[int]:
    doc = level / "zarr.json" if (level / "zarr.json").is_file() else level / ".zarray"
    return json.loads(doc.read_text())["shape"]


def write_frames(stream, settings, seed, frames=None):
    n = settings.num_frames if frames is None else frames
    buf = np.empty(settings.frame_shape, settings.dtype)
    for i in range(n):
        buf[...] = frame_pixels(seed, i, settings.frame_shape, settings.dtype)
        stream.append(buf)
        buf[...] = 7  # the caller reuses its buffer at once


def check_zarr_levels(settings, paths, seed, **kw) -> None:
    fmt = settings.format
    if fmt.version == "0.5" or len(paths) == 1:
        yaozarrs.validate_zarr_store(settings.output_path)
    for path, image in zip(paths, expected_images(settings, seed, **kw)):
        if fmt.version == "0.4":  # (a 0.4 bioformats2raw root names no version: each image)
            yaozarrs.validate_zarr_store(path)
        want = reference_levels(image, fmt.levels, fmt.downsampling)
        datasets = multiscale_of(path, fmt.version)["datasets"]
        assert [d["path"] for d in datasets] == [str(k) for k in range(fmt.levels)]
        driver = "zarr3" if fmt.version == "0.5" else "zarr"
        for k, arr in enumerate(want):
            got = ts.open({"driver": driver, "kvstore": {"driver": "file",
                                                         "path": f"{path}/{k}"}}).result()
            np.testing.assert_array_equal(got.read().result(), arr, err_msg=f"{path}/{k}")
            np.testing.assert_array_equal(zarr.open_array(f"{path}/{k}", mode="r")[...], arr)
        strict_ome_zarr_models(path, fmt.version)


def dims_tyx(t=5, y=37, x=30, **kw):
    return [Dimension(name="t", count=t, chunk_size=kw.pop("t_chunk", 1), type="time"),
            Dimension(name="y", count=y, chunk_size=kw.pop("y_chunk", 16), scale=0.5, unit="um"),
            Dimension(name="x", count=x, chunk_size=kw.pop("x_chunk", 16), scale=0.5, unit="um")]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int8", "uint32"])
def test_one_level_of_odd_and_even_planes_matches_the_definition(method, dtype):
    from ome_writers_service.backends.pyramid import halve

    rng = np.random.default_rng(0)
    for shape in [(2, 2), (3, 5), (129, 130), (64, 7)]:
        if np.dtype(dtype).kind == "f":
            plane = (rng.random(shape) * 4000 - 2000).astype(dtype)
        else:
            info = np.iinfo(dtype)
            plane = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        out = np.empty((-(-shape[0] // 2), -(-shape[1] // 2)), dtype)
        halve(plane, out, method)
        if np.dtype(dtype).kind == "f":
            # summed in the plane's precision: a few rounding errors of its largest values
            atol = 4 * np.finfo(dtype).eps * float(np.abs(plane).max())
            np.testing.assert_allclose(out, reference_level(plane, method), rtol=0, atol=atol)
        else:
            np.testing.assert_array_equal(out, reference_level(plane, method))


# ---- settings ----

def test_levels_beyond_the_frame_are_refused_naming_the_limit(tmp_path):
    with pytest.raises(ValueError, match=r"levels=7: a 37x30 frame halves only 5 times .* "
                                         r"at most levels=6"):
        AcquisitionSettings(root_path=str(tmp_path / "a.ome.zarr"), dtype="uint16",
                            format=OmeZarrFormat(levels=7), dimensions=dims_tyx())
    with pytest.raises(ValueError, match="levels"):
        OmeTiffFormat(levels=0)
    with pytest.raises(ValueError, match="downsampling"):
        OmeZarrFormat(levels=2, downsampling="gaussian")
    s = AcquisitionSettings(root_path=str(tmp_path / "a.ome.tiff"), dtype="uint16",
                            format=OmeTiffFormat(levels=6), dimensions=dims_tyx())
    assert s.format.levels == 6  # 37x30 -> 19x15 -> 10x8 -> 5x4 -> 3x2 -> 2x1


# ---- OME-Zarr ----

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype,version", [("uint8", "0.5"), ("uint16", "0.5"), ("int16", "0.5"),
                                           ("int32", "0.5"), ("uint64", "0.5"), ("uint16", "0.4")])
def test_zarr_levels_match_the_definition_for_every_method_and_dtype(tmp_path, method, dtype,
                                                                     version):
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "p.ome.zarr"), dtype=dtype, overwrite=True,
        format=OmeZarrFormat(levels=4, downsampling=method, version=version),
        dimensions=dims_tyx(t=3, t_chunk=2))
    with create_stream(settings, in_process=True) as stream:
        write_frames(stream, settings, 1)
        paths = stream.paths
    check_zarr_levels(settings, paths, 1)
    ms = multiscale_of(paths[0], version)
    assert ms["type"] == method
    for k, ds in enumerate(ms["datasets"]):
        transforms = {t["type"]: t for t in ds["coordinateTransformations"]}
        assert transforms["scale"]["scale"] == [1.0, 0.5 * 2 ** k, 0.5 * 2 ** k]
        shift = 0.0 if method == "stride" else 0.5 * (2 ** k - 1) / 2
        if k == 0 or method == "stride":
            assert "translation" not in transforms
        else:  # the level's pixel sits at the centre of the block it summarises
            assert transforms["translation"]["translation"] == [0.0, shift, shift]


@pytest.mark.parametrize("layout", ["positions-sharded-blosc", "plate-zstd", "unbounded",
                                    "0.4-positions-blosc", "0.4-plate"])
def test_zarr_levels_through_the_daemon(daemon, tmp_path, layout):
    kw: dict = {}
    version = "0.4" if layout.startswith("0.4-") else "0.5"
    if layout == "0.4-positions-blosc":  # (0.4 has no sharding)
        dims = [Dimension(name="t", count=4, chunk_size=2, type="time"),
                PositionDimension(coords=["A", "B"]),
                Dimension(name="c", count=2, type="channel"),
                Dimension(name="y", count=40, chunk_size=8), Dimension(name="x", count=33)]
        kw["compression"] = "blosc-lz4"
    elif layout == "0.4-plate":
        dims = [Dimension(name="t", count=3, type="time"),
                PositionDimension(coords=[Position(name="f0", plate_row="A", plate_column="1"),
                                          Position(name="f1", plate_row="A", plate_column="1")]),
                Dimension(name="y", count=24, chunk_size=12), Dimension(name="x", count=20)]
        kw["plate"] = Plate(row_names=["A"], column_names=["1"])
    elif layout == "positions-sharded-blosc":
        dims = [Dimension(name="t", count=4, chunk_size=2, shard_size_chunks=2, type="time"),
                PositionDimension(coords=["A", "B"]),
                Dimension(name="c", count=2, type="channel"),
                Dimension(name="y", count=40, chunk_size=8, shard_size_chunks=2),
                Dimension(name="x", count=33, chunk_size=8, shard_size_chunks=2)]
        kw["compression"] = "blosc-zstd"
    elif layout == "plate-zstd":
        dims = [Dimension(name="t", count=3, type="time"),
                PositionDimension(coords=[Position(name="f0", plate_row="A", plate_column="1"),
                                          Position(name="f0", plate_row="B", plate_column="2")]),
                Dimension(name="y", count=24, chunk_size=12), Dimension(name="x", count=20)]
        kw["compression"] = "zstd"
        kw["plate"] = Plate(row_names=["A", "B"], column_names=["1", "2"])
    else:
        dims = [Dimension(name="t", count=None, chunk_size=3, type="time"),
                Dimension(name="y", count=24, chunk_size=8), Dimension(name="x", count=20)]
    settings = AcquisitionSettings(root_path=str(tmp_path / "d.ome.zarr"), dtype="uint16",
                                   overwrite=True,
                                   format=OmeZarrFormat(levels=3, version=version),
                                   dimensions=dims, **kw)
    frames = 7 if layout == "unbounded" else None
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    write_frames(stream, settings, 2, frames)
    first = (0,) * (len(dims) - 2)  # the view is level 0
    np.testing.assert_array_equal(stream.view()[first],
                                  frame_pixels(2, 0, settings.frame_shape, "uint16"))
    report = stream.close()
    assert report["errors"] == []
    check_zarr_levels(settings, report["paths"], 2, frames=frames)
    if layout == "unbounded":  # every level's array cut to the frames received
        for k in range(3):
            assert array_shape(Path(report["paths"][0]) / str(k))[0] == 7
    for report_ in validate_all(settings.output_path):  # with its METADATA.ome.xml
        assert report_.ok, str(report_)


def test_zarr_lower_level_chunks_are_written_as_soon_as_complete(tmp_path):
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "live.ome.zarr"), dtype="uint16", overwrite=True,
        format=OmeZarrFormat(levels=3), dimensions=dims_tyx(t=6, t_chunk=4))
    stream = create_stream(settings, in_process=True)
    write_frames(stream, settings, 3, frames=5)  # t chunk 0 complete, t chunk 1 partial
    level2 = Path(settings.output_path) / "2" / "c"
    deadline = time.monotonic() + 20
    while not (level2 / "0").is_dir() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(p.name for p in level2.iterdir()) == ["0"]  # the complete chunk only
    stream.append(frame_pixels(3, 5, settings.frame_shape, "uint16"))
    stream.close()
    check_zarr_levels(settings, stream.paths, 3)
    # ended early: the partial last chunk of every level is written at close
    partial = AcquisitionSettings(**{**settings.model_dump(), "root_path": str(
        tmp_path / "early.ome.zarr")})
    with create_stream(partial, in_process=True) as stream:
        write_frames(stream, partial, 4, frames=5)
    for k in range(3):
        assert sorted(p.name for p in (Path(partial.output_path) / str(k) / "c").iterdir()) \
            == ["0", "1"]
    check_zarr_levels(partial, stream.paths, 4, frames=5)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_zarr_levels_recovered_after_daemon_sigkill(tmp_path, version):
    d = start_daemon(tmp_path / "rt")
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "k.ome.zarr"), dtype="uint16", overwrite=True,
        format=OmeZarrFormat(levels=3, version=version), dimensions=dims_tyx(t=40, t_chunk=2))
    stream = create_stream(settings, endpoint=d.endpoint, token=d.token)
    write_frames(stream, settings, 5, frames=13)
    root = Path(settings.output_path)
    grid = "c/" if version == "0.5" else ""  # zarr v3 / v2 chunk keys
    chunks = f"{grid}5"  # t chunk 5

    def files(level: int) -> int:  # chunks of t chunks 0-5 (writes complete out of order)
        top = root / str(level) / grid
        return sum(f.is_file() and int(f.relative_to(top).parts[0]) <= 5
                   for f in top.rglob("*") if f.name.isdigit())

    deadline = time.monotonic() + 20  # t chunks 0-5 on disk at every level (6, 2, 1 each)
    while (files(0), files(1), files(2)) != (36, 12, 6) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (files(0), files(1), files(2)) == (36, 12, 6)
    while stream.status()["frames_written"] < 13 and time.monotonic() < deadline:
        time.sleep(0.01)  # frame 12 released: copied into its unit's shared-memory buffer
    assert stream.status()["frames_written"] == 13
    d.stop(SIGKILL)
    # as if the daemon died before the lower levels of the last unit were computed, and
    # before level 0 of t chunk 3 was written (its lower levels were)
    for k in (1, 2):
        for chunk in (root / str(k) / chunks).rglob("*"):
            if chunk.is_file():
                chunk.unlink()
    for chunk in (root / "0" / f"{grid}3").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    summary = recover(settings.output_path)
    # t chunks 0-5 of two frames: all but 3 on disk; frame 12 from the chunk buffer
    assert summary["extent"] == 13
    assert summary["frames_recovered"] == 11
    # the lower levels of t chunks 5 and 6 computed again; those of t chunk 3 show no frame
    check_zarr_levels(settings, stream.paths, 5, frames=13, missing={6, 7})
    try:
        stream.close(timeout=1)
    except Exception:  # noqa: BLE001 - its daemon is gone
        pass


# ---- OME-TIFF ----

def check_tiff_levels(settings, paths, seed, **kw) -> None:
    fmt = settings.format
    for path, image in zip(paths, expected_images(settings, seed, **kw)):
        want = reference_levels(image, fmt.levels, fmt.downsampling)
        with tifffile.TiffFile(path) as tf:
            from_xml(tf.ome_metadata, validate=True)
            # a multi-file dataset's file: the series whose pages it holds
            series = next(s for s in tf.series if s.pages[0].parent.filename == Path(path).name)
            assert len(series.levels) == fmt.levels, path
            for k, (level, arr) in enumerate(zip(series.levels, want)):
                got = level.asarray()
                np.testing.assert_array_equal(got, arr.reshape(got.shape), err_msg=f"{path} {k}")
            for page in tf.pages:  # each page lists its resolutions as SubIFDs
                assert len(page.subifds) == fmt.levels - 1


@pytest.mark.parametrize("method", METHODS)
def test_tiff_levels_are_subifds_of_every_page(tmp_path, method):
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "p.ome.tiff"), dtype="uint16", overwrite=True,
        format=OmeTiffFormat(levels=4, downsampling=method), dimensions=dims_tyx(t=6))
    stream = create_stream(settings, in_process=True)
    write_frames(stream, settings, 6)
    stream._backend._pipeline.wait()
    assert stream._backend._appenders[0] is not None  # pages 2.. by the page-appending path
    stream.close()
    check_tiff_levels(settings, stream.paths, 6)


@pytest.mark.parametrize("layout", ["positions", "lzw", "unbounded"])
def test_tiff_levels_through_the_daemon(daemon, tmp_path, layout):
    kw: dict = {}
    if layout == "positions":
        dims = [Dimension(name="t", count=3, type="time"), PositionDimension(coords=["A", "B"]),
                Dimension(name="c", count=2, type="channel"),
                Dimension(name="y", count=32), Dimension(name="x", count=27)]
    elif layout == "lzw":
        dims = dims_tyx(t=4)
        kw["compression"] = "lzw"
    else:
        dims = [Dimension(name="t", count=None, type="time"),
                Dimension(name="y", count=24), Dimension(name="x", count=20)]
    settings = AcquisitionSettings(root_path=str(tmp_path / "d.ome.tiff"), dtype="uint16",
                                   overwrite=True, format=OmeTiffFormat(levels=3),
                                   dimensions=dims, **kw)
    frames = 5 if layout == "unbounded" else None
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    write_frames(stream, settings, 7, frames)
    first = (0,) * (len(dims) - 2)  # the view is level 0
    np.testing.assert_array_equal(stream.view()[first],
                                  frame_pixels(7, 0, settings.frame_shape, "uint16"))
    report = stream.close()
    assert report["errors"] == []
    check_tiff_levels(settings, report["paths"], 7, frames=frames)


def test_tiff_levels_recovered_after_daemon_sigkill(tmp_path):
    d = start_daemon(tmp_path / "rt")
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "k.ome.tiff"), dtype="uint16", overwrite=True,
        format=OmeTiffFormat(levels=3), dimensions=[
            Dimension(name="t", count=6, type="time"), Dimension(name="c", count=2),
            Dimension(name="y", count=24), Dimension(name="x", count=20)])
    stream = create_stream(settings, endpoint=d.endpoint, token=d.token)
    write_frames(stream, settings, 8, frames=5)
    while stream.status()["frames_written"] < 5:
        time.sleep(0.01)
    deadline = time.monotonic() + 20
    pages = 0
    while time.monotonic() < deadline:  # the pages are written once their levels are
        try:
            with tifffile.TiffFile(settings.output_path) as tf:
                pages = len(tf.pages)
        except tifffile.TiffFileError:  # not even the header written yet
            pages = 0
        if pages == 5:
            break
        time.sleep(0.01)
    assert pages == 5, f"{pages} of 5 pages written after 20 s"
    d.stop(SIGKILL)
    recover(settings.output_path)
    # t=0, 1 whole, t=2 half: its missing plane is a zero page with zero levels
    check_tiff_levels(settings, [settings.output_path], 8, frames=5)
    try:
        stream.close(timeout=1)
    except Exception:  # noqa: BLE001 - its daemon is gone
        pass
