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
    pixels: str = "random"  # or "smooth": a smooth image with Poisson noise (compressible)

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
        Workload("C", "compressible 2048x2048", {"t": n(100), "y": 2048, "x": 2048}, {},
                 pixels="smooth"),
    ]


def frame_pool(wl: Workload, k: int = 8) -> list[np.ndarray]:
    """``k`` distinct frames, reused round-robin. "smooth": a few broad Gaussian blobs on a
    background (a sample under a microscope) with Poisson noise, as a camera records it."""
    rng = np.random.default_rng(0)
    if wl.pixels == "random":
        return [rng.integers(0, 4096, wl.frame_shape, dtype=np.uint16) for _ in range(k)]
    h, w = wl.frame_shape
    y, x = np.ogrid[:h, :w]
    mean = np.full((h, w), 100.0)
    for cy, cx, s, a in ((0.3, 0.4, 0.15, 1500), (0.7, 0.6, 0.1, 2500), (0.5, 0.2, 0.2, 800)):
        mean += a * np.exp(-(((y / h - cy) ** 2) + ((x / w - cx) ** 2)) / (2 * s * s))
    return [rng.poisson(mean).astype(np.uint16) for _ in range(k)]


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
    stream: Any = None  #: the service stream, for `probes.ClientProbe`


# ---- writers ----

def open_service(wl: Workload, root: Path, fmt: str, endpoint: str, token: str,
                 mode: str = "append", levels: int = 1, compression: str | None = None,
                 compression_level: int | None = None) -> Session:
    import ome_writers_service as ows

    kind = ows.OmeTiffFormat if fmt == "tiff" else ows.OmeZarrFormat
    settings = ows.AcquisitionSettings(root_path=str(root), dimensions=dims(wl, ows),
                                       dtype="uint16", overwrite=True, compression=compression,
                                       compression_level=compression_level,
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
        out = {"dropped": report["frames_dropped"], "written": report["frames_written"],
               "timings": report.get("timings", {})}
        if claim_ns:
            out["claim_ns"] = np.array(claim_ns)
        return out

    paths = stream.paths if fmt == "tiff" else [str(root)]
    return Session(append, close, paths, backlog=lambda: stream.lag, stream=stream)


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


def open_tensorstore(wl: Workload, root: Path, fmt: str, in_flight: int = 8) -> Session:
    """tensorstore alone, what the service's zarr path is built on: a zarr v3 array of one
    chunk per frame, each frame written as it comes (zero-copy: the pool's frames do not
    change), ``in_flight`` writes outstanding, no fsync per file. The floor of our zarr path's
    cost; no metadata beyond the array's."""
    import collections

    import tensorstore as ts

    shape = [wl.n_frames, *wl.frame_shape]
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(root)},
            "metadata": {"shape": shape, "data_type": "uint16",
                         "chunk_grid": {"name": "regular",
                                        "configuration": {"chunk_shape": [1, *wl.frame_shape]}},
                         "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]},
            "create": True, "delete_existing": True}
    arr = ts.open(spec, context=ts.Context({"file_io_sync": False})).result()
    pending: collections.deque = collections.deque()
    n = [0]

    def append(frame):
        pending.append(arr[n[0]].write(frame, can_reference_source_data_indefinitely=True))
        n[0] += 1
        if len(pending) >= in_flight:
            pending.popleft().result()

    def close() -> dict:
        while pending:
            pending.popleft().result()
        return {}
    return Session(append, close, [str(root)])


