"""Camera-side latency and end-to-end throughput of the service, against a bare memcpy.

    python benchmarks/service_latency.py [--frames-large 200] [--frames-small 20000] [--out DIR]

For 2048x2048 and 256x256 uint16 frames and both formats: `append()` and `claim()` latency
(p50/p99/max, microseconds), the same frame copied with a bare `np.copyto` into a warm
buffer in the same run (the floor), and frames/s and MB/s from the first append through
`close()` (every frame on disk, metadata final). Memory is faulted in before anything is
timed: the ring is prefaulted by the client, the memcpy destination by a first copy.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ome_writers_service import AcquisitionSettings, Dimension, create_stream


def percentiles(samples_ns: np.ndarray) -> dict[str, float]:
    us = samples_ns / 1e3
    return {"p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99)),
            "max": float(us.max())}


def bare_memcpy(frame: np.ndarray, n: int) -> np.ndarray:
    dst = [np.empty_like(frame) for _ in range(8)]
    for d in dst:  # fault the destination in
        np.copyto(d, frame)
    out = np.empty(n, np.int64)
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        np.copyto(dst[i % 8], frame)
        out[i] = clock() - t0
    return out


def run_stream(root: Path, shape, frames: int, endpoint: str, token: str, mode: str,
               chunk_t: int) -> dict:
    settings = AcquisitionSettings(
        root_path=str(root), dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=frames, chunk_size=chunk_t),
                    Dimension(name="y", count=shape[0]), Dimension(name="x", count=shape[1])],
    )
    frame = np.random.default_rng(0).integers(0, 4000, shape, dtype=np.uint16)
    lat = np.empty(frames, np.int64)
    clock = time.perf_counter_ns
    t_start = time.perf_counter()
    stream = create_stream(settings, endpoint=endpoint, token=token)
    t0 = time.perf_counter()
    if mode == "append":
        for i in range(frames):
            a = clock()
            stream.append(frame)
            lat[i] = clock() - a
    else:
        for i in range(frames):
            a = clock()
            with stream.claim() as slot:
                slot[...] = frame
            lat[i] = clock() - a
    t_loop = time.perf_counter() - t0
    backlog = stream.lag
    report = stream.close()
    t_total = time.perf_counter() - t0
    assert report["frames_written"] == frames, report
    nbytes = frames * frame.nbytes
    return {"latency_us": percentiles(lat), "fps": frames / t_total, "MBps": nbytes / t_total / 1e6,
            "loop_s": t_loop, "backlog_at_end": backlog, "open_s": t0 - t_start,
            "dropped": report["frames_dropped"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames-large", type=int, default=200, help="2048x2048 frames per run")
    ap.add_argument("--frames-small", type=int, default=20000, help="256x256 frames per run")
    ap.add_argument("--out", default=None, help="directory for the datasets (default: a temp dir)")
    a = ap.parse_args()

    work = Path(a.out or tempfile.mkdtemp(prefix="ows-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rt = Path(tempfile.mkdtemp(prefix="ows-bench-rt-"))
    daemon = subprocess.Popen([sys.executable, "-m", "ome_writers_service", "serve",
                               "--runtime-dir", str(rt)], stderr=subprocess.DEVNULL)
    try:
        from ome_writers_service.client import local_daemon

        info = local_daemon(rt, start=False) if _wait(rt) else None
        assert info is not None, "daemon did not start"
        rows = []
        for label, shape, frames, chunk_t in (("2048x2048", (2048, 2048), a.frames_large, 1),
                                              ("256x256", (256, 256), a.frames_small, 64)):
            frame = np.ones(shape, np.uint16)
            mc = percentiles(bare_memcpy(frame, min(frames, 2000)))
            for fmt in (".ome.tiff", ".ome.zarr"):
                for mode in ("append", "claim"):
                    r = run_stream(work / f"{label}-{mode}{fmt}", shape, frames, info.endpoint,
                                   info.token, mode, chunk_t if fmt == ".ome.zarr" else 1)
                    rows.append((label, fmt, mode, mc, r))
                    shutil.rmtree(work / f"{label}-{mode}{fmt}", ignore_errors=True)
                    (work / f"{label}-{mode}{fmt}").unlink(missing_ok=True)
        print(f"{'frame':10} {'format':10} {'call':7} {'memcpy p50/p99 us':>18} "
              f"{'call p50/p99/max us':>24} {'p99 ratio':>9} {'frames/s':>9} {'MB/s':>7} "
              f"{'backlog':>7}")
        for label, fmt, mode, mc, r in rows:
            lat = r["latency_us"]
            print(f"{label:10} {fmt:10} {mode:7} {mc['p50']:8.1f}/{mc['p99']:<9.1f} "
                  f"{lat['p50']:7.1f}/{lat['p99']:7.1f}/{lat['max']:8.1f} "
                  f"{lat['p99'] / mc['p99']:9.2f} {r['fps']:9.0f} {r['MBps']:7.0f} "
                  f"{r['backlog_at_end']:7d}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        if a.out is None:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(rt, ignore_errors=True)
    return 0


def _wait(rt: Path, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (rt / "daemon.json").exists():
            return True
        time.sleep(0.05)
    return False


if __name__ == "__main__":
    sys.exit(main())
