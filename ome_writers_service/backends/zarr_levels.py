"""The lower resolution levels of an OME-Zarr image, computed as frames arrive.

`LowerLevels` belongs to a `TensorstoreZarrBackend` with ``levels`` > 1: level 0 is the
backend's; levels 1 .. levels-1 are computed here from each frame (never read back from what
was written) on the downsampling threads (`pyramid`), into write units of their own.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorstore as ts

from . import pyramid
from .base import BackendError
from .blocks import Block, BufferPool

if TYPE_CHECKING:
    from .zarr_tensorstore import TensorstoreZarrBackend

#: frames whose lower levels may be waiting to be computed at once (each holds its frame: a
#: lent ring slot, or a copy); more makes write() wait for the oldest
MAX_LEVEL_TASKS = 16


class LowerLevels:
    """Resolution levels 1 .. levels-1 of a `TensorstoreZarrBackend`: their arrays and units.

    The writer thread reserves each frame's plane in the unit of every level and hands the
    frame to a downsampling thread, which computes the levels straight into those planes.
    A unit is written by whoever finishes it last: the writer thread when it completes a unit
    whose planes are computed, or the downsampling thread computing its last plane. Their
    writes are handed to the writer thread (`collect`), which waits for them as for level 0's.
    """

    def __init__(self, backend: TensorstoreZarrBackend, keep_bytes: int) -> None:
        self.b = backend
        n = backend.levels - 1
        unit = tuple(backend._unit)
        self.pools = [BufferPool((*unit, *shape), backend.dtype, keep_bytes=keep_bytes)
                      for shape in backend.level_shapes[1:]]
        #: [level - 1][position]
        self.arrays: list[list[ts.TensorStore]] = [[] for _ in range(n)]
        self.blocks: list[list[dict[tuple[int, ...], Block]]] = [
            [{} for _ in backend.positions] for _ in range(n)]
        self._copies = BufferPool(backend.frame_shape, backend.dtype,
                                  keep_bytes=MAX_LEVEL_TASKS * backend.settings.frame_nbytes)
        self._lock = threading.Lock()  # a unit's `computing` and `sealed`
        self._tasks: deque = deque()
        #: writes started by the downsampling threads, not yet tracked by the writer thread
        self._started: deque[tuple] = deque()
        self._errors: deque[str] = deque()

    def create(self) -> None:
        b = self.b
        for k, arrays in enumerate(self.arrays, 1):
            for path in b._image_paths:
                spec = b._array_spec(path, level=k)
                arrays.append(ts.open(spec, context=b._context).result())

    # ---- the writer thread ----

    def add_copy(self, position: int, index: tuple[int, ...], frame: np.ndarray) -> None:
        """A frame the caller may reuse at once: its levels are computed from a copy."""
        src, _ = self._copies.take(self.b.frame_shape)
        np.copyto(src, frame)
        self.add(position, index, src, lambda: self._copies.give(src))

    def add(self, position: int, index: tuple[int, ...], src: np.ndarray,
            release: Any) -> None:
        """Compute the levels of ``src`` (valid until ``release()``) into their units."""
        planes, units = [], []
        with self._lock:
            for k in range(1, self.b.levels):
                key, block, local = self.b._block_for(position, index, k)
                planes.append(block.reserve(local))
                block.computing += 1
                units.append((k, position, key, block))
        while len(self._tasks) >= MAX_LEVEL_TASKS:
            self._tasks.popleft().result()
        self._tasks.append(pyramid.submit(self._compute, src, planes, release, units))
        self._seal_complete(units)

    def skip(self, position: int, index: tuple[int, ...]) -> None:
        units = []
        with self._lock:
            for k in range(1, self.b.levels):
                key, block, local = self.b._block_for(position, index, k)
                block.skip(local)
                units.append((k, position, key, block))
        self._seal_complete(units)

    def _seal_complete(self, units: list) -> None:
        """Units whose every plane is accounted for leave the assembly; each is written
        now if its planes are computed, else by the thread computing the last one."""
        for k, pos, key, block in units:
            with self._lock:
                if not block.complete or block.sealed:
                    continue
                del self.blocks[k - 1][pos][key]
                block.sealed = True
                ready = block.computing == 0
            if ready:
                self._write(k, pos, block)

    def collect(self) -> None:
        """Track the writes the downsampling threads started; raise what failed there."""
        while self._started:
            self.b.track_level_write(*self._started.popleft())
        while self._tasks and self._tasks[0].done():
            self._tasks.popleft()
        if self._errors:
            raise BackendError(self._errors.popleft())

    def flush(self) -> None:
        """At finalize: every level computed, partial units written (and tracked)."""
        while self._tasks:
            self._tasks.popleft().result()
        for k, per_position in enumerate(self.blocks, 1):
            for pos, blocks in enumerate(per_position):
                for key in sorted(blocks):
                    block = blocks.pop(key)
                    block.sealed = True
                    self._write(k, pos, block)
        self.collect()

    # ---- any thread ----

    def _compute(self, src: np.ndarray, planes: list[np.ndarray], release: Any,
                 units: list) -> None:
        try:
            pyramid.cascade(src, planes, self.b.downsampling)
        except Exception as e:  # noqa: BLE001 - reported by the writer thread
            self._errors.append(f"computing the resolution levels of plane {units[0][3].origin}"
                                f" failed: {e!r}")
        finally:
            release()
        for k, pos, _key, block in units:
            with self._lock:
                block.computing -= 1
                ready = block.sealed and block.computing == 0
            if ready:
                self._write(k, pos, block)

    def _write(self, k: int, pos: int, block: Block) -> None:
        where = f"{self.b.paths[pos]}/{k} at index {block.origin}"
        try:
            written = self.b._write_unit(self.arrays[k - 1][pos], block)
        except Exception as e:  # noqa: BLE001 - reported by the writer thread
            self._errors.append(f"writing {where} failed: {e}")
            return
        if written is not None:
            self._started.append((k, pos, block.origin, *written))


__all__ = ["LowerLevels"]
