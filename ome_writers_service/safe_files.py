"""Creating files and directories that another local user cannot redirect.

Datasets are often written into shared acquisition folders, and the default runtime directory
sits in the world-writable temp directory: a name we are about to create may already be a
symlink planted by someone else. Every file the service creates goes through here: new files
are created with ``O_EXCL | O_NOFOLLOW`` (an existing name, symlink or not, is never opened),
temporary files get an unpredictable name in the target's directory (``mkstemp``), and a
private directory is refused, never repaired, when it is a symlink, another user's, or open to
others (as ssh-agent and tmux refuse theirs).

What POSIX and Windows do differently here (private directories and files, binary mode,
renaming over a file a reader holds open) comes from `platform`.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from . import platform
from .platform import ensure_private_dir  # noqa: F401 - the runtime directory's checks

#: Flags of a file that must not exist yet: never opened through a symlink, never truncated.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | platform.O_NOFOLLOW | platform.O_BINARY | \
    platform.O_CLOEXEC
#: The umask at import (setting it to read it is not thread-safe; files made later follow it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


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
    planted name is ever written through. ``durable``: fsync before the rename. ``mode``
    0o600: only this user may read it (on Windows too: its own DACL)."""
    target = Path(target)
    make = platform.create_private_file if mode == 0o600 else tempfile.mkstemp
    fd, tmp = make(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                platform.set_mode(f.fileno(), mode & ~_UMASK)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        platform.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


#: errors of a full disk (or quota): a new file cannot be made, an existing one rewritten
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def rewrite_in_place(target: str | os.PathLike, data: bytes) -> bool:
    """Overwrite an existing file of ours with ``data`` padded with spaces to its size (no
    new disk space needed: for a text format with room reserved at the end, e.g. JSON). False
    when the file is too small to hold ``data`` or cannot be opened. Not atomic: the fallback
    when `write_atomically` finds the disk full."""
    try:
        fd = os.open(target, os.O_WRONLY | platform.O_NOFOLLOW | platform.O_BINARY)
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
