"""OME-Zarr layouts beyond one image: the OME/METADATA.ome.xml of a store of several images
(kept in agreement with the zarr metadata whenever that changes), and NGFF 0.4 on zarr v2.

What readers make of every layout is test_readers.py's; here, what the writer promises about
these files as the acquisition goes: at creation, after update_metadata(), at close, through
the daemon, and the 0.4 specifics (zarr v2 documents, refused sharding, reserved keys)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ome_types import from_xml

import ome_writers_service as ows
from ome_writers_service.format_metadata import read_zarr_attributes
from ome_writers_service.validate import validate_all

from service_util import frame_pixels, start_daemon

YX = [ows.Dimension(name="y", count=16, scale=0.5, unit="um"),
      ows.Dimension(name="x", count=12, scale=0.5, unit="um")]


def settings(root: Path, version: str = "0.5", *, t: int | None = 2, positions=("A", "B", "C"),
             dtype="uint16", **kw) -> ows.AcquisitionSettings:
    dims = [ows.Dimension(name="t", count=t, chunk_size=1),
            ows.PositionDimension(coords=list(positions)),
            ows.Dimension(name="c", count=2, coords=["DAPI", "GFP"]), *YX]
    return ows.AcquisitionSettings(root_path=str(root), dimensions=dims, dtype=dtype,
                                   format={"name": "ome-zarr", "version": version},
                                   overwrite=True, **kw)


def ome_xml(root: Path):
    return from_xml((root / "OME" / "METADATA.ome.xml").read_text(encoding="utf-8"),
                    validate=True)


def append_all(stream, s: ows.AcquisitionSettings, frames: int | None = None) -> None:
    for i in range(s.num_frames if frames is None else frames):
        stream.append(frame_pixels(4, i, s.frame_shape, s.dtype))


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_xml_describes_every_image_from_creation_to_close(tmp_path, version):
    s = settings(tmp_path / "run.ome.zarr", version, t=None)
    stream = ows.create_stream(s, in_process=True)
    root = Path(s.output_path)
    early = ome_xml(root)  # there from the start: viewers list the images at once
    assert [i.name for i in early.images] == ["A", "B", "C"]
    assert all(i.pixels.metadata_only is not None and not i.pixels.tiff_data_blocks
               for i in early.images)
    append_all(stream, s, frames=15)  # 2 whole steps of t and half of a third
    stream.close()
    final = ome_xml(root)
    series = read_zarr_attributes(root / "OME")
    assert series.get("ome", series)["series"] == ["A", "B", "C"]  # named after the positions
    for image in final.images:
        px = image.pixels
        assert (px.size_t, px.size_c, px.size_z, px.size_y, px.size_x) == (3, 2, 1, 16, 12)
        assert [c.name for c in px.channels] == ["DAPI", "GFP"]
        assert (px.physical_size_x, px.physical_size_x_unit.value) == (0.5, "µm")
    summary = {a.namespace: {m.k: json.loads(m.value) for m in a.value.ms}
               for a in final.structured_annotations.map_annotations}
    assert summary["ome_writers.acquisition"]["frames_written"] == 15
    reports = validate_all(root)
    assert all(r.ok for r in reports), "\n".join(map(str, reports))


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_xml_follows_update_metadata_in_process_and_through_the_daemon(tmp_path, version):
    d = start_daemon(tmp_path / "rt")
    try:
        for how in ("in process", "daemon"):
            s = settings(tmp_path / f"{how.replace(' ', '_')}.ome.zarr", version)
            stream = ows.create_stream(s, in_process=True) if how == "in process" else \
                ows.create_stream(s, endpoint=d.endpoint, token=d.token)
            meta = stream.get_metadata()
            ngff = meta["B"].get("ome", meta["B"])
            ngff["multiscales"][0]["name"] = "renamed while acquiring"
            stream.update_metadata({"B": meta["B"]})
            append_all(stream, s)
            stream.close()
            root = Path(s.output_path)
            assert [i.name for i in ome_xml(root).images] == \
                ["A", "renamed while acquiring", "C"], how
            # after close too (the daemon-backed stream writes from this process then)
            meta = stream.get_metadata()
            ngff = meta["C"].get("ome", meta["C"])
            ngff["omero"]["channels"][1]["label"] = "EGFP"
            stream.update_metadata({"C": meta["C"]})
            doc = ome_xml(root)
            assert [c.name for c in doc.images[2].pixels.channels] == ["DAPI", "EGFP"], how
            assert [c.name for c in doc.images[0].pixels.channels] == ["DAPI", "GFP"], how
            stream.set_global_metadata("lab", {"scope": "spinning disk"})
            anns = {a.namespace: {m.k: json.loads(m.value) for m in a.value.ms}
                    for a in ome_xml(root).structured_annotations.map_annotations}
            assert anns["lab"] == {"scope": "spinning disk"}, how  # (values as JSON)
            reports = validate_all(root)
            assert all(r.ok for r in reports), "\n".join(map(str, reports))
    finally:
        assert d.stop() == 0, d.log_text()


def test_validate_catches_ome_xml_that_contradicts_the_zarr_metadata(tmp_path):
    s = settings(tmp_path / "v.ome.zarr")
    with ows.create_stream(s, in_process=True) as stream:
        append_all(stream, s)
    root = Path(s.output_path)
    xml = root / "OME" / "METADATA.ome.xml"
    xml.write_text(xml.read_text(encoding="utf-8").replace('Name="B"', 'Name="other"'),
                   encoding="utf-8")
    (report,) = validate_all(root)
    assert not report.ok and "named 'other', multiscales 'B'" in str(report)
    xml.unlink()
    (report,) = validate_all(root)
    assert "OME/METADATA.ome.xml present (bioformats2raw layout): missing" in str(report)


def test_64_bit_integer_stores_have_no_ome_xml_and_say_why(tmp_path):
    """OME-XML has no PixelType for int64/uint64: such a store has no METADATA.ome.xml, and
    validate says that is why."""
    s = settings(tmp_path / "i64.ome.zarr", dtype="int64")
    with ows.create_stream(s, in_process=True) as stream:
        for i in range(s.num_frames):
            stream.append(np.full(s.frame_shape, i - 5, np.int64))
    root = Path(s.output_path)
    assert not (root / "OME" / "METADATA.ome.xml").exists()
    (report,) = validate_all(root)
    assert report.ok, str(report)
    assert any("there is no OME-XML PixelType for int64" in p for p in report.passed), str(report)


def test_ngff_04_is_zarr_v2_throughout(tmp_path):
    s = settings(tmp_path / "old.ome.zarr", "0.4", positions=("A",), compression="blosc-lz4")
    with ows.create_stream(s, in_process=True) as stream:
        append_all(stream, s)
    root = Path(s.output_path)
    assert not list(root.rglob("zarr.json"))
    assert json.loads((root / ".zgroup").read_text()) == {"zarr_format": 2}
    attrs = json.loads((root / ".zattrs").read_text())  # one position: the root is the image
    assert attrs["multiscales"][0]["version"] == "0.4" and "ome" not in attrs
    array = json.loads((root / "0" / ".zarray").read_text())
    assert array["dimension_separator"] == "/" and array["zarr_format"] == 2
    assert array["compressor"]["id"] == "blosc" and array["compressor"]["cname"] == "lz4"
    assert (root / "0" / "1" / "1" / "0" / "0").is_file()  # t=1, c=1: "/"-separated keys


def test_ngff_04_refuses_sharding_and_its_own_keys_as_global_metadata(tmp_path):
    with pytest.raises(ValueError, match=r"dimensions \['t'\]: shard_size_chunks asks for "
                                         "sharding, which OME-Zarr 0.4 cannot store"):
        ows.AcquisitionSettings(
            root_path=str(tmp_path / "s.ome.zarr"), dtype="uint8",
            format=ows.OmeZarrFormat(version="0.4"),
            dimensions=[ows.Dimension(name="t", count=4, chunk_size=1, shard_size_chunks=2),
                        *YX])
    assert ows.OmeZarrFormat().version == "0.5"  # the default stays NGFF 0.5
    s = settings(tmp_path / "k.ome.zarr", "0.4")
    d = start_daemon(tmp_path / "rt")
    try:
        for stream in (ows.create_stream(s, in_process=True),
                       ows.create_stream(s.model_copy(update={"root_path": str(
                           tmp_path / "kd.ome.zarr")}), endpoint=d.endpoint, token=d.token)):
            with pytest.raises(ValueError, match="'plate' is an OME-Zarr 0.4 metadata key"):
                stream.set_global_metadata("plate", {"a": 1})
            stream.set_global_metadata("lab", {"a": 1})
            append_all(stream, s)
            stream.close()
    finally:
        assert d.stop() == 0, d.log_text()
    for name in ("k.ome.zarr", "kd.ome.zarr"):
        attrs = json.loads((tmp_path / name / ".zattrs").read_text())
        assert attrs == {"bioformats2raw.layout": 3, "lab": {"a": 1}}


def test_ngff_04_view_info_validate_and_recover(tmp_path):
    s = settings(tmp_path / "d.ome.zarr", "0.4")
    d = start_daemon(tmp_path / "rt")
    try:
        stream = ows.create_stream(s, endpoint=d.endpoint, token=d.token)
        append_all(stream, s)
        stream.close()
        view = stream.view()  # after close: read from the zarr v2 arrays in this process
        np.testing.assert_array_equal(view[1, 2, 1], frame_pixels(4, 11, (16, 12), "uint16"))
    finally:
        assert d.stop() == 0, d.log_text()
    cli = [sys.executable, "-m", "ome_writers_service"]
    res = subprocess.run([*cli, "info", s.output_path], capture_output=True, text=True)
    assert res.returncode == 0 and "OME-Zarr 0.4" in res.stdout, res.stdout + res.stderr
    res = subprocess.run([*cli, "validate", s.output_path], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # a writer that dies: recover cuts to the chunks on disk and rewrites METADATA.ome.xml
    crash = tmp_path / "crash.ome.zarr"
    script = (f"import os, sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "import ome_writers_service as ows\n"
              "from test_zarr_layouts import settings, append_all\n"
              f"s = settings({str(crash)!r}, '0.4', t=5)\n"
              "stream = ows.create_stream(s, in_process=True)\n"
              "append_all(stream, s, frames=14)\n"
              "stream._backend.wait_for_writes()\n"
              "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert ome_xml(crash).images[0].pixels.size_t == 5  # as declared, until recovered
    res = subprocess.run([*cli, "recover", str(crash)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [i.pixels.size_t for i in ome_xml(crash).images] == [3, 3, 3]
    assert json.loads((crash / "B" / "0" / ".zarray").read_text())["shape"][0] == 3
    reports = validate_all(crash)
    assert all(r.ok for r in reports), "\n".join(map(str, reports))
