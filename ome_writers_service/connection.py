"""Where the local daemon listens and how a client proves it may use it.

The daemon writes a connection file (``daemon.json``, mode 0600) into a per-user runtime
directory (mode 0700), as Jupyter does with its kernel connection files: the endpoint, the
daemon's pid and a secret token that every ``open`` request must carry.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .safe_files import ensure_private_dir, write_atomically

CONNECTION_FILE = "daemon.json"
ENV_RUNTIME_DIR = "OME_WRITERS_SERVICE_RUNTIME_DIR"


def runtime_dir(path: str | os.PathLike | None = None) -> Path:
    """The per-user runtime directory, created 0700. One that is a symlink, another user's,
    or open to others is refused (PermissionError), never repaired: in the shared temp
    directory another user may have made it."""
    if path is None:
        path = os.environ.get(ENV_RUNTIME_DIR)
    if path is None:
        base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        path = Path(base) / f"ome-writers-service-{os.getuid()}"
    return ensure_private_dir(path)


def default_endpoint(rt: Path) -> str:
    return f"ipc://{rt / 'daemon.sock'}"


@dataclass(frozen=True)
class CurveKeys:
    """ZeroMQ CURVE keys (Z85 text) of a daemon that encrypts its connections: its public
    key, and the one client key pair it accepts (handed out in the 0600 connection file)."""

    server_public: str
    client_public: str
    client_secret: str

    def __repr__(self) -> str:  # never print a secret
        return f"CurveKeys(server_public={self.server_public!r}, client_public=...)"


@dataclass
class ConnectionInfo:
    """What a client needs to reach a daemon."""

    endpoint: str
    token: str
    pid: int
    version: str = ""
    pidns: str = ""  #: the daemon's pid namespace: its pid means something only within it
    #: CURVE keys (Z85) when the daemon encrypts: {"server_public", "client_public",
    #: "client_secret"}; None: PLAIN (ipc and loopback)
    curve: dict | None = None

    def __repr__(self) -> str:  # never print the token or a secret key
        return (f"ConnectionInfo(endpoint={self.endpoint!r}, pid={self.pid}, "
                f"curve={self.curve is not None})")

    @property
    def curve_keys(self) -> CurveKeys | None:
        return CurveKeys(**self.curve) if self.curve else None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ConnectionInfo:
        """A connection file copied from the daemon's machine (e.g. to a remote client)."""
        return cls(**json.loads(Path(path).read_text()))

    def write(self, rt: Path) -> Path:
        path = rt / CONNECTION_FILE
        write_atomically(path, json.dumps(asdict(self)).encode(), mode=0o600)
        return path

    @classmethod
    def read(cls, rt: Path) -> ConnectionInfo | None:
        try:
            data = json.loads((rt / CONNECTION_FILE).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill()
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")


def pid_namespace() -> str:
    """This process's pid namespace ("" where there is no procfs)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
