"""The benchmark workloads and the writers compared on them.

Every writer is opened the same way: ``open_<kind>(workload, root, fmt, ...)`` returns a
`Session` whose ``append(frame)`` is what the camera loop calls and whose ``close()`` returns
when the dataset is complete. Opening (creating the dataset, mapping the ring) is set-up,
done before the clock starts, for every writer alike. ``frames`` is a small pool of distinct
frames reused round-robin: generating pixels is not what we measure.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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


@dataclass
class Session:
    """An open writer: ``append`` per frame, ``close()`` -> extra metrics once all is written."""

    append: Callable[[np.ndarray], Any]
    close: Callable[[], dict]
    paths: list[str]
    backlog: Callable[[], int] = field(default=lambda: 0)


# ---- writers ----

def open_service(wl: Workload, root: Path, fmt: str, endpoint: str, token: str,
                 mode: str = "append", levels: int = 1) -> Session:
    import ome_writers_service as ows

    kind = ows.OmeTiffFormat if fmt == "tiff" else ows.OmeZarrFormat
    settings = ows.AcquisitionSettings(root_path=str(root), dimensions=dims(wl, ows),
                                       dtype="uint16", overwrite=True,
                                       format=kind(levels=levels))
    stream = ows.create_stream(settings, endpoint=endpoint, token=token)
    claim_ns: list[int] = []  # claim() itself: getting the slot + sending it, not the fill
    if mode == "claim":
        clock = time.perf_counter_ns
        record = claim_ns.append

        def append(f):
            t0 = clock()
            with stream.claim() as slot:
                t1 = clock()
                slot[...] = f  # the camera filling the slot
                t2 = clock()
            record(t1 - t0 + clock() - t2)
    else:
        append = stream.append

    def close() -> dict:
        report = stream.close()
        out = {"dropped": report["frames_dropped"], "written": report["frames_written"]}
        if claim_ns:
            out["claim_ns"] = np.array(claim_ns)
        return out

    paths = stream.paths if fmt == "tiff" else [str(root)]
    return Session(append, close, paths, backlog=lambda: stream.lag)


def open_inprocess(wl: Workload, root: Path, fmt: str) -> Session:
    import ome_writers_service as ows

    settings = ows.AcquisitionSettings(root_path=str(root), dimensions=dims(wl, ows),
                                       dtype="uint16", overwrite=True)
    stream = ows.create_stream(settings, in_process=True)
    paths = stream.paths if fmt == "tiff" else [str(root)]
    return Session(stream.append, lambda: (stream.close(), {})[1], paths)


def open_ome_writers(wl: Workload, root: Path, fmt: str, backend: str) -> Session:
    import ome_writers as ow

    f = ow.OmeTiffFormat(backend=backend) if fmt == "tiff" else ow.OmeZarrFormat(backend=backend)
    settings = ow.AcquisitionSettings(root_path=str(root), dimensions=dims(wl, ow),
                                      dtype="uint16", overwrite=True, format=f)
    stream = ow.create_stream(settings)
    return Session(stream.append, lambda: (stream.close(), {})[1], [str(root)])


def open_raw(wl: Workload, root: Path, fmt: str) -> Session:
    """The physical limit: the same bytes, one sequential file, plain unbuffered writes."""
    f = open(root, "wb", buffering=0)
    return Session(f.write, lambda: (f.close(), {})[1], [str(root)])


OPENERS = {"service": open_service, "inprocess": open_inprocess,
           "ome_writers": open_ome_writers, "raw": open_raw}


# ---- measurement ----

def fault_in(nbytes: int) -> None:
    """These VMs hand idle RAM back to their host and the first write into such RAM is ~10x
    slower. Touch ``nbytes`` of fresh memory and free it right before the clock starts, so
    the page cache the writer fills next is backed, for every writer alike."""
    buf = np.empty(nbytes, np.uint8)
    buf[:: os.sysconf("SC_PAGE_SIZE")] = 1
    del buf


def timed_loop(append: Callable, frames: list[np.ndarray], n: int) -> np.ndarray:
    """Burst: each frame as soon as the previous call returns; per-call latency in ns."""
    lat = np.empty(n, np.int64)
    clock = time.perf_counter_ns
    k = len(frames)
    for i in range(n):
        t0 = clock()
        append(frames[i % k])
        lat[i] = clock() - t0
    return lat


def paced_loop(append: Callable, frames, n: int, rate_hz: float):
    """Camera simulation: frame i is due at t0 + i/rate. The producer sleeps until shortly
    before the due time (as a camera SDK blocks waiting for its next frame: it does not hold
    a core the writer needs), spins the last 60 µs, then calls append(). Returns (call
    latency, lateness of each call), in ns."""
    period = 1e9 / rate_hz
    lat = np.empty(n, np.int64)
    late = np.empty(n, np.int64)
    clock = time.perf_counter_ns
    sleep = time.sleep
    k = len(frames)
    start = clock()
    for i in range(n):
        due = start + int(i * period)
        now = clock()
        if due - now > 120_000:  # the kernel wakes us up to ~60 µs late
            sleep((due - now - 60_000) / 1e9)
            now = clock()
        while now < due:
            now = clock()
        late[i] = now - due
        append(frames[i % k])
        lat[i] = clock() - now
    return lat, late


#: Bytes of frames the service's ring holds by default (daemon.RING_BYTES)
RING_BYTES = 256 * 2**20


def memcpy(wl: Workload, frames, rate_hz: float | None = None) -> np.ndarray:
    """A bare copy of each frame into warm memory: the floor for append(), which does this
    copy and little else. Like append(), it cycles through as many destinations as the ring
    has slots (a destination warm in the cache flatters it by ~1.5x for 8 MB frames), and in
    a camera simulation it runs at the camera's pace (a core that sleeps between frames
    copies slower than one copying back to back)."""
    slots = max(8, min(4096, RING_BYTES // (wl.frame_shape[0] * wl.frame_shape[1] * 2)))
    dst = [np.empty_like(frames[0]) for _ in range(slots)]
    for d in dst:
        np.copyto(d, frames[0])
    lat = np.empty(min(wl.n_frames, 5000), np.int64)
    clock = time.perf_counter_ns
    step = None if rate_hz is None else 1e9 / rate_hz
    start = clock()
    for i in range(len(lat)):
        if step is not None:
            due = start + int(i * step)
            now = clock()
            if due - now > 120_000:
                time.sleep((due - now - 60_000) / 1e9)
            while clock() < due:
                pass
        t0 = clock()
        np.copyto(dst[i % slots], frames[i % len(frames)])
        lat[i] = clock() - t0
    return lat


def fsync_tree(paths: list[str]) -> None:
    """Make the dataset durable: fsync every file and directory under the given paths."""
    for p in paths:
        p = Path(p)
        if not p.exists():
            continue
        items = [p] if p.is_file() else [*p.rglob("*"), p]
        for item in items:
            fd = os.open(item, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
