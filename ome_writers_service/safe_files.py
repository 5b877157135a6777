"""Creating files and directories that another local user cannot redirect.

Datasets are often written into shared acquisition folders, and the default runtime directory
sits in the world-writable temp directory: a name we are about to create may already be a
symlink planted by someone else. Every file the service creates goes through here: new files
are created with ``O_EXCL | O_NOFOLLOW`` (an existing name, symlink or not, is never opened),
temporary files get an unpredictable name in the target's directory (``mkstemp``), and a
private directory is refused, never repaired, when it is a symlink, another user's, or open to
others (as ssh-agent and tmux refuse theirs).

These are the POSIX calls of the service's file handling, kept in one place so that another
platform can supply its own.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

#: Flags of a file that must not exist yet: never opened through a symlink, never truncated.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | \
    getattr(os, "O_CLOEXEC", 0)
#: The umask at import (setting it to read it is not thread-safe; files made later follow it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def ensure_private_dir(path: str | os.PathLike) -> Path:
    """``path`` as a directory only this user can enter: created 0700 if missing; refused
    (PermissionError naming it and why) if it is a symlink, not a directory, owned by another
    user, or open to group or others."""
    p = Path(path)
    try:
        os.mkdir(p, 0o700)  # never follows a symlink: an existing name fails here
        created = True
    except FileExistsError:
        created = False
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True)
        return ensure_private_dir(p)
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        raise PermissionError(f"runtime directory {p} is a symlink (to {os.readlink(p)!r}): "
                              "refusing it, another user may have planted it; remove it, or set "
                              "OME_WRITERS_SERVICE_RUNTIME_DIR or XDG_RUNTIME_DIR")
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"runtime directory {p} exists and is not a directory")
    if st.st_uid != os.getuid():
        raise PermissionError(f"runtime directory {p} belongs to uid {st.st_uid}, not to this "
                              f"user (uid {os.getuid()}): refusing it; remove it, or set "
                              "OME_WRITERS_SERVICE_RUNTIME_DIR or XDG_RUNTIME_DIR")
    mode = stat.S_IMODE(st.st_mode)
    if created and mode != 0o700:  # our own, fresh: the umask may have taken bits away
        os.chmod(p, 0o700)
    elif mode & 0o077:
        raise PermissionError(f"runtime directory {p} has mode {mode:04o}: others may enter it; "
                              f"make it private (chmod 700 {p}) or use another one")
    return p


def create_new_file(path: str | os.PathLike, mode: int = 0o644, *,
                    replace_stale: bool = False) -> int:
    """A new file at ``path``, open for writing (a file descriptor). An existing name is
    never opened; with ``replace_stale`` it is unlinked first (a symlink is removed, not
    followed) — for a file of ours a crash left behind, such as a journal."""
    try:
        return os.open(path, _NEW_FILE, mode)
    except FileExistsError:
        if not replace_stale:
            raise
    os.unlink(path)
    return os.open(path, _NEW_FILE, mode)


def write_atomically(target: str | os.PathLike, data: bytes, *, mode: int = 0o644,
                     durable: bool = False) -> None:
    """Replace ``target`` with ``data``: written to a new temporary file of unpredictable
    name beside it, then renamed over it, so that a reader never sees half of it and no
    planted name is ever written through. ``durable``: fsync before the rename."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode & ~_UMASK)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise



#: errors of a full disk (or quota): a new file cannot be made, an existing one rewritten
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def rewrite_in_place(target: str | os.PathLike, data: bytes) -> bool:
    """Overwrite an existing file of ours with ``data`` padded with spaces to its size (no
    new disk space needed: for a text format with room reserved at the end, e.g. JSON). False
    when the file is too small to hold ``data`` or cannot be opened. Not atomic: the fallback
    when `write_atomically` finds the disk full."""
    try:
        fd = os.open(target, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if len(data) > size:
            return False
        view = memoryview(data + b" " * (size - len(data)))
        while view:
            view = view[os.write(fd, view):]
        return True
    finally:
        os.close(fd)
