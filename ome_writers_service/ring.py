"""A ring of equal frame slots in POSIX shared memory (a file in /dev/shm, mapped by both sides).

The daemon creates and owns a ring per stream; the client maps it by name. We map the
/dev/shm file directly instead of using ``multiprocessing.shared_memory`` because, on Python
3.11/3.12, merely *attaching* to a SharedMemory registers it with the resource tracker, which
unlinks it when the attaching process exits (CPython issue 82300) — a client exiting would
delete the daemon's ring. ``shm_open(name)`` in C opens the same file, so a C client maps it
the same way.

Layout (little-endian), version 2::

    offset  size  field
    0       8     magic  b"OWSRING1"
    8       4     layout version (2)
    12      4     header size in bytes (a multiple of 4096; slot 0 starts here)
    16      4     slot count
    20      4     owner pid (the daemon)
    24      8     slot size in bytes (frame bytes rounded up to 4096)
    32      8     frame size in bytes
    40      4     error flag: 0 = healthy, 1 = the daemon failed to write (details in an
                  ``error`` message), 2 = the daemon ended the stream; clients check it on append
    44      4     reserved (0)
    48      8     frames written by the daemon so far
    56      4     offset of the slot table (4096)
    60   4036     reserved (0)
    4096  8*slots slot table: entry i = 1 + the number of the frame last written into slot i
                  (0: none yet), stored by the client after the pixels, before the notice
    header size   slot 0, then slot 1 at header size + slot_size, ...

The slot table is what makes a frame survive its client: ``append()`` returns once the frame
is in the ring and its notice is queued, and a client killed at that moment takes the queued
notice with it, but not the ring. When the daemon loses a client it writes the slots whose
entry names a frame it was never told about before it finalizes the dataset. It reads the
table only then; frames otherwise travel by messages alone.

The daemon holds a shared ``flock`` on the file while the ring lives; the kernel drops it
when the daemon dies, which is how a starting daemon tells stale rings from live ones (pids
say nothing across pid namespaces that share /dev/shm, e.g. containers with ``ipc: host``).

Slots are handed back and forth by protocol messages (``frame`` and ``release``), never by
flags in memory, so neither side spins on shared memory.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import stat
import struct
import time
from pathlib import Path

import numpy as np


SHM_DIR = Path("/dev/shm")
PREFIX = "ows-"
MAGIC = b"OWSRING1"
LAYOUT_VERSION = 2
#: where the slot table starts; the slots follow it, page-aligned
SLOT_TABLE = 4096
SLOT_ALIGN = 4096
_HEADER = struct.Struct("<8sIIIIQQII QI")
OFF_ERROR = 40
OFF_WRITTEN = 48


class RingError(OSError):
    """The ring cannot be created or attached; the message says why and what to change."""


def slot_size_for(frame_nbytes: int) -> int:
    return -(-frame_nbytes // SLOT_ALIGN) * SLOT_ALIGN


def header_size_for(slots: int) -> int:
    """Bytes before slot 0: the header page and the slot table, page-aligned."""
    return SLOT_TABLE + -(-8 * slots // SLOT_ALIGN) * SLOT_ALIGN


class FrameRing:
    """A mapped ring: ``slot(i)`` is a numpy view of slot ``i`` shaped as one frame."""

    def __init__(self, name: str, fd: int, mm: mmap.mmap, owner: bool) -> None:
        self.name = name
        self._fd = fd
        self._mm = mm
        self.owner = owner
        magic, version, header, slots, pid, slot_size, frame_nbytes, _, _, _, table = \
            _HEADER.unpack_from(mm)
        if magic != MAGIC or version != LAYOUT_VERSION:
            raise RingError(f"{self.path}: not a version-{LAYOUT_VERSION} frame ring")
        self.header_size = header
        self.slot_count = slots
        self.owner_pid = pid
        self.slot_size = slot_size
        self.frame_nbytes = frame_nbytes
        self._buf = np.frombuffer(mm, dtype=np.uint8)
        self._error = self._buf[OFF_ERROR:OFF_ERROR + 4].view("<u4")
        self._written = self._buf[OFF_WRITTEN:OFF_WRITTEN + 8].view("<u8")
        #: the slot table (`filled`): entry i = 1 + the frame last written into slot i
        self.filled = memoryview(mm)[table:table + 8 * slots].cast("Q")

    @property
    def path(self) -> Path:
        return SHM_DIR / self.name

    # ---- creation / attachment ----

    @classmethod
    def create(cls, frame_nbytes: int, slots: int, *, prefault: bool = True) -> FrameRing:
        """Create a new ring (mode 0600) with its space reserved, so a too-small /dev/shm
        fails here with a clear error instead of SIGBUS on a later write."""
        slot_size = slot_size_for(frame_nbytes)
        header_size = header_size_for(slots)
        total = header_size + slot_size * slots
        free = shm_free()
        if total > free:  # fail before allocating anything
            raise RingError(_too_small(free, total, slots, slot_size))
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise RingError(f"cannot create shared memory {path}: {e.strerror}") from e
        try:
            # held while the ring lives, released by the kernel when the owner dies: how
            # `clean_stale_rings` tells a live ring from a stale one, across pid namespaces
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                os.posix_fallocate(fd, 0, total)
            except OSError as e:
                raise RingError(_too_small(shm_free(), total, slots, slot_size)) from e
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if prefault else 0)
            mm = mmap.mmap(fd, total, flags=flags)
            _HEADER.pack_into(mm, 0, MAGIC, LAYOUT_VERSION, header_size, slots, os.getpid(),
                              slot_size, frame_nbytes, 0, 0, 0, SLOT_TABLE)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(name, fd, mm, owner=True)

    @classmethod
    def attach(cls, name: str, *, prefault: bool = True) -> FrameRing:
        """Map an existing ring by name (client side). Never unlinks it."""
        if "/" in name or not name.startswith(PREFIX):
            raise RingError(f"{name!r} is not a frame ring name")
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise RingError(f"cannot open shared memory {path}: {e.strerror} (a daemon on "
                            "another machine, or in a container that does not share this "
                            "/dev/shm, needs transport='inline')") from e
        try:
            size = os.fstat(fd).st_size
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if prefault else 0)
            mm = mmap.mmap(fd, size, flags=flags)
        except OSError:
            os.close(fd)
            raise
        ring = cls(name, fd, mm, owner=False)
        if prefault:
            ring.prefault()
        return ring

    def prefault(self) -> None:
        """Touch every page for writing now, so the first frames cost a warm copy."""
        view = self._buf[self.header_size:]
        view[:: mmap.PAGESIZE] = view[:: mmap.PAGESIZE]

    # ---- access ----

    def slot(self, i: int, shape: tuple[int, ...] | None = None, dtype=np.uint8) -> np.ndarray:
        start = self.header_size + i * self.slot_size
        raw = self._buf[start:start + self.frame_nbytes]
        return raw.view(dtype).reshape(shape) if shape is not None else raw

    def slots(self, shape: tuple[int, ...], dtype) -> list[np.ndarray]:
        """One frame-shaped view per slot (make once, index on the hot path)."""
        return [self.slot(i, shape, dtype) for i in range(self.slot_count)]

    @property
    def error_flag(self) -> int:
        return int(self._error[0])

    def set_error(self, code: int = 1) -> None:
        self._error[0] = code

    def unannounced(self, next_frame: int, limit: int | None) -> list[tuple[int, int]]:
        """(frame, slot) of every slot whose table entry names a frame from ``next_frame`` on
        (below ``limit``): frames the client put in the ring whose notices never arrived, in
        frame order. For the owner, once the client is gone."""
        found = []
        for slot, entry in enumerate(self.filled):
            frame = entry - 1
            if entry and frame >= next_frame and (limit is None or frame < limit):
                found.append((frame, slot))
        return sorted(found)

    def forget(self, slot: int) -> None:
        """Clear a slot's table entry (its frame was refused: it must not be taken for one
        whose notice was lost)."""
        self.filled[slot] = 0

    @property
    def frames_written(self) -> int:
        return int(self._written[0])

    def set_frames_written(self, n: int) -> None:
        self._written[0] = n

    def unlink(self) -> None:
        """Remove the ring's name (owner only). The memory goes with the last mapping."""
        if self.owner:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Unmap; the owner also removes the segment."""
        if self._mm is None:
            return
        if self.filled is not None:
            self.filled.release()
        self._buf = self._error = self._written = self.filled = None  # views go before unmap
        try:
            self._mm.close()
        except BufferError:
            pass  # a caller still holds a slot view; the mapping goes when it does
        self._mm = None
        os.close(self._fd)
        self.unlink()


def _too_small(free: int, total: int, slots: int, slot_size: int) -> str:
    return (f"/dev/shm has {free / 2**20:.0f} MiB free but the frame ring needs "
            f"{total / 2**20:.0f} MiB ({slots} slots of {slot_size / 2**20:.2f} MiB). Give the "
            "container more shared memory (docker: --shm-size / compose: shm_size), or lower "
            "ring_slots in the settings.")


def shm_free() -> int:
    """Free bytes in /dev/shm."""
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def clean_stale_rings(min_age: float = 10.0) -> list[str]:
    """Remove rings of ours whose owner is gone; returns their names.

    A live owner holds a lock on its ring (see `FrameRing.create`), whichever pid namespace
    it runs in; a file nobody locks is stale once it carries a ring header, or once it is
    older than ``min_age`` seconds (a ring still being created has no header yet).
    """
    removed = []
    if not SHM_DIR.is_dir():
        return removed
    for path in SHM_DIR.glob(PREFIX + "*"):
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
                continue  # its owner holds it
            head = os.pread(fd, len(MAGIC), 0)
            if head == MAGIC or time.time() - st.st_mtime > min_age:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed
