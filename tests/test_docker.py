"""docker/: no Docker engine runs here, so the Dockerfile is linted (hadolint), compose.yaml is
validated against the compose specification, and the image's exact entry point and health
check are run outside Docker with the image's environment, streaming a real dataset."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ome_writers_service import AcquisitionSettings, Dimension, create_stream

from service_util import frame_pixels, read_image, run_checker

DOCKER = Path(__file__).resolve().parents[1] / "docker"
BIN = Path(sys.executable).parent


def test_dockerfile_passes_hadolint():
    res = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "warning",
                          str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_file_follows_the_compose_specification():
    res = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                          "vendor.compose-spec", str(DOCKER / "compose.yaml")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (DOCKER / "compose.yaml").read_text()
    for needed in ("shm_size:", "ipc: shareable", 'ipc: "service:writer"', "init: true",
                   "stop_grace_period:"):
        assert needed in text


def dockerfile() -> dict:
    """ENV, ENTRYPOINT, CMD and HEALTHCHECK of the image, as Docker would read them."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict = {"env": {}}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                k, v = item.split("=", 1)
                out["env"][k] = v
        elif line.startswith("ENTRYPOINT "):
            out["entrypoint"] = json.loads(line[len("ENTRYPOINT "):])
        elif line.startswith("CMD "):
            out["cmd"] = json.loads(line[4:])
        elif line.startswith("HEALTHCHECK "):
            out["healthcheck"] = json.loads(re.search(r"CMD (\[.*\])", line).group(1))
    return out


def test_entry_point_and_health_check_stream_a_real_dataset(tmp_path):
    image = dockerfile()
    env = {**os.environ, **image["env"]}
    rt = Path(env["OME_WRITERS_SERVICE_RUNTIME_DIR"])
    if rt.exists() and (rt / "daemon.json").exists():
        pytest.skip(f"a daemon already uses {rt}")
    rt.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = image["entrypoint"] + image["cmd"]
    daemon = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = [str(BIN / image["healthcheck"][0]), *image["healthcheck"][1:]]
        deadline = time.monotonic() + 30
        while subprocess.run(health, env=env, capture_output=True).returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, "never became healthy"
            time.sleep(0.2)
        settings = AcquisitionSettings(
            root_path=str(tmp_path / "docker.ome.tiff"), dtype="uint16", overwrite=True,
            dimensions=[Dimension(name="t", count=6), Dimension(name="c", count=2),
                        Dimension(name="y", count=64), Dimension(name="x", count=64)])
        old = os.environ.get("OME_WRITERS_SERVICE_RUNTIME_DIR")
        os.environ["OME_WRITERS_SERVICE_RUNTIME_DIR"] = str(rt)
        try:
            with create_stream(settings) as stream:  # the client finds the image's daemon
                for i in range(12):
                    stream.append(frame_pixels(50, i, (64, 64), np.uint16))
        finally:
            if old is None:
                del os.environ["OME_WRITERS_SERVICE_RUNTIME_DIR"]
            else:
                os.environ["OME_WRITERS_SERVICE_RUNTIME_DIR"] = old
        got = read_image(settings.root_path)
        want = np.stack([frame_pixels(50, i, (64, 64), np.uint16) for i in range(12)])
        np.testing.assert_array_equal(got, want.reshape(6, 2, 64, 64))
        run_checker(settings.root_path, shape=(6, 2, 64, 64), dtype="uint16")
        assert subprocess.run(health, env=env, capture_output=True).returncode == 0
    finally:
        daemon.send_signal(signal.SIGTERM)  # the image's STOPSIGNAL
        out, _ = daemon.communicate(timeout=60)
        shutil.rmtree(rt, ignore_errors=True)
    assert daemon.returncode == 0, out
    assert subprocess.run(health, env=env, capture_output=True).returncode != 0


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare to give the daemon a small /dev/shm")
def test_small_dev_shm_is_reported_naming_shm_size(tmp_path):
    rt = tmp_path / "rt"
    script = (f"mount -t tmpfs -o size=16m tmpfs /dev/shm && exec {shlex.quote(sys.executable)}"
              f" -m ome_writers_service serve --runtime-dir {shlex.quote(str(rt))}")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not (rt / "daemon.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert "shm_size" in out and "/dev/shm has only 16 MiB free" in out, out
