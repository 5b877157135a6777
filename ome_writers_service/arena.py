"""Chunk buffers in shared memory, so that a frame the daemon released survives the daemon.

An OME-Zarr frame waits in a chunk buffer until its chunk (or shard) is complete, and its ring
slot goes back to the client as soon as it is copied there. Were the buffers the daemon's own
memory, a daemon killed meanwhile (the OOM killer, SIGKILL) would take every such frame with
it. They live in a file in /dev/shm instead, which outlives the daemon: each buffer has a
descriptor saying which image and unit it holds and which of its planes hold a frame (a
plane's mark is stored after its pixels), and `recover` writes those planes to the store.

Layout (little-endian), version 1::

    0     8  magic b"OWSBUF01"
    8     4  version (1)
    12    4  header size (page-aligned; buffer 0 starts here)
    16    4  buffers (capacity)
    20    4  outer axes of a unit (ndim)
    24    8  buffer stride (a unit's bytes, page-aligned)
    32    8  frame bytes
    40    4  planes per unit
    44    4  descriptor size
    48    4  length of the journal path, then the path (UTF-8) at 64
    4096  descriptors: state u32 (1: holds frames not written yet), position u32,
          origin u64[ndim], shape u32[ndim], then one mark byte per plane

The daemon holds a shared flock on the file while it lives, as on its rings; a starting
daemon removes arenas nobody locks whose journal is gone (their dataset was finalized).
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import secrets
import stat
import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from .ring import SHM_DIR, shm_free

PREFIX = "owsbuf-"
MAGIC = b"OWSBUF01"
VERSION = 1
PAGE = 4096
_HEADER = struct.Struct("<8sIIIIQQIII")
_PATH_AT = 64


class ArenaError(OSError):
    """The arena cannot be made or used; the message says why."""


def _page(n: int) -> int:
    return -(-n // PAGE) * PAGE


class BufferArena:
    """Unit-sized buffers in a /dev/shm file; `take` one, mark its planes, `give` it back once
    its unit is written."""

    def __init__(self, path: Path, fd: int, mm: mmap.mmap, owner: bool) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        self.owner = owner
        (magic, version, self.header_size, self.capacity, self.ndim, self.stride,
         self.frame_nbytes, self.planes, self.desc_size, path_len) = _HEADER.unpack_from(mm)
        if magic != MAGIC or version != VERSION:
            raise ArenaError(f"{path}: not a version-{VERSION} chunk-buffer arena")
        self.journal = bytes(mm[_PATH_AT:_PATH_AT + path_len]).decode("utf-8", "replace")
        self._buf = np.frombuffer(mm, dtype=np.uint8)
        self._free = list(range(self.capacity - 1, -1, -1))  # never used yet: allocate lazily
        self._allocated = np.zeros(self.capacity, dtype=bool)

    # ---- creation ----

    @classmethod
    def create(cls, unit: tuple[int, ...], frame_nbytes: int, capacity: int,
               journal: str) -> BufferArena:
        """A new arena for ``capacity`` buffers of ``unit`` planes each (space is taken from
        /dev/shm as buffers are first used; refused at once if /dev/shm cannot hold them)."""
        ndim, planes = len(unit), int(math.prod(unit))
        desc = 8 + 12 * ndim + planes
        jpath = journal.encode("utf-8")
        if len(jpath) > PAGE - _PATH_AT:
            raise ArenaError(f"journal path too long for the arena: {journal}")
        header = PAGE + _page(desc * capacity)
        stride = _page(planes * frame_nbytes)
        total = header + stride * capacity
        free = shm_free()
        if total > free:
            raise ArenaError(
                f"/dev/shm has {free / 2**20:.0f} MiB free but the chunk buffers need up to "
                f"{total / 2**20:.0f} MiB ({capacity} units of {stride / 2**20:.1f} MiB): give "
                "the container more shared memory (docker: --shm-size / compose: shm_size), or "
                "use smaller chunks")
        path = SHM_DIR / f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # held while it lives (see clean_stale_arenas)
            os.posix_fallocate(fd, 0, header)
            os.ftruncate(fd, total)  # the buffers: allocated when first taken
            mm = mmap.mmap(fd, total, flags=mmap.MAP_SHARED)
            _HEADER.pack_into(mm, 0, MAGIC, VERSION, header, capacity, ndim, stride,
                              frame_nbytes, planes, desc, len(jpath))
            mm[_PATH_AT:_PATH_AT + len(jpath)] = jpath
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(path, fd, mm, owner=True)

    @classmethod
    def open(cls, path: str | os.PathLike) -> BufferArena:
        """Map an existing arena (recover)."""
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            mm = mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED)
        except OSError:
            os.close(fd)
            raise
        return cls(path, fd, mm, owner=False)

    # ---- buffers ----

    def _descriptor(self, i: int) -> np.ndarray:
        start = PAGE + i * self.desc_size
        return self._buf[start:start + self.desc_size]

    def _marks(self, i: int, shape: tuple[int, ...]) -> np.ndarray:
        d = self._descriptor(i)
        return d[8 + 12 * self.ndim:8 + 12 * self.ndim + int(math.prod(shape))].reshape(shape)

    def take(self, position: int, origin: tuple[int, ...], shape: tuple[int, ...],
             frame_shape: tuple[int, int], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """A buffer for the unit at ``origin`` of image ``position`` (``shape`` planes), and
        its per-plane marks: set a plane's mark after its pixels are in."""
        if not self._free:
            raise ArenaError(f"{self.path}: all {self.capacity} chunk buffers are in use")
        i = self._free.pop()
        if not self._allocated[i]:
            try:  # memory now, so a full /dev/shm is an error here and never a SIGBUS
                os.posix_fallocate(self._fd, self.header_size + i * self.stride, self.stride)
            except OSError as e:
                self._free.append(i)
                raise ArenaError(f"{self.path}: /dev/shm is full, no room for another chunk "
                                 f"buffer ({e.strerror})") from e
            self._allocated[i] = True
        d = self._descriptor(i)
        d[:] = 0
        head = np.array([1, position], "<u4").view(np.uint8)
        d[8:8 + 8 * self.ndim] = np.array(origin, "<u8").view(np.uint8)
        d[8 + 8 * self.ndim:8 + 12 * self.ndim] = np.array(shape, "<u4").view(np.uint8)
        d[:8] = head  # in use, last: a descriptor is complete before it counts
        start = self.header_size + i * self.stride
        nbytes = int(math.prod(shape)) * int(np.prod(frame_shape)) * np.dtype(dtype).itemsize
        data = self._buf[start:start + nbytes].view(dtype).reshape((*shape, *frame_shape))
        return data, self._marks(i, shape)

    def holds(self, data: np.ndarray) -> bool:
        """Whether ``data`` is one of this arena's buffers."""
        offset = data.__array_interface__["data"][0] - self._base()
        return 0 <= offset < self.capacity * self.stride

    def give(self, data: np.ndarray, *, written: bool = True) -> None:
        """The unit in ``data`` is written: its buffer is free again. A unit whose write
        failed keeps its frames here for `recover` (its buffer is not reused)."""
        i = (data.__array_interface__["data"][0] - self._base()) // self.stride
        if written:
            self._descriptor(i)[:4] = 0
            self._free.append(i)

    def _base(self) -> int:
        return self._buf.__array_interface__["data"][0] + self.header_size

    def pending(self) -> Iterator[tuple[int, tuple[int, ...], np.ndarray, np.ndarray]]:
        """(position, origin, planes marked, their pixels) of every buffer holding frames not
        written yet (recover)."""
        for i in range(self.capacity):
            d = self._descriptor(i)
            if d[:4].view("<u4")[0] != 1:
                continue
            position = int(d[4:8].view("<u4")[0])
            origin = tuple(int(v) for v in d[8:8 + 8 * self.ndim].view("<u8"))
            shape = tuple(int(v) for v in d[8 + 8 * self.ndim:8 + 12 * self.ndim].view("<u4"))
            start = self.header_size + i * self.stride
            count = int(math.prod(shape))
            pixels = self._buf[start:start + count * self.frame_nbytes].reshape(count, -1)
            yield position, origin, self._marks(i, shape).astype(bool), pixels

    def has_pending(self) -> bool:
        """Whether a buffer still holds frames not written (a unit whose write failed)."""
        return next(self.pending(), None) is not None

    def close(self, *, unlink: bool = False) -> None:
        if self._mm is None:
            return
        self._buf = None
        try:
            self._mm.close()
        except BufferError:
            pass  # a view is still referenced; the mapping goes with it
        self._mm = None
        os.close(self._fd)
        if unlink:
            self.path.unlink(missing_ok=True)


def clean_stale_arenas() -> list[str]:
    """Remove arenas of ours nobody holds whose journal is gone (their dataset was finalized
    or recovered); an arena whose journal remains waits for `recover`."""
    removed = []
    for path in SHM_DIR.glob(PREFIX + "*") if SHM_DIR.is_dir() else ():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or not stat.S_ISREG(st.st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its daemon lives
            head = os.pread(fd, PAGE, 0)
            journal = None
            if head[:8] == MAGIC:
                n = _HEADER.unpack_from(head)[-1]
                journal = head[_PATH_AT:_PATH_AT + n].decode("utf-8", "replace")
            if journal is None or not os.path.exists(journal):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed
