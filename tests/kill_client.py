"""A client process that is SIGKILLed mid-acquisition (by itself right after a burst, or by the
test at a random moment), with several streams open at once: each stream is one kill point.

    kill_client.py ENDPOINT TOKEN OUT_DIR SUFFIX SEED STREAMS self|external PROGRESS_FILE

``PROGRESS_FILE`` holds one int64 per stream: how many of its frames' append() (or claim()
block) had returned, stored right after each one returns, so the test knows exactly which
frames were handed over when the kill came. Frame i of stream k is frame_pixels(SEED*100+k,
i); every stream is t=T, c=2 of 16x16 uint16; odd streams use claim().
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from service_util import frame_pixels  # noqa: E402

from ome_writers_service import AcquisitionSettings, Dimension, create_stream  # noqa: E402

T = 400  # time points: more than any stream reaches before the kill


def settings_for(out: Path, suffix: str, k: int, chunk: int) -> AcquisitionSettings:
    return AcquisitionSettings(
        root_path=str(out / f"s{k}{suffix}"), dtype="uint16", overwrite=True, ring_slots=64,
        dimensions=[Dimension(name="t", count=T, chunk_size=chunk), Dimension(name="c", count=2),
                    Dimension(name="y", count=16), Dimension(name="x", count=16)])


def main() -> None:
    endpoint, token, out, suffix, seed, n, mode, progress = sys.argv[1:9]
    seed, n = int(seed), int(n)
    rng = random.Random(seed)
    counts = np.memmap(progress, dtype=np.int64, mode="r+", shape=(n,))
    streams = [create_stream(settings_for(Path(out), suffix, k, rng.choice([1, 1, 2, 4])),
                             endpoint=endpoint, token=token) for k in range(n)]
    frames = [[frame_pixels(seed * 100 + k, i, (16, 16), np.uint16) for i in range(2 * T)]
              for k in range(n)]

    def put(k: int) -> None:
        i = int(counts[k])
        if k % 2:
            with streams[k].claim() as slot:
                slot[...] = frames[k][i]
        else:
            streams[k].append(frames[k][i])
        counts[k] = i + 1  # after append()/claim() returned

    if mode == "self":  # a paced start, then a burst of every stream, then SIGKILL at once
        targets = [rng.randint(1, 2 * T - 1) for _ in range(n)]
        bursts = [rng.randint(1, min(40, t)) for t in targets]
        for k in range(n):
            for _ in range(targets[k] - bursts[k]):
                put(k)
                if rng.random() < 0.05:
                    time.sleep(0.001)
        pending = [k for k in range(n) for _ in range(bursts[k])]
        rng.shuffle(pending)
        for k in pending:
            put(k)
        os.kill(os.getpid(), signal.SIGKILL)
    print("ready", flush=True)  # external: the test kills us at a moment of its choosing
    while True:
        k = rng.randrange(n)
        if counts[k] < 2 * T:
            put(k)
        if rng.random() < 0.02:
            time.sleep(rng.random() * 0.004)


if __name__ == "__main__":
    main()
