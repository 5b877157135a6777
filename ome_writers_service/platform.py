"""What the service takes from the operating system, for POSIX and for Windows, in one place.

Every other module asks here for what POSIX and Windows provide differently; nothing else
imports ``fcntl``, ``msvcrt``, ``signal`` handlers or reads ``/proc``. What each is:

===========================  =================================  ===================================
facility                     POSIX (Linux)                      Windows
===========================  =================================  ===================================
shared memory of a ring      a file in /dev/shm, mapped         a named pagefile-backed mapping
                                                                (``Local\\<name>``) and its owner
                                                                lock file in `SHM_DIR`
shared memory that outlives  a file in /dev/shm                 a file in `SHM_DIR` (per-user,
its owner (chunk buffers)                                       private), mapped, marked temporary
owner lock (stale or live)   ``flock`` on the file              a byte-range lock on the file
free shared memory           ``statvfs("/dev/shm")``            the commit charge still available
runtime directory            $XDG_RUNTIME_DIR or the temp dir,  %LOCALAPPDATA%\\ome-writers-service,
                             mode 0700, owner checked           a DACL for the user alone, checked
private file (token)         ``mkstemp`` (0600)                 created with a user-only DACL
default endpoint             ``ipc://`` socket, mode 0600       ``tcp://127.0.0.1:<free port>``
client / daemon liveness     signal 0 and /proc (zombies)       a process handle, waited on
asking a daemon to stop      SIGTERM (SIGINT: Ctrl+C)           a named event; Ctrl+C, Ctrl+Break,
                                                                console closed, log-off, shutdown
start a detached daemon      double fork (new session)          a detached process (no console)
positioned vector write      ``pwritev``                        the buffers joined, one write at an
                                                                offset (benchmarks/pwritev.py)
reserve file space           ``posix_fallocate``                extend the file (NTFS allocates)
===========================  =================================  ===================================

Windows also differs in what a file that is open or mapped allows: it cannot be deleted or
renamed over (`remove` reports it instead of raising; the caller retries later).
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

WINDOWS = sys.platform == "win32"
if WINDOWS:
    import _winapi
    import msvcrt

    from . import _win32
else:
    import fcntl
    import signal

#: flags every ``os.open`` of ours adds: binary on Windows (no newline translation), never
#: through a symlink where the OS can say so, not inherited by children
O_BINARY = getattr(os, "O_BINARY", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOINHERIT", 0)
RUNTIME_DIR_NAME = "ome-writers-service"


# ---- files ----

def pread(fd: int, n: int, offset: int) -> bytes:
    if not WINDOWS:
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


def pwrite(fd: int, data, offset: int) -> int:
    """Write ``data`` at ``offset`` (the file position is not kept); the bytes written."""
    if not WINDOWS:
        return os.pwrite(fd, data, offset)
    return _write_at(fd, data, offset)


def pwritev(fd: int, buffers: list, offset: int) -> int:
    """``os.pwritev`` where there is one; elsewhere (Windows) the buffers joined and written
    with one positioned write: one more copy of the data (benchmarks/pwritev.py measures it)."""
    if hasattr(os, "pwritev"):
        return os.pwritev(fd, buffers, offset)
    return _write_at(fd, b"".join(buffers), offset)


def _write_at(fd: int, data, offset: int) -> int:
    """All of ``data`` at ``offset`` with seek + write (not atomic: one writer per fd)."""
    os.lseek(fd, offset, os.SEEK_SET)
    view, done = memoryview(data).cast("B"), 0
    while done < len(view):
        done += os.write(fd, view[done:done + 2**30])
    return done


def reserve(fd: int, offset: int, length: int) -> None:
    """Make the file's space from ``offset`` to ``offset + length`` exist now, so that a full
    disk (or /dev/shm) fails here rather than at a later write through a mapping (SIGBUS)."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, offset, length)
    elif os.fstat(fd).st_size < offset + length:
        os.ftruncate(fd, offset + length)  # NTFS allocates the clusters of a non-sparse file


