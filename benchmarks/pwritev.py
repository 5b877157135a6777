"""Benchmark: what the TIFF page appender pays on Windows, which has no ``os.pwritev``.

    python benchmarks/pwritev.py [--out DIR] [--repeats 7]

A page is one positioned write of [IFD, pixels] (`platform.pwritev`). POSIX writes both
buffers with ``os.pwritev``; Windows joins them (one copy of the pixels) and writes the joined
bytes at the offset. Both ways run here, interleaved in every repeat, for frames of 0.5-32 MiB,
into a file in memory (/dev/shm where there is one: no disk, so the write is itself only a
copy and the extra copy weighs most: the worst case); the table gives MB/s and the ratio of
the two. Results: ``pwritev.md`` and ``pwritev.png`` in ``--out`` (default
benchmarks/results).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ome_writers_service import platform  # noqa: E402

SIDES = [512, 1024, 2048, 4096]  # uint16 frames: 0.5, 2, 8, 32 MiB
PAGES_BYTES = 64 * 2**20  # written per measurement: ~64 MiB, whatever the frame size
IFD = 200  # bytes of one IFD with its values, about what tifffile writes for a frame


def write_pages(path: str, frame: np.ndarray, pages: int, joined: bool) -> float:
    """Seconds to write ``pages`` pages of [IFD, frame] at increasing offsets."""
    ifd = os.urandom(IFD)
    pixels = memoryview(frame).cast("B")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | platform.O_BINARY, 0o600)
    try:
        t0 = time.perf_counter()
        offset = 0
        for _ in range(pages):
            if joined:
                offset += platform._write_at(fd, b"".join([ifd, pixels]), offset)
            else:
                offset += platform.pwritev(fd, [ifd, pixels], offset)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where the file is written (default /dev/shm, else the temp dir)")
    args = ap.parse_args()
    ways = ["joined + write at offset"] + (["os.pwritev"] if hasattr(os, "pwritev") else [])
    mbps: dict[tuple[int, str], list[float]] = {}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ows-bench-") as d:
        path = os.path.join(d, "pages.bin")
        for side in SIDES:
            frame = np.random.default_rng(side).integers(0, 2**16, (side, side), np.uint16)
            pages = max(4, PAGES_BYTES // frame.nbytes)
            write_pages(path, frame, 2, True)  # fault the memory in before anything is timed
            for _ in range(args.repeats):
                for way in ways:
                    s = write_pages(path, frame, pages, way != "os.pwritev")
                    mbps.setdefault((side, way), []).append(pages * frame.nbytes / s / 1e6)
            print(f"{side}x{side}: " + ", ".join(
                f"{w} {statistics.median(mbps[side, w]):.0f} MB/s" for w in ways), flush=True)
    rows = ["| frame (uint16) | " + " | ".join(f"{w} MB/s (median, min-max)" for w in ways)
            + (" | joined / pwritev |" if len(ways) == 2 else " |"),
            "|---" * (len(ways) + 1 + (len(ways) == 2)) + "|"]
    for side in SIDES:
        cells = [f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"
                 for v in (mbps[side, w] for w in ways)]
        if len(ways) == 2:
            ratios = [a / b for a, b in zip(mbps[side, ways[0]], mbps[side, ways[1]])]
            cells.append(f"{statistics.median(ratios):.2f}")
        rows.append(f"| {side}x{side} ({side * side * 2 / 2**20:g} MiB) | " + " | ".join(cells)
                    + " |")
    table = "\n".join(rows)
    note = (f"{args.repeats} interleaved repeats of ~64 MiB of pages each, into a file in "
            f"{args.dir or tempfile.gettempdir()} ({sys.platform}, Python "
            f"{sys.version.split()[0]}).\n")
    Path(args.out, "pwritev.md").write_text(f"# TIFF pages: pwritev vs joined write\n\n{note}\n"
                                            f"{table}\n")
    print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for w in ways:
        ax.plot([s * s * 2 / 2**20 for s in SIDES],
                [statistics.median(mbps[s, w]) for s in SIDES], marker="o", label=w)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("frame size (MiB)")
    ax.set_ylabel("MB/s (median)")
    ax.set_title("TIFF page writes: os.pwritev vs buffers joined")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(args.out, "pwritev.png"), dpi=120)


if __name__ == "__main__":
    main()
