"""Frames lent to a backend (what the daemon does with ring slots): written exactly, each
handed back once and only after it was written, within the lender's budget."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ome_writers_service import AcquisitionSettings, Dimension, PositionDimension
from ome_writers_service.stream import OMEStream

from service_util import expected_images, frame_pixels, read_image


class FakeRing:
    """Slots of one buffer, taken as the client takes them: frame n prefers slot n % N, else
    any free slot, else it waits. Handed-back slots are scribbled on at once, so a slot
    handed back before its frame was written shows up as corrupt data."""

    def __init__(self, slots: int, shape, dtype) -> None:
        self.buf = np.zeros((slots, *shape), dtype)
        self.free = [True] * slots
        self.returned: list[int] = []
        self.lock = threading.Lock()

    def lend(self, n: int, pixels: np.ndarray):
        deadline = time.monotonic() + 20
        while True:
            with self.lock:
                slot = n % len(self.free)
                if not self.free[slot]:
                    slot = next((i for i, f in enumerate(self.free) if f), -1)
                if slot >= 0:
                    self.free[slot] = False
                    break
            assert time.monotonic() < deadline, f"no slot came back for frame {n}"
            time.sleep(0.0005)
        self.buf[slot] = pixels
        handed_back = []

        def done() -> None:
            with self.lock:
                assert not handed_back, f"frame {n} handed back twice"
                handed_back.append(True)
                self.buf[slot] = 0xABCD & np.iinfo(self.buf.dtype).max  # reused at once
                self.returned.append(n)
                self.free[slot] = True

        return self.buf[slot], done


def lend_all(settings: AcquisitionSettings, slots: int, seed: int) -> list[str]:
    ring = FakeRing(slots, settings.frame_shape, settings.dtype)
    stream = OMEStream(settings, lend_limit=slots)
    for n in range(settings.num_frames):
        frame, done = ring.lend(n, frame_pixels(seed, n, settings.frame_shape, settings.dtype))
        stream.append_borrowed(frame, done)
    stream.close()
    assert sorted(ring.returned) == list(range(settings.num_frames))
    return stream.paths


@pytest.mark.parametrize("dims,slots", [
    # consecutive frames fill whole chunks: written straight from the slots
    ([Dimension(name="t", count=40, chunk_size=8)], 32),
    # a ring that is not a multiple of the chunk: some chunks wrap around the ring's end
    ([Dimension(name="t", count=40, chunk_size=8)], 20),
    # chunks interleave (c varies fastest): several units open at once, lent frames not
    # back to back, a small ring; nothing may wait forever for a slot
    ([Dimension(name="t", count=10, chunk_size=2), Dimension(name="c", count=2),
      Dimension(name="z", count=5)], 8),
    # positions interleave their units too
    ([Dimension(name="t", count=8, chunk_size=4), PositionDimension(coords=["a", "b", "c"])], 8),
], ids=["whole-chunks", "ring-wraps-mid-chunk", "interleaved-units", "positions"])
def test_lent_frames_are_written_exactly_and_handed_back_once(tmp_path, dims, slots):
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "lent.ome.zarr"), dtype="uint16", overwrite=True,
        dimensions=[*dims, Dimension(name="y", count=32), Dimension(name="x", count=48)])
    paths = lend_all(settings, slots, seed=3)
    for path, want in zip(paths, expected_images(settings, 3)):
        np.testing.assert_array_equal(read_image(path), want)