def set_mode(fd: int, mode: int) -> None:
    """Permission bits of an open file (POSIX); on Windows a file takes its directory's DACL."""
    if not WINDOWS:
        os.fchmod(fd, mode)


def replace(src: str | os.PathLike, dst: str | os.PathLike, timeout: float = 2.0) -> None:
    """``os.replace``; on Windows retried while a reader holds ``dst`` open (renaming over an
    open file fails there, for the moment a reader takes)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if not WINDOWS or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def remove(path: str | os.PathLike) -> bool:
    """Delete ``path`` (absent is fine). False when it is still open or mapped somewhere
    (Windows only: POSIX removes the name at once), so the caller can try again later."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except PermissionError as e:
        if WINDOWS and getattr(e, "winerror", None) in (5, 32):  # access denied, in use
            return False
        raise
    return True


def disk_free(path: str | os.PathLike) -> int:
    """Free bytes for this user on the file system of ``path``."""
    return shutil.disk_usage(path).free


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 where unknown)."""
    try:
        if WINDOWS:
            return int(_win32.memory_status().ullTotalPhys)
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def hold_lock(fd: int, *, blocking: bool = True) -> bool:
    """An exclusive lock on the file ``fd`` until it is closed (or the process dies); with
    ``blocking=False`` returns False at once when another holds it."""
    if not WINDOWS:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False
    while True:
        # one byte far past any data: a Windows lock forbids others to read what it covers
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            if not blocking:
                return False
            time.sleep(0.02)


_LOCK_OFFSET = 1 << 40


# ---- private directories and files ----

def default_runtime_dir() -> Path:
    """Where the daemon's connection file, socket and log live unless told."""
    if WINDOWS:
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser(r"~\AppData\Local")
        return Path(base) / RUNTIME_DIR_NAME
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"{RUNTIME_DIR_NAME}-{os.getuid()}"


def ensure_private_dir(path: str | os.PathLike) -> Path:
    """``path`` as a directory only this user can enter: created private if missing (POSIX
    mode 0700; Windows a DACL for the user alone); refused (PermissionError naming it and
    why) if it is a symlink or junction, not a directory, another user's, or open to others.
    Never repaired: in a shared place another user may have made it."""
    p = Path(path)
    try:
        if WINDOWS:
            _win32.make_private_dir(str(p))
        else:
            os.mkdir(p, 0o700)  # never follows a symlink: an existing name fails here
        created = True
    except FileExistsError:
        created = False
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True)
        return ensure_private_dir(p)
    fix = "remove it, or set OME_WRITERS_SERVICE_RUNTIME_DIR or XDG_RUNTIME_DIR"
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode) or getattr(st, "st_file_attributes", 0) & 0x400:  # reparse
        target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else "a junction"
        raise PermissionError(f"runtime directory {p} is a symlink (to {target!r}): refusing "
                              f"it, another user may have planted it; {fix}")
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"runtime directory {p} exists and is not a directory")
    if WINDOWS:
        _check_private_dacl(p, fix)
        return p
    if st.st_uid != os.getuid():
        raise PermissionError(f"runtime directory {p} belongs to uid {st.st_uid}, not to this "
                              f"user (uid {os.getuid()}): refusing it; {fix}")
    mode = stat.S_IMODE(st.st_mode)
    if created and mode != 0o700:  # our own, fresh: the umask may have taken bits away
        os.chmod(p, 0o700)
    elif mode & 0o077:
        raise PermissionError(f"runtime directory {p} has mode {mode:04o}: others may enter it; "
                              f"make it private (chmod 700 {p}) or use another one")
    return p


def _check_private_dacl(p: Path, fix: str) -> None:
    me = _win32.user_sid()
    owner, allowed = _win32.owner_and_access(str(p))
    if owner not in (me, _win32.ADMINISTRATORS):
        raise PermissionError(f"runtime directory {p} belongs to {owner}, not to this user "
                              f"({me}): refusing it; {fix}")
    if allowed is None:
        raise PermissionError(f"runtime directory {p} has no DACL: everyone may read it; "
                              f"refusing it; {fix}")
    others = sorted(set(allowed) - {me} - _win32.TRUSTED_SIDS)
    if others:
        raise PermissionError(f"runtime directory {p} lets {', '.join(others)} in (its DACL): "
                              f"others may read the daemon's token; make it private (icacls "
                              f'"{p}" /inheritance:r /grant:r "%USERNAME%":F) or use another one')


def make_private_temp_dir(prefix: str) -> str:
    """A new directory of unpredictable name in the temp dir that only this user can enter,
    as ``tempfile.mkdtemp`` (0700); on Windows with a DACL of its own, not the temp dir's."""
    if not WINDOWS:
        return tempfile.mkdtemp(prefix=prefix)
    while True:
        path = os.path.join(tempfile.gettempdir(), prefix + secrets.token_hex(6))
        try:
            _win32.make_private_dir(path)
            return path
        except FileExistsError:
            continue


def create_private_file(dir: str | os.PathLike, prefix: str = "",  # noqa: A002 - mkstemp's
                        suffix: str = "") -> tuple[int, str]:
    """A new file of unpredictable name in ``dir`` that only this user may read, as
    ``tempfile.mkstemp`` (fd open for reading and writing, path); on Windows with a DACL of
    its own, not what it would inherit."""
    if WINDOWS:
        return _win32.create_private_file(str(dir), prefix, suffix)
    return tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)


def user_id() -> str:
    """This user, for messages: the uid, or the Windows SID."""
    return _win32.user_sid() if WINDOWS else str(os.getuid())


def owned_by_user(st: os.stat_result) -> bool:
    """Whether a file's owner is this user (Windows: files under `SHM_DIR`, a private
    directory, are this user's by construction)."""
    return WINDOWS or st.st_uid == os.getuid()


# ---- shared memory ----

def _shm_dir() -> Path:
    if WINDOWS:
        return default_runtime_dir() / "shm"
    return Path("/dev/shm")


#: where rings (POSIX), their owner locks (Windows) and chunk-buffer arenas live
SHM_DIR = _shm_dir()
#: what the owner lock file of a Windows ring holds once its ring exists
_LOCK_MARK = b"OWSLOCK1"


#: what holds shared memory, and how to get more of it, for messages
SHM_WHAT = "the commit limit (RAM + paging file)" if WINDOWS else "/dev/shm"
SHM_MORE = ("close other programs or let Windows grow the paging file" if WINDOWS else
            "give the container more shared memory (docker: --shm-size / compose: shm_size)")


def shm_free() -> int:
    """Bytes of shared memory that may still be taken: free /dev/shm, or on Windows the
    commit charge still available (a pagefile-backed mapping is charged when made)."""
    if WINDOWS:
        return int(_win32.memory_status().ullAvailPageFile)
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


