"""Helpers for tests that run a real writer daemon process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorstore as ts
import tifffile

REPO = Path(__file__).resolve().parents[1]
CHECKER = REPO.parent / "shared" / "conformance" / "omecheck.py"
CLIENT_SCRIPT = Path(__file__).with_name("stream_client.py")


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    rt: Path
    endpoint: str
    token: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_daemon(rt: Path, *extra: str) -> DaemonProcess:
    rt.mkdir(parents=True, exist_ok=True)
    log = rt / "test-daemon.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ome_writers_service", "serve", "--runtime-dir", str(rt), *extra],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            info = json.loads((rt / "daemon.json").read_text())
            if info["pid"] == proc.pid:
                return DaemonProcess(proc, rt, info["endpoint"], info["token"], log)
        except (OSError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("daemon did not start:\n" + log.read_text(errors="replace"))


def frame_pixels(seed: int, i: int, shape, dtype) -> np.ndarray:
    rng = np.random.default_rng([seed, i])
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def expected_images(settings, seed: int, frames: int | None = None,
                    missing: set[int] = frozenset()) -> list[np.ndarray]:
    """Each position's array in storage order, as frame_pixels() frames routed by hand."""
    outer = list(settings.dimensions[:-2])
    sizes = [d.count for d in outer]
    names = [d.name for d in outer]
    pos_axis = next((i for i, d in enumerate(outer) if d.type == "position"), None)
    if frames is not None and pos_axis != 0:
        # an unbounded or ended-early acquisition stores only the steps of its slowest axis
        # that frames reached
        steps = -(-frames // int(np.prod(sizes[1:], dtype=int)))
        sizes[0] = steps if sizes[0] is None else min(sizes[0], steps)
    storage = [d.name for d in settings.storage_dimensions[:-2]]
    perm = [names.index(n) for n in storage]
    npos = sizes[pos_axis] if pos_axis is not None else 1
    shape = [sizes[p] for p in perm]
    out = [np.zeros((*shape, *settings.frame_shape), settings.dtype) for _ in range(npos)]
    for n, acq in enumerate(np.ndindex(*sizes)):
        if frames is not None and n >= frames:
            break
        if n in missing:
            continue
        pos = acq[pos_axis] if pos_axis is not None else 0
        out[pos][tuple(acq[p] for p in perm)] = frame_pixels(seed, n, settings.frame_shape,
                                                             settings.dtype)
    return out


def read_image(path: str) -> np.ndarray:
    """Pixels of one written image, with readers this project did not write."""
    if path.lower().endswith((".tif", ".tiff")):
        with tifffile.TiffFile(path) as tf:
            return tf.series[0].asarray()
    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path + "/0"}},
                   open=True).result().read().result()


def run_checker(path: str, shape=None, dtype=None) -> str:
    """The independent conformance checker; returns its output, asserts it passed."""
    if not CHECKER.is_file():
        return "checker not available"
    cmd = [sys.executable, str(CHECKER), path]
    if shape is not None:
        cmd += ["--shape", ",".join(map(str, shape))]
    if dtype is not None:
        cmd += ["--dtype", dtype]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"omecheck failed on {path}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def shm_rings() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("ows-*")}


def ensure_debian_packages(packages: list[str], present: bool) -> None:
    """Install Debian packages a test needs (as root, with apt-get) unless ``present``;
    skip the test, saying why, where that cannot be done."""
    if present:
        return
    import shutil

    import pytest

    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{', '.join(packages)} missing and cannot be installed here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env,
                   capture_output=True)