def open_acquire_zarr(wl: Workload, root: Path, fmt: str, compression: str = "none",
                      level: int = 1) -> Session:
    """acquire-zarr 0.10's own API (not through ome-writers): one chunk per frame, the given
    blosc codec and level with byte shuffle, its default thread count (all cores)."""
    import acquire_zarr as az

    codec = {"blosc-zstd": az.CompressionCodec.BLOSC_ZSTD,
             "blosc-lz4": az.CompressionCodec.BLOSC_LZ4}.get(compression)
    comp = None if codec is None else az.CompressionSettings(
        compressor=az.Compressor.BLOSC1, codec=codec, level=level, shuffle=1)
    kinds = {"t": az.DimensionType.TIME, "c": az.DimensionType.CHANNEL,
             "z": az.DimensionType.SPACE, "y": az.DimensionType.SPACE,
             "x": az.DimensionType.SPACE}
    dims_ = [az.Dimension(name=k, kind=kinds.get(k, az.DimensionType.OTHER),
                          array_size_px=v if i else 0,
                          chunk_size_px=v if k in ("y", "x") else 1, shard_size_chunks=1)
             for i, (k, v) in enumerate(wl.sizes.items())]
    settings = az.StreamSettings(
        store_path=str(root), overwrite=True,
        arrays=[az.ArraySettings(dimensions=dims_, data_type=np.uint16, compression=comp)])
    stream = az.ZarrStream(settings)

    def close() -> dict:
        stream.close()
        return {}
    return Session(stream.append, close, [str(root)])


def open_memcpy(wl: Workload, root: Path, fmt: str) -> Session:
    """The camera-loop baseline: the same producer doing only what append() cannot avoid, a
    copy of each frame into a ring-sized footprint of warm memory."""
    slots = ring_slots(wl)
    dst = [np.zeros(wl.frame_shape, np.uint16) for _ in range(slots)]
    n = [0]

    def append(frame):
        np.copyto(dst[n[0] % slots], frame)
        n[0] += 1
    return Session(append, lambda: {}, [])


OPENERS = {"service": open_service, "inprocess": open_inprocess,
           "ome_writers": open_ome_writers, "raw": open_raw, "tensorstore": open_tensorstore,
           "acquire_zarr": open_acquire_zarr, "memcpy": open_memcpy}


# ---- measurement ----

def fault_in(nbytes: int) -> None:
    """These VMs hand idle RAM back to their host and the first write into such RAM is ~10x
    slower. Touch ``nbytes`` of fresh memory and free it right before the clock starts, so
    the page cache the writer fills next is backed, for every writer alike."""
    buf = np.empty(nbytes, np.uint8)
    buf[:: os.sysconf("SC_PAGE_SIZE")] = 1
    del buf


def timed_loop(append: Callable, frames: list[np.ndarray], n: int):
    """Burst: each frame as soon as the previous call returns. Returns (call latency, when
    each call started), in ns."""
    lat = np.empty(n, np.int64)
    starts = np.empty(n, np.int64)
    clock = time.perf_counter_ns
    k = len(frames)
    for i in range(n):
        t0 = starts[i] = clock()
        append(frames[i % k])
        lat[i] = clock() - t0
    return lat, starts


def paced_loop(append: Callable, frames, n: int, rate_hz: float):
    """Camera simulation: frame i is due at t0 + i/rate. The producer sleeps until shortly
    before the due time (as a camera SDK blocks waiting for its next frame: it does not hold
    a core the writer needs), spins the last 60 µs, then calls append(). Returns (call
    latency, lateness of each call, when each call started), in ns."""
    period = 1e9 / rate_hz
    lat = np.empty(n, np.int64)
    late = np.empty(n, np.int64)
    starts = np.empty(n, np.int64)
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
        starts[i] = now
        append(frames[i % k])
        lat[i] = clock() - now
    return lat, late, starts


#: Bytes of frames the service's ring holds by default (daemon.RING_BYTES)
RING_BYTES = 256 * 2**20


def ring_slots(wl: Workload) -> int:
    """The slots of the service's default ring for this workload's frames."""
    return max(8, min(4096, RING_BYTES // (wl.frame_shape[0] * wl.frame_shape[1] * 2)))


def memcpy(wl: Workload, frames, rate_hz: float | None = None) -> np.ndarray:
    """A bare copy of each frame into warm memory: the floor for append(), which does this
    copy and little else. Like append(), it cycles through as many destinations as the ring
    has slots (a destination warm in the cache flatters it by ~1.5x for 8 MB frames), and in
    a camera simulation it runs at the camera's pace (a core that sleeps between frames
    copies slower than one copying back to back)."""
    slots = ring_slots(wl)
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