class SharedSegment:
    """A named region of memory that several processes map, made by one owner who holds a
    lock on its file while it lives (how a starting daemon tells stale segments from live
    ones, whatever pid namespace they run in).

    ``durable``: the memory outlives its owner until removed (chunk buffers that `recover`
    reads after the daemon died). POSIX segments are files in /dev/shm either way. On Windows
    a durable one is a mapped file in `SHM_DIR`; a plain one (a ring) is a pagefile-backed
    mapping named ``name``, freed with its last handle, whose owner lock is a file of that
    name in `SHM_DIR`.
    """

    def __init__(self, name: str, path: Path, fd: int, mm: mmap.mmap, owner: bool,
                 durable: bool) -> None:
        self.name, self.path, self.mm, self.owner, self.durable = name, path, mm, owner, durable
        self._fd = fd  # the file (POSIX, durable), or the Windows ring's lock file (owner)
        self._unlinked = False

    @property
    def _pagefile(self) -> bool:
        return WINDOWS and not self.durable

    @classmethod
    def create(cls, name: str, size: int, *, durable: bool = False, populate: bool = False,
               reserve_bytes: int | None = None) -> SharedSegment:
        """A new segment of ``size`` bytes (FileExistsError if the name is taken), its first
        ``reserve_bytes`` (default: all) reserved now: no room fails here, with an OSError."""
        _ensure_shm_dir()
        path = SHM_DIR / name
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_BINARY | O_CLOEXEC
        if WINDOWS and durable:
            flags |= os.O_SHORT_LIVED  # FILE_ATTRIBUTE_TEMPORARY: kept in memory if it can be
        fd = os.open(path, flags, 0o600)
        mm = None
        try:
            if not WINDOWS:
                fcntl.flock(fd, fcntl.LOCK_SH)  # held while it lives (`remove_stale_segments`)
            else:
                hold_lock(fd)
            if WINDOWS and not durable:
                mm = _create_pagefile_mapping(name, size)
                pwrite(fd, _LOCK_MARK, 0)  # the ring exists: an unlocked mark is a stale one
            else:
                reserve(fd, 0, size if reserve_bytes is None else reserve_bytes)
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)  # the rest: taken as it is first used
                mm = _map(fd, size, populate)
        except BaseException:
            if mm is not None:
                mm.close()
            os.close(fd)
            remove(path)
            raise
        return cls(name, path, fd, mm, owner=True, durable=durable)

    @classmethod
    def attach(cls, name: str, *, durable: bool = False, populate: bool = False
               ) -> SharedSegment:
        """Map an existing segment by name (FileNotFoundError if there is none)."""
        path = SHM_DIR / name
        if WINDOWS and not durable:
            return cls(name, path, -1, _open_pagefile_mapping(name), owner=False, durable=False)
        return cls.open(path, populate=populate, durable=durable)

    @classmethod
    def open(cls, path: str | os.PathLike, *, populate: bool = False,
             durable: bool = True) -> SharedSegment:
        """Map an existing file-backed segment by path (not its owner)."""
        path = Path(path)
        fd = os.open(path, os.O_RDWR | O_NOFOLLOW | O_BINARY | O_CLOEXEC)
        try:
            mm = _map(fd, os.fstat(fd).st_size, populate)
        except BaseException:
            os.close(fd)
            raise
        return cls(path.name, path, fd, mm, owner=False, durable=durable)

    def reserve(self, offset: int, length: int) -> None:
        """Make memory from ``offset`` exist now (a segment created with less reserved)."""
        if not self._pagefile:
            reserve(self._fd, offset, length)

    def unlink(self) -> None:
        """Remove the segment's name (owner only): nobody attaches to it any more; the
        memory goes with the last mapping. A Windows file still mapped (chunk buffers) goes
        at `close`; one another process still maps, at the next `remove_stale_segments`."""
        if not self.owner or self._unlinked:
            return
        if self._pagefile and self._fd >= 0:  # the lock file: released, then removed
            os.close(self._fd)
            self._fd = -1
        if not (WINDOWS and self.durable):
            self._unlinked = remove(self.path)

    def close(self, *, unlink: bool | None = None) -> None:
        """Unmap and close; the owner (or ``unlink=True``) also removes the segment. A view
        still referenced keeps the mapping until it goes."""
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:
                pass
            self.mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if (self.owner if unlink is None else unlink) and not self._unlinked:
            self._unlinked = remove(self.path)


def _ensure_shm_dir() -> None:
    if WINDOWS and not SHM_DIR.is_dir():  # inside the default runtime directory, private
        ensure_private_dir(SHM_DIR.parent)
        ensure_private_dir(SHM_DIR)


def _map(fd: int, size: int, populate: bool) -> mmap.mmap:
    if WINDOWS:
        return mmap.mmap(fd, size, access=mmap.ACCESS_WRITE)
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    return mmap.mmap(fd, size, flags=flags)


def _create_pagefile_mapping(name: str, size: int) -> mmap.mmap:
    """A new named mapping backed by the paging file, its commit charged now (a machine
    without that much left fails here, not at a later write)."""
    import _winapi

    h = _winapi.CreateFileMapping(_winapi.INVALID_HANDLE_VALUE, _winapi.NULL,
                                  _winapi.PAGE_READWRITE, (size >> 32) & 0xFFFFFFFF,
                                  size & 0xFFFFFFFF, name)
    try:
        if _winapi.GetLastError() == _winapi.ERROR_ALREADY_EXISTS:
            raise FileExistsError(errno.EEXIST, f"shared memory {name} exists")
        return mmap.mmap(-1, size, tagname=name)
    finally:
        _winapi.CloseHandle(h)


