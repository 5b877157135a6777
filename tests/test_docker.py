"""docker/: no Docker engine runs here, so the Dockerfile is linted (hadolint) and checked,
compose.yaml is validated against the compose specification, and the image's exact entry point
and health check — and the compose example's acquisition command — are run outside Docker with
the image's environment, streaming real datasets."""

from __future__ import annotations

import contextlib
import fnmatch
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
import yaml

from ome_writers_service import AcquisitionSettings, Dimension, create_stream
from ome_writers_service.client import ServiceError

from service_util import (IS_ROOT, WINDOWS, daemon_with_small_shm, frame_pixels, read_image,
                          run_checker)

pytestmark = pytest.mark.skipif(WINDOWS, reason="the Linux container image (docker, compose, "
                                "hadolint, a Linux /dev/shm): not a Windows deployment")

DOCKER = Path(__file__).resolve().parents[1] / "docker"
REPO = DOCKER.parent
BIN = Path(sys.executable).parent
IMAGE_RT = "/run/ome-writers-service"  # the image's runtime directory


def test_dockerfile_passes_hadolint():
    res = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "warning",
                          str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def dockerfile() -> dict:
    """FROM, ENV, COPY, USER, WORKDIR, ENTRYPOINT, CMD and HEALTHCHECK, as Docker reads them."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict = {"env": {}, "copy": [], "user": []}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            out["from"] = line.split()[1]
        elif line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                k, v = item.split("=", 1)
                out["env"][k] = v
        elif line.startswith("COPY "):
            out["copy"] += line.split()[1:-1]
        elif line.startswith("USER "):
            out["user"].append(line.split()[1])
        elif line.startswith("WORKDIR "):
            out["workdir"] = line.split()[1]
        elif line.startswith("ENTRYPOINT "):
            out["entrypoint"] = json.loads(line[len("ENTRYPOINT "):])
        elif line.startswith("CMD "):
            out["cmd"] = json.loads(line[4:])
        elif line.startswith("HEALTHCHECK "):
            out["healthcheck"] = json.loads(re.search(r"CMD (\[.*\])", line).group(1))
    return out


def test_dockerfile_makes_a_small_non_root_image_of_this_repository():
    image = dockerfile()
    assert re.fullmatch(r"python:3\.1\d+-slim(-\w+)?", image["from"]), image["from"]
    uid = image["user"][-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, image["user"]  # numeric: runAsNonRoot can check it
    assert image["entrypoint"] == ["ome-writers-service", "serve"]
    assert image["healthcheck"] == ["ome-writers-service", "status"]
    assert image["workdir"] == "/data" and image["env"]["OME_WRITERS_SERVICE_RUNTIME_DIR"] == IMAGE_RT
    # the package is installed from the repository: every COPY source exists and passes
    # docker/Dockerfile.dockerignore; everything else (.venv, .git, datasets) stays out
    patterns = [p for p in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        verdict = False
        for p in patterns:
            neg = p.startswith("!")
            pat = p[1:] if neg else p
            if fnmatch.fnmatch(path, pat.rstrip("/")) or fnmatch.fnmatch(path, pat.rstrip("/") + "/*"):
                verdict = not neg
        return verdict

    assert set(image["copy"]) >= {"pyproject.toml", "README.md", "ome_writers_service"}
    for src in image["copy"]:
        assert (REPO / src).exists() and not ignored(src), src
    assert ignored(".venv") and ignored(".git") and ignored("tests")


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_file_follows_the_compose_specification():
    res = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                          "vendor.compose-spec", str(DOCKER / "compose.yaml")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    services = compose()["services"]
    writer, acq = services["writer"], services["acquisition"]
    assert writer["ipc"] == "shareable" and writer["init"] is True
    assert writer["shm_size"] and writer["stop_grace_period"]
    assert acq["ipc"] == "service:writer" and acq["depends_on"]["writer"]["condition"] == \
        "service_healthy"
    # the acquisition sees the daemon's socket + token and datasets where the daemon does
    assert acq["environment"] == writer["environment"]
    assert set(acq["volumes"]) == set(writer["volumes"])
    assert any(v.endswith(":" + IMAGE_RT) for v in writer["volumes"])  # reachable from the host


# ---- the image's processes, outside Docker

@contextlib.contextmanager
def image_daemon(tmp_path: Path):
    """The daemon as the image starts it: its ENTRYPOINT + CMD with its ENV. Yields (env,
    health-check argv, path map). The runtime directory is the image's own path when it is
    free here; else (not root, or in use) the same layout under tmp_path, substituted in the
    arguments and environment alike."""
    image = dockerfile()
    argv = image["entrypoint"] + image["cmd"]
    env = {**os.environ, **image["env"]}
    rt = Path(IMAGE_RT)
    try:
        free = not (rt / "daemon.json").exists()
        if free:
            rt.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        free = False
    if not free:
        rt = tmp_path / "run" / "ome-writers-service"
        rt.mkdir(mode=0o700, parents=True)
        argv = [a.replace(IMAGE_RT, str(rt)) for a in argv]
        env = {k: v.replace(IMAGE_RT, str(rt)) for k, v in env.items()}
    health = [str(BIN / image["healthcheck"][0]), *image["healthcheck"][1:]]
    try:
        daemon = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            while subprocess.run(health, env=env, capture_output=True).returncode != 0:
                assert daemon.poll() is None and time.monotonic() < deadline, "never healthy"
                time.sleep(0.2)
            yield env, health
            assert subprocess.run(health, env=env, capture_output=True).returncode == 0
        finally:
            daemon.send_signal(signal.SIGTERM)  # the image's STOPSIGNAL
            out, _ = daemon.communicate(timeout=60)
        assert daemon.returncode == 0, out
        assert subprocess.run(health, env=env, capture_output=True).returncode != 0
    finally:
        if free:  # last: the health check (runtime_dir()) re-creates the directory
            shutil.rmtree(rt, ignore_errors=True)


def test_entry_point_and_health_check_stream_a_real_dataset(tmp_path, monkeypatch):
    with image_daemon(tmp_path) as (env, _):
        settings = AcquisitionSettings(
            root_path=str(tmp_path / "docker.ome.tiff"), dtype="uint16", overwrite=True,
            dimensions=[Dimension(name="t", count=6), Dimension(name="c", count=2),
                        Dimension(name="y", count=64), Dimension(name="x", count=64)])
        monkeypatch.setenv("OME_WRITERS_SERVICE_RUNTIME_DIR", env["OME_WRITERS_SERVICE_RUNTIME_DIR"])
        with create_stream(settings) as stream:  # the client finds the image's daemon
            for i in range(12):
                stream.append(frame_pixels(50, i, (64, 64), np.uint16))
    got = read_image(settings.root_path)
    want = np.stack([frame_pixels(50, i, (64, 64), np.uint16) for i in range(12)])
    np.testing.assert_array_equal(got, want.reshape(6, 2, 64, 64))
    run_checker(settings.root_path, shape=(6, 2, 64, 64), dtype="uint16")


def test_compose_acquisition_command_streams_to_the_image_daemon(tmp_path):
    """The compose example's `acquisition` command, with its environment, against the daemon
    the image starts (same pid namespace, as `pid: "service:writer"` gives it); /data is
    tmp_path/data here. Its demo validates both datasets itself."""
    acq = compose()["services"]["acquisition"]
    data = tmp_path / "data"
    data.mkdir()
    with image_daemon(tmp_path) as (env, _):
        argv = [a.replace("/data", str(data)) for a in acq["entrypoint"]]
        acq_env = {**env, **{k: str(v) for k, v in acq["environment"].items()}}
        acq_env["OME_WRITERS_SERVICE_RUNTIME_DIR"] = env["OME_WRITERS_SERVICE_RUNTIME_DIR"]
        res = subprocess.run([str(BIN / argv[0]), *argv[1:]], env=acq_env, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "demo: all datasets written and valid" in res.stdout, res.stdout


@pytest.mark.skipif(not IS_ROOT or not shutil.which("unshare"),
                    reason="needs root and unshare to give the daemon a small /dev/shm")
def test_small_dev_shm_is_reported_naming_shm_size(tmp_path):
    """At start-up (a warning) and when a stream's ring does not fit (error `resources`)."""
    with daemon_with_small_shm(tmp_path / "rt") as d:
        settings = AcquisitionSettings(
            root_path=str(tmp_path / "big.ome.zarr"), dtype="uint16", overwrite=True,
            ring_slots=16,  # 16 x 2 MiB: more than the 16 MiB of /dev/shm
            dimensions=[Dimension(name="t", count=4), Dimension(name="y", count=1024),
                        Dimension(name="x", count=1024)])
        with pytest.raises(ServiceError) as refused:
            create_stream(settings, endpoint=d.endpoint, token=d.token)
        assert refused.value.code == "resources" and "shm_size" in str(refused.value)
    assert "shm_size" in d.log and "/dev/shm has only 16 MiB free" in d.log, d.log
