"""The benchmark workloads and the writers compared on them.

Each writer is a function ``(workload, root, frames, probe) -> dict`` run in a fresh child
process, so its peak RSS is its own. ``frames`` is a small pool of distinct frames reused
round-robin (generating pixels is not what we measure); ``probe`` times each call.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    sizes: dict  # acquisition order, frame axes last
    chunks: dict  # non-frame axes with chunk > 1

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.sizes["y"], self.sizes["x"])

    @property
    def n_frames(self) -> int:
        return math.prod(v for k, v in self.sizes.items() if k not in ("y", "x"))

    @property
    def nbytes(self) -> int:
        return self.n_frames * self.frame_shape[0] * self.frame_shape[1] * 2


def workloads(scale: float = 1.0) -> list[Workload]:
    """W1-W3 of the benchmark issue; ``scale`` shrinks the frame counts (not frame sizes)."""
    def n(v: int) -> int:
        return max(2, int(round(v * scale)))

    return [
        Workload("W1", "sCMOS burst 2048x2048", {"t": n(100), "c": 2, "y": 2048, "x": 2048}, {}),
        Workload("W2", "small fast frames 256x256",
                 {"t": max(64, n(20000)), "y": 256, "x": 256}, {"t": 64}),
        Workload("W3", "5D 1024x1024", {"t": n(10), "c": 2, "z": 20, "y": 1024, "x": 1024}, {}),
    ]


def dims(wl: Workload, module):
    """Dimension list for ome_writers or ome_writers_service (same API)."""
    out = []
    for name, size in wl.sizes.items():
        chunk = wl.chunks.get(name, size if name in ("y", "x") else 1)
        out.append(module.Dimension(name=name, count=size, chunk_size=min(chunk, size)))
    return out


def _timed_loop(append: Callable, frames: list[np.ndarray], n: int) -> np.ndarray:
    lat = np.empty(n, np.int64)
    clock = time.perf_counter_ns
    k = len(frames)
    for i in range(n):
        t0 = clock()
        append(frames[i % k])
        lat[i] = clock() - t0
    return lat


# ---- writers ----

def service(wl: Workload, root: Path, frames, fmt: str, endpoint: str, token: str,
            mode: str = "append", rate_hz: float | None = None) -> dict:
    import ome_writers_service as ows

    settings = ows.AcquisitionSettings(root_path=str(root), dimensions=dims(wl, ows),
                                       dtype="uint16", overwrite=True)
    stream = ows.create_stream(settings, endpoint=endpoint, token=token)
    if mode == "claim":
        def append(f):
            with stream.claim() as slot:
                slot[...] = f
    else:
        append = stream.append
    t0 = time.perf_counter()
    if rate_hz:
        lat, late = _paced_loop(append, frames, wl.n_frames, rate_hz)
    else:
        lat, late = _timed_loop(append, frames, wl.n_frames), None
    loop = time.perf_counter() - t0
    backlog = stream.lag
    report = stream.close()
    closed = time.perf_counter() - t0
    out = {"latency_ns": lat, "loop_s": loop, "close_s": closed, "backlog": backlog,
           "dropped": report["frames_dropped"], "written": report["frames_written"],
           "paths": report["paths"] if fmt == "tiff" else [str(root)]}
    if late is not None:
        out["lateness_ns"] = late
    return out


def inprocess(wl: Workload, root: Path, frames, fmt: str) -> dict:
    import ome_writers_service as ows

    settings = ows.AcquisitionSettings(root_path=str(root), dimensions=dims(wl, ows),
                                       dtype="uint16", overwrite=True)
    t0 = time.perf_counter()
    stream = ows.create_stream(settings, in_process=True)
    lat = _timed_loop(stream.append, frames, wl.n_frames)
    loop = time.perf_counter() - t0
    paths = stream.paths if fmt == "tiff" else [str(root)]
    stream.close()
    return {"latency_ns": lat, "loop_s": loop, "close_s": time.perf_counter() - t0,
            "paths": paths, "written": wl.n_frames}


def ome_writers(wl: Workload, root: Path, frames, fmt: str, backend: str) -> dict:
    import ome_writers as ow

    f = ow.OmeTiffFormat(backend=backend) if fmt == "tiff" else ow.OmeZarrFormat(backend=backend)
    settings = ow.AcquisitionSettings(root_path=str(root), dimensions=dims(wl, ow),
                                      dtype="uint16", overwrite=True, format=f)
    t0 = time.perf_counter()
    stream = ow.create_stream(settings)
    lat = _timed_loop(stream.append, frames, wl.n_frames)
    loop = time.perf_counter() - t0
    stream.close()
    return {"latency_ns": lat, "loop_s": loop, "close_s": time.perf_counter() - t0,
            "paths": _files_under(root), "written": wl.n_frames}


def raw(wl: Workload, root: Path, frames, fmt: str) -> dict:
    """The physical limit: the same bytes, one sequential file, plain writes."""
    t0 = time.perf_counter()
    with open(root, "wb", buffering=0) as f:
        lat = _timed_loop(f.write, frames, wl.n_frames)
    loop = time.perf_counter() - t0
    return {"latency_ns": lat, "loop_s": loop, "close_s": time.perf_counter() - t0,
            "paths": [str(root)], "written": wl.n_frames}


def memcpy(wl: Workload, frames) -> np.ndarray:
    """A bare copy of each frame into a warm buffer: the floor for append()."""
    dst = [np.empty_like(frames[0]) for _ in range(4)]
    for d in dst:
        np.copyto(d, frames[0])
    lat = np.empty(min(wl.n_frames, 5000), np.int64)
    clock = time.perf_counter_ns
    for i in range(len(lat)):
        t0 = clock()
        np.copyto(dst[i % 4], frames[i % len(frames)])
        lat[i] = clock() - t0
    return lat


def _paced_loop(append: Callable, frames, n: int, rate_hz: float):
    """Camera simulation: frame i is due at t0 + i/rate; measure how late each append starts
    and how long it takes."""
    period = 1e9 / rate_hz
    lat = np.empty(n, np.int64)
    late = np.empty(n, np.int64)
    clock = time.perf_counter_ns
    k = len(frames)
    start = clock()
    for i in range(n):
        due = start + int(i * period)
        now = clock()
        while now < due:  # busy-wait like a camera SDK callback would be scheduled
            now = clock()
        late[i] = now - due
        append(frames[i % k])
        lat[i] = clock() - now
    return lat, late


def _files_under(root: Path) -> list[str]:
    if root.is_file():
        return [str(root)]
    parent = root.parent
    stem = root.name.split(".")[0]
    return [str(p) for p in parent.iterdir() if p.name.startswith(stem)]


def fsync_tree(paths: list[str]) -> None:
    """Make the dataset durable: fsync every file and directory under the given paths."""
    for p in paths:
        p = Path(p)
        items = [p] if p.is_file() else [*p.rglob("*"), p]
        for item in items:
            fd = os.open(item, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