def _open_pagefile_mapping(name: str) -> mmap.mmap:
    import _winapi

    h = _winapi.OpenFileMapping(_winapi.FILE_MAP_READ, False, name)  # FileNotFoundError
    try:
        view = _winapi.MapViewOfFile(h, _winapi.FILE_MAP_READ, 0, 0, 0)
        try:
            size = _winapi.VirtualQuerySize(view)
        finally:
            _winapi.UnmapViewOfFile(view)
        return mmap.mmap(-1, size, tagname=name)  # while `h` keeps the mapping alive
    finally:
        _winapi.CloseHandle(h)


def remove_stale_segments(prefix: str, stale: Callable[[bytes, float], bool]) -> list[str]:
    """Remove this user's segments named ``prefix*`` whose owner is gone (nobody holds the
    lock) and that ``stale(first 4096 bytes, age in seconds)`` calls stale; their names.
    The owner lock of a Windows ring is stale as soon as its owner is gone."""
    removed: list[str] = []
    if not SHM_DIR.is_dir():
        return removed
    for path in SHM_DIR.glob(prefix + "*"):
        try:
            fd = os.open(path, os.O_RDWR | O_NOFOLLOW | O_BINARY | O_CLOEXEC)
        except OSError:
            continue
        gone = False
        try:
            st = os.fstat(fd)
            if not owned_by_user(st) or not stat.S_ISREG(st.st_mode) or \
                    not hold_lock(fd, blocking=False):
                continue  # another user's, or its owner holds it
            head = pread(fd, 4096, 0)
            gone = head[:len(_LOCK_MARK)] == _LOCK_MARK or stale(head, time.time() - st.st_mtime)
            if gone and not WINDOWS:
                remove(path)  # while we hold the lock
        except OSError:
            continue
        finally:
            os.close(fd)
        if gone and (not WINDOWS or remove(path)):
            removed.append(path.name)
    return removed


# ---- the default endpoint ----

def default_endpoint(rt: Path) -> str:
    """An ipc socket in the runtime directory where ZeroMQ has ipc; else (Windows' pyzmq)
    loopback TCP on a port the daemon picks and publishes in its connection file."""
    import zmq

    if zmq.has("ipc"):
        return f"ipc://{rt / 'daemon.sock'}"
    return "tcp://127.0.0.1:*"


def selector_event_loops() -> None:
    """asyncio loops that ZeroMQ can poll: Windows' default proactor loop has no add_reader
    (pyzmq would start a selector thread of its own and warn); POSIX's already can."""
    if WINDOWS:
        import asyncio

        asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())


def make_socket_private(path: Path) -> None:
    if not WINDOWS:
        os.chmod(path, 0o600)


# ---- processes ----

def pid_namespace() -> str:
    """The space a pid means something in: the Linux pid namespace, on Windows the machine
    ("" where it cannot be told: pids are then never trusted across processes)."""
    if WINDOWS:
        import socket

        return f"windows:{socket.gethostname()}"
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


