"""The C library, its error paths and the C++ example, built with warnings as errors and run
against a real daemon; datasets checked pixel-exact and by the conformance checker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ome_writers_service import AcquisitionSettings, Dimension

from service_util import read_image, run_checker, start_daemon

CLIENT = Path(__file__).resolve().parents[1] / "client" / "c"
HEADERS = [Path("/usr/include/zmq.h"), Path("/usr/include/cjson/cJSON.h")]


def ensure_build_deps() -> None:
    if all(h.exists() for h in HEADERS) and shutil.which("make") and shutil.which("g++"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("libzmq3-dev / libcjson-dev missing and cannot be installed here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "libzmq3-dev", "libcjson-dev", "make",
                    "g++"], check=True, env=env, capture_output=True)


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    ensure_build_deps()
    out = tmp_path_factory.mktemp("cbuild")
    res = subprocess.run(["make", "-C", str(CLIENT), f"B={out}", "all"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr  # -Werror: any warning fails
    return out


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path / "rt")
    yield d
    if d.proc.poll() is None:
        assert d.stop() == 0, d.log_text()


def pattern(i: int, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return ((i * 7 + y * 3 + x) & 0xFFFF).astype(np.uint16)


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tiff"])
@pytest.mark.parametrize("transport", ["shm", "inline"])
def test_c_client_streams_an_exact_valid_dataset(build, daemon, tmp_path, suffix, transport):
    settings = AcquisitionSettings(
        root_path=str(tmp_path / f"c{suffix}"), dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=4), Dimension(name="c", count=2),
                    Dimension(name="z", count=3), Dimension(name="y", count=40),
                    Dimension(name="x", count=56)])
    sfile = tmp_path / "settings.json"
    sfile.write_text(settings.model_dump_json())
    res = subprocess.run([str(build / "ows_test"), daemon.endpoint, daemon.token, str(sfile),
                          transport, "24", "40", "56"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["frames_written"] == 24 and report["errors"] == []
    want = np.stack([pattern(i, 40, 56) for i in range(24)]).reshape(4, 2, 3, 40, 56)
    np.testing.assert_array_equal(read_image(settings.root_path), want)
    run_checker(settings.root_path, shape=want.shape, dtype="uint16")


def test_c_client_error_paths(build, daemon, tmp_path):
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "e.ome.zarr"), dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=100), Dimension(name="y", count=32),
                    Dimension(name="x", count=32)])
    sfile = tmp_path / "settings.json"
    sfile.write_text(settings.model_dump_json())
    proc = subprocess.Popen([str(build / "ows_errors"), daemon.endpoint, daemon.token, str(sfile)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines = []
    while (line := proc.stdout.readline()) and line.strip() != "READY":
        lines.append(line)
    assert line.strip() == "READY", "".join(lines) + proc.stderr.read()
    daemon.stop(signal.SIGKILL)
    out, err = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0, "".join(lines) + out + err
    text = "".join(lines) + out
    assert "wrong token: daemon: open refused" in text
    assert "wrong size: frame 0: 2050 bytes" in text
    assert "GONE after" in text and f"pid {daemon.pid}" in text


def test_cpp_camera_simulation(build, daemon, tmp_path):
    root = tmp_path / "cam.ome.tiff"
    res = subprocess.run([str(build / "camera_sim"), str(root), "400", "3", "2", "4", "64",
                          daemon.endpoint, daemon.token], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "24 frames in" in res.stdout and "fps (target 400.0)" in res.stdout
    want = np.stack([pattern(i, 64, 64) for i in range(24)]).reshape(3, 2, 4, 64, 64)
    np.testing.assert_array_equal(read_image(str(root)), want)
    run_checker(str(root), shape=want.shape, dtype="uint16")


def test_c_client_under_address_sanitizer(build, daemon, tmp_path):
    res = subprocess.run(["make", "-C", str(CLIENT), f"B={build}", "asan"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "a.ome.tiff"), dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=6), Dimension(name="y", count=16),
                    Dimension(name="x", count=16)])
    sfile = tmp_path / "settings.json"
    sfile.write_text(settings.model_dump_json())
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    for transport in ("shm", "inline"):
        res = subprocess.run([str(build / "ows_test_asan"), daemon.endpoint, daemon.token,
                              str(sfile), transport, "6", "16", "16"], capture_output=True,
                             text=True, timeout=120, env=env)
        assert res.returncode == 0, res.stdout + res.stderr  # leaks or invalid accesses fail
        assert "ERROR: " not in res.stderr, res.stderr
    proc = subprocess.Popen([str(build / "ows_errors_asan"), daemon.endpoint, daemon.token,
                             str(sfile)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    while (line := proc.stdout.readline()) and line.strip() != "READY":
        pass
    daemon.stop(signal.SIGKILL)
    out, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0 and "ERROR: " not in err, out + err
