"""Metadata round trips read back with independent tools, useq-schema sequences through the
daemon, and the command line run for real."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from ome_types import from_xml

from ome_writers_service import (AcquisitionSettings, Channel, Dimension, Instrument, Objective,
                                 create_stream, dataset_info,
                                 read_frame_metadata, useq_to_acquisition_settings)

from service_util import expected_images, frame_pixels, read_image, start_daemon

FORMATS = [".ome.zarr", ".ome.tiff"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ome_writers_service", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path / "rt")
    yield d
    assert d.stop() == 0, d.log_text()


@pytest.mark.parametrize("suffix", FORMATS)
def test_dataset_and_frame_metadata_round_trip(tmp_path, suffix):
    s = AcquisitionSettings(
        root_path=str(tmp_path / f"m{suffix}"), dtype="uint16", overwrite=True,
        image_name="HeLa mitosis", acquisition_date=datetime.datetime(2026, 11, 25, 9, 30),
        instrument=Instrument(microscope_manufacturer="Nikon", microscope_model="Ti2",
                              objective=Objective(model="Plan Apo λ 60x", lens_na=1.4,
                                                  nominal_magnification=60, immersion="Oil")),
        dimensions=[Dimension(name="t", count=2, scale=30, unit="s"),
                    Dimension(name="c", coords=[Channel(name="mCherry", emission_wavelength_nm=610,
                                                        color="#FF0000")]),
                    Dimension(name="y", count=8, scale=0.108, unit="um"),
                    Dimension(name="x", count=8, scale=0.108, unit="um")])
    with create_stream(s, in_process=True) as stream:
        stream.set_global_metadata("pymmcore_plus", {"config": "scope.cfg", "binning": 2})
        for i in range(2):
            stream.append(frame_pixels(60, i, (8, 8), np.uint16),
                          frame_metadata={"delta_t": 30.0 * i, "exposure_time": 0.05,
                                          "position_z": 1.5 + i, "focus_score": 0.9 - i / 10,
                                          "camera": {"gain": 2}})
    image = s.root_path if suffix == ".ome.tiff" else s.root_path
    rows = read_frame_metadata(image)
    assert [r["index"]["t"] for r in rows] == [0, 1]
    assert rows[1]["delta_t"] == 30.0 and rows[1]["exposure_time"] == 0.05
    assert rows[1]["position_z"] == 2.5 and rows[1]["focus_score"] == pytest.approx(0.8)
    assert rows[1]["camera"] == {"gain": 2}
    info = dataset_info(s.root_path)
    if suffix == ".ome.tiff":
        with tifffile.TiffFile(s.root_path) as tf:
            ome = from_xml(tf.ome_metadata, validate=True)
        img = ome.images[0]
        assert img.name == "HeLa mitosis"
        assert img.acquisition_date == datetime.datetime(2026, 11, 25, 9, 30)
        inst = ome.instruments[0]
        assert inst.microscope.model == "Ti2" and inst.objectives[0].lens_na == 1.4
        assert img.objective_settings.id == inst.objectives[0].id
        assert img.pixels.channels[0].emission_wavelength == 610
        assert img.pixels.time_increment == 30
        assert info["images"][0]["global_metadata"]["pymmcore_plus"] == {"config": "scope.cfg",
                                                                         "binning": 2}
    else:
        attrs = json.loads((Path(s.root_path) / "zarr.json").read_text())["attributes"]
        assert attrs["ome"]["multiscales"][0]["name"] == "HeLa mitosis"
        assert attrs["ome_writers"]["instrument"]["objective"]["lens_na"] == 1.4
        assert attrs["ome_writers"]["acquisition_date"] == "2026-11-25T09:30:00"
        assert attrs["ome"]["omero"]["channels"][0]["color"] == "FF0000"
        assert attrs["pymmcore_plus"] == {"config": "scope.cfg", "binning": 2}
        assert info["images"][0]["channels"] == ["mCherry"]
        assert info["images"][0]["axes"][0] == "t [second]"


def test_useq_sequence_streams_through_the_daemon(daemon, tmp_path):
    useq = pytest.importorskip("useq")
    seq = useq.MDASequence(
        axis_order="tpcz",
        stage_positions=[useq.Position(x=100.0, y=200.0, z=5.0, name="A1"),
                         useq.Position(x=300.0, y=400.0, z=5.0, name="B2")],
        channels=["DAPI", "FITC"],
        z_plan={"range": 2, "step": 1.0},
        time_plan={"interval": 2.5, "loops": 2},
    )
    kw = useq_to_acquisition_settings(seq, image_width=48, image_height=32, pixel_size_um=0.65)
    settings = AcquisitionSettings(root_path=str(tmp_path / "mda.ome.zarr"), dtype="uint16",
                                   overwrite=True, **kw)
    assert [d.name for d in settings.dimensions] == ["t", "p", "c", "z", "y", "x"]
    with create_stream(settings, endpoint=daemon.endpoint, token=daemon.token) as stream:
        for i, event in enumerate(seq):
            stream.append(frame_pixels(61, i, (32, 48), np.uint16),
                          frame_metadata={"delta_t": event.min_start_time or 0.0})
    paths = stream.report["paths"]
    assert [Path(p).name for p in paths] == ["A1", "B2"]  # named after the positions
    want = expected_images(settings, 61)
    for path, arr in zip(paths, want):
        assert arr.shape == (2, 2, 3, 32, 48)
        np.testing.assert_array_equal(read_image(path), arr)
    ms = json.loads((Path(paths[1]) / "zarr.json").read_text())["attributes"]
    assert ms["ome"]["multiscales"][0]["name"] == "B2"
    assert [c["label"] for c in ms["ome"]["omero"]["channels"]] == ["DAPI", "FITC"]
    assert ms["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] \
        == [2.5, 1.0, 1.0, 0.65, 0.65]
    assert ms["ome_writers"]["position"]["x_coord"] == 300.0


def test_status_watch_on_a_live_stream(daemon, tmp_path):
    total = 6000  # more than the camera below can send before the watcher is done
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "live.ome.tiff"), dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=total), Dimension(name="y", count=64),
                    Dimension(name="x", count=64)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    watch = subprocess.Popen([sys.executable, "-m", "ome_writers_service", "status",
                              "--runtime-dir", str(daemon.rt), "--watch", "0.3", "--count", "8"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = 0
    while watch.poll() is None and sent < total:  # a slow camera for as long as it watches
        stream.append(frame_pixels(62, sent, (64, 64), np.uint16))
        sent += 1
        time.sleep(0.01)
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    blocks = out.split("daemon pid")
    assert len(blocks) - 1 == 8
    written = [int(x) for x in __import__("re").findall(rf"(\d+)/{total} written", out)]
    assert len(written) == 8, out
    assert written == sorted(written) and written[-1] > written[0]  # it was live
    assert "frames/s" in out and "lag" in out and "ring" in out and "ETA" in out
    stream.skip(frames=total - sent)
    stream.close()


def test_validate_info_and_recover_commands(tmp_path):
    good = AcquisitionSettings(root_path=str(tmp_path / "good.ome.zarr"), dtype="uint8",
                               overwrite=True, dimensions=[Dimension(name="t", count=2),
                                                           Dimension(name="y", count=8),
                                                           Dimension(name="x", count=8)])
    with create_stream(good, in_process=True) as stream:
        for i in range(2):
            stream.append(np.full((8, 8), i, np.uint8))
    tiff = AcquisitionSettings(**{**good.model_dump(exclude={"format"}),
                                  "root_path": str(tmp_path / "good.ome.tiff")})
    with create_stream(tiff, in_process=True) as stream:
        for i in range(2):
            stream.append(np.full((8, 8), i, np.uint8))
    res = cli("validate", good.root_path, tiff.root_path)
    assert res.returncode == 0 and res.stdout.count("FAIL") == 0, res.stdout
    broken = tmp_path / "broken.ome.zarr"
    subprocess.run(["cp", "-r", good.root_path, str(broken)], check=True)
    meta = json.loads((broken / "zarr.json").read_text())
    meta["attributes"]["ome"]["multiscales"][0]["axes"][-1]["type"] = "time"  # time after space
    (broken / "zarr.json").write_text(json.dumps(meta))
    res = cli("validate", str(broken))
    assert res.returncode == 1 and "FAIL yaozarrs" in res.stdout, res.stdout
    bad_tiff = tmp_path / "bad.ome.tiff"
    tifffile.imwrite(bad_tiff, np.zeros((8, 8), np.uint8), ome=False)  # no OME-XML at all
    res = cli("validate", str(bad_tiff))
    assert res.returncode == 1 and "FAIL OME-XML" in res.stdout
    res = cli("info", good.root_path)
    assert res.returncode == 0 and '"shape": [\n' in res.stdout and '"kind": "image"' in res.stdout
    res = cli("recover", good.root_path)  # finalized: there is nothing to recover
    assert res.returncode == 1 and "no journal" in res.stderr
    for command in ("serve", "status", "demo", "validate", "recover", "info"):
        assert cli(command, "--help").returncode == 0


def _no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = AcquisitionSettings(root_path=str(tmp_path / "ok.ome.tiff"), dtype="uint8",
                               dimensions=[Dimension(name="t", count=4),
                                           Dimension(name="y", count=16),
                                           Dimension(name="x", count=16)])
    with create_stream(good, in_process=True) as stream:
        for i in range(4):
            stream.append(np.full((16, 16), i, np.uint8))
    data = Path(good.root_path).read_bytes()
    bad = {"notatiff": tmp_path / "notatiff.ome.tiff", "empty": tmp_path / "empty.ome.tiff",
           "truncated": tmp_path / "truncated.ome.tiff", "plain": tmp_path / "plain.tif",
           "brokenjson": tmp_path / "broken.ome.zarr", "nozarrjson": tmp_path / "nothing.ome.zarr"}
    bad["notatiff"].write_text("hi\n")
    bad["empty"].write_bytes(b"")
    bad["truncated"].write_bytes(data[:200])  # cut inside the first IFD / OME-XML
    tifffile.imwrite(bad["plain"], np.zeros((8, 8), np.uint8), ome=False)
    bad["brokenjson"].mkdir()
    (bad["brokenjson"] / "zarr.json").write_text('{"zarr_format": 3,\n')
    bad["nozarrjson"].mkdir()
    return {"good": Path(good.root_path), **bad}


def test_validate_reports_bad_files_as_fail_lines_without_tracebacks(tmp_path):
    paths = _bad_inputs(tmp_path)
    for key, path in paths.items():
        if key == "good":
            continue
        res = cli("validate", str(path))
        _no_traceback(res)
        assert res.returncode == 1, (key, res.stdout)
        assert f"{path}:" in res.stdout and "FAIL" in res.stdout, (key, res.stdout)
    res = cli("validate", str(paths["brokenjson"]))
    assert "zarr.json: valid JSON" in res.stdout
    res = cli("validate", str(paths["notatiff"]))
    assert "notatiff.ome.tiff opens as a TIFF file" in res.stdout


def test_info_goes_on_past_a_bad_path_and_exits_non_zero(tmp_path):
    paths = _bad_inputs(tmp_path)
    order = ["notatiff", "good", "plain", "brokenjson", "nozarrjson", "empty", "truncated"]
    res = cli("info", *(str(paths[k]) for k in order))
    _no_traceback(res)
    assert res.returncode == 1
    assert f"{paths['good']}:" in res.stdout and '"format": "OME-TIFF"' in res.stdout
    for key in order:
        if key != "good":
            assert f"{paths[key]}: cannot read" in res.stderr, key
    assert "without OME-XML metadata (not an OME-TIFF)" in res.stderr
    assert "not valid JSON" in res.stderr
    assert cli("info", str(paths["good"])).returncode == 0


def test_multi_position_tiff_root_path_covers_every_position_file(tmp_path):
    s = AcquisitionSettings(root_path=str(tmp_path / "multi.ome.tiff"), dtype="uint8",
                            dimensions=[Dimension(name="p", type="position", coords=["a", "b"]),
                                        Dimension(name="y", count=8), Dimension(name="x", count=8)])
    with create_stream(s, in_process=True) as stream:
        for i in range(2):
            stream.append(np.full((8, 8), i, np.uint8))
    assert not Path(s.root_path).exists()
    res = cli("validate", s.root_path)
    _no_traceback(res)
    assert res.returncode == 0 and "FAIL" not in res.stdout, res.stdout
    assert "multi_p000.ome.tiff:" in res.stdout and "multi_p001.ome.tiff:" in res.stdout
    res = cli("info", s.root_path)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.split(":\n", 1)[1])
    assert [Path(f).name for f in info["files"]] == ["multi_p000.ome.tiff", "multi_p001.ome.tiff"]
    assert [img["name"] for img in info["images"]] == ["a", "b"]
    assert dataset_info(s.root_path)["pages"] == 2


def test_status_and_recover_user_mistakes_are_one_line_errors(tmp_path):
    res = cli("status", "--endpoint", "garbage")
    _no_traceback(res)
    assert res.returncode != 0 and "cannot connect to 'garbage'" in res.stderr
    journal = tmp_path / "x.ome.zarr.ows-journal"
    journal.write_text('{"version": 1}\n')
    res = cli("recover", str(tmp_path / "x.ome.zarr"))
    _no_traceback(res)
    assert res.returncode == 1 and "holds no acquisition settings" in res.stderr
    journal.write_text("garbage\n")
    res = cli("recover", str(journal))
    _no_traceback(res)
    assert res.returncode == 1 and "not an ome-writers-service journal" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["--t", "0"], "--t must be at least 1, not 0"),
    (["--size", "-5"], "--size must be at least 1, not -5"),
    (["--out", "/proc/forbidden/demo"], "--out /proc/forbidden/demo: cannot write there"),
])
def test_demo_rejects_bad_arguments_before_starting_a_daemon(tmp_path, args, message):
    env = {**__import__("os").environ, "TMPDIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "ome_writers_service", "demo",
                          "--out", str(tmp_path / "out"), *args],
                         capture_output=True, text=True, timeout=60, env=env)
    _no_traceback(res)
    assert res.returncode == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "started daemon" not in res.stdout and not list(tmp_path.glob("ows-demo-*"))


def test_demo_removes_the_runtime_directory_it_creates(tmp_path):
    env = {**__import__("os").environ, "TMPDIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "ome_writers_service", "demo", "--t", "2",
                          "--z", "1", "--size", "16", "--positions", "2",
                          "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=180, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "started daemon pid" in res.stdout and "all datasets written and valid" in res.stdout
    pid = int(res.stdout.split("started daemon pid ")[1].split()[0])
    assert not Path(f"/proc/{pid}").exists()  # the daemon was stopped and reaped
    assert not list(tmp_path.glob("ows-demo-*"))