class ProcessWatch:
    """Whether process ``pid`` still runs. On Windows a handle opened once: it keeps the pid
    from being reused and tells the moment the process ends. On Linux a pidfd, polled: the
    same, in ~1 µs (signal 0 and a read of /proc took 20 µs, and up to ~300 µs on a busy
    VM, in the camera loop's append() every 0.25 s: its slowest calls). Elsewhere signal 0
    and /proc (a zombie, dead but not reaped, counts as gone)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._handle = None
        self._poll = self._pidfd = None
        if not WINDOWS and pid > 0 and hasattr(os, "pidfd_open"):
            import select

            try:
                self._pidfd = os.pidfd_open(pid)
            except OSError as e:  # ESRCH: gone already; else (ENOSYS, ...) signal 0 and /proc
                self._gone = e.errno == errno.ESRCH
            else:
                self._poll = select.poll()
                self._poll.register(self._pidfd, select.POLLIN)
        if WINDOWS and pid > 0:
            import _winapi

            try:
                self._handle = _winapi.OpenProcess(
                    _winapi.SYNCHRONIZE | _PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
            except OSError:
                self._handle = None  # gone already (or not ours to watch: then trust pid_alive)
                self._gone = not _pid_alive_windows(pid)

    def alive(self) -> bool:
        if not WINDOWS:
            if self._poll is not None:
                return not self._poll.poll(0)  # readable once the process has ended
            if getattr(self, "_gone", False):
                return False
            return pid_alive(self.pid)
        if self._handle is None:
            return self.pid > 0 and not getattr(self, "_gone", True)
        import _winapi

        return _winapi.WaitForSingleObject(self._handle, 0) == _winapi.WAIT_TIMEOUT

    def close(self) -> None:
        if self._pidfd is not None:
            self._poll = None
            os.close(self._pidfd)
            self._pidfd = None
        if self._handle is not None:  # (_winapi imported at the top: __del__ may run at exit)
            _winapi.CloseHandle(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000


def _pid_alive_windows(pid: int) -> bool:
    import _winapi

    try:
        h = _winapi.OpenProcess(_winapi.SYNCHRONIZE | _PROCESS_QUERY_LIMITED_INFORMATION,
                                False, pid)
    except PermissionError:
        return True  # exists, another user's
    except OSError:
        return False
    try:
        return _winapi.WaitForSingleObject(h, 0) == _winapi.WAIT_TIMEOUT
    finally:
        _winapi.CloseHandle(h)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    if pid <= 0:
        return False
    if WINDOWS:
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill()
    return text[text.rfind(")") + 2:][:1] not in ("Z", "X")


#: starts argv[1:] in a session of its own and prints its pid: the daemon is then nobody's
#: child here (init reaps it when it exits; no zombie, no "subprocess still running" warning)
_LAUNCHER = ("import subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=sys.stdout, "
             "stderr=sys.stdout, start_new_session=True)\n"
             "sys.stderr.write(str(p.pid))\n")
_DETACHED_PROCESS, _CREATE_NEW_PROCESS_GROUP, _CREATE_NO_WINDOW = 0x8, 0x200, 0x08000000


def spawn_detached(argv: list[str], log_path: Path) -> int:
    """Start ``argv`` detached from this process, its output appended to ``log_path``; its
    pid. POSIX: a double fork into a session of its own (no zombie, no terminal signals).
    Windows: a new process without a console, in a group of its own (the acquisition
    program's Ctrl+C is not the daemon's), created rather than forked, as everything there."""
    with open(log_path, "ab") as log:
        if WINDOWS:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, close_fds=True,
                                    creationflags=_DETACHED_PROCESS | _CREATE_NEW_PROCESS_GROUP
                                    | _CREATE_NO_WINDOW)
            proc.returncode = 0  # never waited for: no "still running" warning at exit
            return proc.pid
        launcher = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.PIPE,
                                  check=True, timeout=30)
    return int(launcher.stderr.decode().strip())


def request_stop(pid: int) -> bool:
    """Ask daemon ``pid`` to finalize its streams and exit (SIGTERM; on Windows its stop
    event). False if there is no such process (or, on Windows, it has no stop event)."""
    if WINDOWS:
        return _win32.request_stop(pid)
    try:
        os.kill(pid, signal.SIGTERM)
        return True
    except ProcessLookupError:
        return False


def on_stop_request(stop: Callable[[], None], finished: threading.Event) -> None:
    """Call ``stop`` (from any thread) when this process is asked to end: SIGTERM or SIGINT
    (Ctrl+C) on POSIX; on Windows `request_stop`, Ctrl+C, Ctrl+Break, the console closed,
    log-off and shutdown (for the last three it waits for ``finished``, briefly: Windows
    ends the process after ~5 s). From the main thread."""
    if WINDOWS:
        _win32.StopEvent(stop)
        _win32.on_console_control(stop, finished)
        return
    signal.signal(signal.SIGTERM, lambda *_: stop())
    signal.signal(signal.SIGINT, lambda *_: stop())
