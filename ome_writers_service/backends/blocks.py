"""Assembling frames into whole write units (a chunk, or a shard) before they are encoded.

A unit that spans several frames is encoded once, when it is complete, instead of being
rewritten per frame. Its frames arrive in one of two ways:

* copied (`Block.put`): the caller may reuse its buffer at once. The frame is copied into the
  unit's buffer, which comes from a `BufferPool`: on these VMs faulting in fresh memory for
  every unit costs more than the copy. In the daemon the buffers live in a shared-memory
  `BufferArena`, and each plane is marked there once its pixels are in, so that frames whose
  ring slots went back survive the daemon (``recover`` writes them).
* lent (`Block.lend`): the frame stays valid until its ``done`` is called. While the lent
  frames lie back to back in memory in the unit's C order -- consecutive ring slots, which is
  how the client fills them for consecutive frames -- the unit is written straight from
  them, with no copy in this process. The first frame out of place turns the unit into a
  copied one (the frames lent so far are copied and handed back at once).
"""

from __future__ import annotations

import collections
import logging
import threading
from operator import mul
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

Done = Callable[[], None]
#: called once a unit's write finished, with whether it succeeded
Written = Callable[[bool], None]


class BufferPool:
    """Spare unit buffers of one shape, handed back (from any thread) once written."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, keep_bytes: int) -> None:
        self.shape = shape
        self.dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self._keep = max(1, keep_bytes // max(1, nbytes))
        self._spare: collections.deque[np.ndarray] = collections.deque()
        #: bytes of buffers handed out and not given back, and the most there ever were
        #: (what `chunk_buffers.estimate` bounds)
        self.in_use = self.peak = 0
        self._lock = threading.Lock()  # give() comes from the writes' threads
        #: where the buffers live when they must survive this process (the daemon's)
        self.arena: Any = None

    def take(self, shape: tuple[int, ...], position: int = 0, origin: tuple[int, ...] = ()
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """A buffer of ``shape`` planes for the unit at ``origin`` of image ``position``, and
        (in an arena) the marks to set as its planes are filled."""
        buf = marks = None
        if self.arena is not None:
            try:
                buf, marks = self.arena.take(position, origin, shape[:-2], shape[-2:],
                                             self.dtype)
            except OSError as e:  # more units than the estimate allows for: keep writing
                log.warning("%s; this unit's buffer is in the daemon's memory only", e)
        elif shape == self.shape:
            try:
                buf = self._spare.pop()
            except IndexError:
                pass
        if buf is None:
            buf = np.empty(shape, self.dtype)
        with self._lock:
            self.in_use += buf.nbytes
            self.peak = max(self.peak, self.in_use)
        return buf, marks

    def give(self, buf: np.ndarray, written: bool = True) -> None:
        """A buffer whose unit was written (``written``: successfully) comes back."""
        with self._lock:
            self.in_use -= buf.nbytes
        if self.arena is not None and self.arena.holds(buf):
            self.arena.give(buf, written=written)
        elif buf.shape == self.shape and len(self._spare) < self._keep:
            self._spare.append(buf)


class Block:
    """One write unit: ``shape`` planes (outer axes) of frames, at ``origin``."""

    __slots__ = ("_base", "_marks", "_plane_strides", "_pool", "computing", "data", "expected",
                 "filled", "lent", "mask", "origin", "position", "sealed", "shape")

    # mask: planes holding a frame (copied or lent); filled: planes accounted for, frames and
    # skips (a skipped plane is never touched: zeroed when the unit is written, if it is)

    def __init__(self, origin: tuple[int, ...], shape: tuple[int, ...], pool: BufferPool,
                 position: int = 0) -> None:
        self.origin = origin
        self.shape = shape
        self.position = position
        self._pool = pool
        self.data: np.ndarray | None = None  # the copy buffer, once a plane was copied
        self._marks: np.ndarray | None = None  # its planes' marks in the arena, if any
        self.lent: dict[tuple[int, ...], tuple[np.ndarray, Done]] = {}
        self.mask = np.zeros(shape, dtype=bool)
        self.expected = self.mask.size
        self.filled = 0
        self._plane_strides = _c_strides(shape, 1)
        self._base: int | None = None  # where plane 0 must start for a write from lent frames
        #: planes being computed into the buffer elsewhere (a lower resolution level), and
        #: whether the unit is complete and waits only for them to be written
        self.computing = 0
        self.sealed = False

    @property
    def complete(self) -> bool:
        return self.filled == self.expected

    def _mark(self, local: tuple[int, ...]) -> None:
        if not self.mask[local]:
            self.mask[local] = True
            self.filled += 1

    @property
    def frames(self) -> int:
        """Planes holding a frame."""
        return int(self.mask.sum())

    def _buffer(self) -> np.ndarray:
        if self.data is None:
            self.data, self._marks = self._pool.take((*self.shape, *self._pool.shape[-2:]),
                                                     self.position, self.origin)
        return self.data

    def put(self, local: tuple[int, ...], frame: np.ndarray) -> None:
        """Copy ``frame`` in."""
        if self.lent:
            self.copy_lent()
        self._buffer()[local] = frame
        if self._marks is not None:
            self._marks[local] = 1  # after the pixels: the frame is safe in the arena
        self._mark(local)

    def reserve(self, local: tuple[int, ...]) -> np.ndarray:
        """The buffer's plane ``local``, to be filled by the caller (who tracks when)."""
        plane = self._buffer()[local]
        self._mark(local)
        return plane

    def skip(self, local: tuple[int, ...]) -> None:
        """A plane that will never hold a frame: it reads as zeros."""
        self.filled += 1

    def lend(self, local: tuple[int, ...], frame: np.ndarray, done: Done) -> bool:
        """Keep ``frame`` lent if it lies where a write straight from the lent frames needs
        it. False: it does not; the caller copies it in with `put` and calls ``done``."""
        if self.data is not None or not frame.flags.c_contiguous or \
                self.filled > len(self.lent):  # a plane was skipped: no write from the slots
            if self.lent:
                self.copy_lent()
            return False
        flat = sum(map(mul, local, self._plane_strides))
        base = frame.__array_interface__["data"][0] - flat * frame.nbytes
        if self._base is None:
            self._base = base
        elif base != self._base:
            self.copy_lent()
            return False
        self.lent[local] = (frame, done)
        self._mark(local)
        return True

    def copy_lent(self) -> int:
        """Copy the lent frames into the buffer and hand them back; returns how many."""
        buf = self._buffer()
        n = len(self.lent)
        for local, (frame, done) in self.lent.items():
            buf[local] = frame
            if self._marks is not None:
                self._marks[local] = 1
            done()
        self.lent.clear()
        return n

    def materialize(self) -> tuple[np.ndarray | None, list[Written]]:
        """The unit's pixels, and what to call once they are written, with whether that
        succeeded (hand the lent frames or the buffer back). Planes without a frame read as
        zeros; a unit without any frame is None: nothing to write, the array's fill value
        stands for it."""
        if not self.lent and self.data is None:
            return None, []
        if self.data is None and len(self.lent) == self.expected:
            first = self.lent[(0,) * len(self.shape)][0]
            full = (*self.shape, *first.shape)
            view = np.lib.stride_tricks.as_strided(
                first, full, _c_strides(full, first.itemsize), writeable=False)
            lent = list(self.lent.values())  # referenced until written: the view needs them
            return view, [lambda _ok: [done() for _, done in lent]]
        self.copy_lent()
        data = self._buffer()
        if self.filled < self.expected:
            data[~self.mask] = 0
        pool = self._pool
        return data, [lambda ok: pool.give(data, ok)]

    def plane(self, local: tuple[int, ...]) -> np.ndarray | None:
        """A copy of one plane assembled so far, or None."""
        if local in self.lent:
            return self.lent[local][0].copy()
        if self.data is not None and self.mask[local]:
            return self.data[local].copy()
        return None


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    out, acc = [], itemsize
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


__all__ = ["Block", "BufferPool", "Done", "Written"]
