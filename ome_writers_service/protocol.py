"""The wire protocol between clients and the writer daemon (see PROTOCOL.md, the normative text).

Every message is a ZeroMQ multipart message: ``[TAG, header]`` or ``[TAG, header, payload]``.
``TAG`` names the protocol and its major version; ``header`` is a UTF-8 JSON object with a
``type`` field; ``payload`` is raw frame bytes (inline frames only). The client socket is a
DEALER, the daemon's a ROUTER (which prepends the peer identity on receipt).
"""

from __future__ import annotations

import json
import re
from typing import Any

TAG = b"OWS1"
PROTOCOL_VERSION = 1
#: The minor version: compatible additions to version 1 (PROTOCOL.md §8). ``open`` says the
#: client's (absent: 0), ``opened`` the daemon's; what a stream does follows the lower one.
PROTOCOL_MINOR = 1

#: Largest header the daemon accepts; frames travel as payload, never in the header.
MAX_HEADER_BYTES = 1 << 20

# message types, client -> daemon
OPEN = "open"
FRAME = "frame"
SKIP = "skip"
METADATA = "metadata"
UPDATE_METADATA = "update_metadata"
STATUS = "status"
CLOSE = "close"
PING = "ping"
HEARTBEAT = "heartbeat"
READ = "read"
# daemon -> client
OPENED = "opened"
RELEASE = "release"
STATUS_REPLY = "status_reply"
CLOSED = "closed"
ERROR = "error"
PONG = "pong"
PLANE = "plane"

# error codes (the ``code`` of an ``error`` message)
E_MALFORMED = "malformed"          # not [TAG, JSON object(, payload)]
E_VERSION = "unsupported_version"  # TAG of another protocol version
E_UNKNOWN_TYPE = "unknown_type"
E_AUTH = "unauthorized"            # missing or wrong token
E_SETTINGS = "invalid_settings"
E_NO_STREAM = "no_such_stream"
E_SEQUENCE = "bad_sequence"        # frame number out of order or beyond the acquisition
E_SLOT = "bad_slot"
E_FRAME = "bad_frame"              # inline payload of the wrong size
E_WRITE = "write_failed"           # the backend failed (disk full, permission...)
E_READ = "read_failed"             # a live-view read failed (the stream goes on)
E_RESOURCES = "resources"          # e.g. /dev/shm too small for the ring
E_SHUTDOWN = "shutdown"            # the daemon ends the stream itself: shutdown, client lost


#: Every connection authenticates in the ZMTP handshake with the PLAIN mechanism: this user
#: name and the daemon's token as password. A peer without them never reaches the daemon.
PLAIN_USERNAME = b"ows"


def authenticate(sock: Any, token: str, curve: Any = None) -> None:
    """Give a ZeroMQ socket the credentials the daemon asks for (call before connect): the
    token over PLAIN, or, for a daemon that encrypts (`connection.CurveKeys`), CURVE with the
    daemon's public key and the client key pair of its connection file."""
    if curve is not None:
        sock.curve_serverkey = curve.server_public.encode()
        sock.curve_publickey = curve.client_public.encode()
        sock.curve_secretkey = curve.client_secret.encode()
        return
    sock.plain_username = PLAIN_USERNAME
    sock.plain_password = token.encode()


def is_loopback(endpoint: str) -> bool:
    """Whether ``endpoint`` never leaves this machine: ipc, or TCP on 127.0.0.0/8 / ::1 /
    localhost. Any other endpoint needs CURVE (PLAIN sends the token in clear text)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``code`` is one of the E_* codes.
    ``stream`` and ``seq`` say which stream and frame the refused message named (0 and -1:
    none), and go into the `error` reply."""

    def __init__(self, code: str, message: str, *, stream: int = 0, seq: int = -1) -> None:
        super().__init__(message)
        self.code = code
        self.stream = stream
        self.seq = seq


def encode(header: dict[str, Any], payload: bytes | memoryview | None = None) -> list:
    """Multipart frames of one message."""
    parts: list = [TAG, json.dumps(header, separators=(",", ":")).encode()]
    if payload is not None:
        parts.append(payload)
    return parts


def decode(parts: list) -> tuple[dict[str, Any], Any]:
    """(header, payload or None) of a received message; raises `ProtocolError`."""
    if len(parts) not in (2, 3):
        raise ProtocolError(E_MALFORMED, f"expected 2 or 3 message parts, got {len(parts)}")
    first = memoryview(parts[0])  # bytes, or a zmq frame received without a copy
    tag = bytes(first[:16])
    if len(first) != len(TAG) or tag != TAG:
        if tag[:3] == TAG[:3]:
            raise ProtocolError(E_VERSION, f"protocol {tag!r} is not supported; this daemon "
                                           f"speaks {TAG.decode()} (protocol "
                                           f"{PROTOCOL_VERSION}.{PROTOCOL_MINOR})")
        raise ProtocolError(E_MALFORMED, f"first part must be {TAG!r}, got {tag[:16]!r}")
    raw = parts[1]
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(E_MALFORMED, f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(E_MALFORMED, f"header is not UTF-8 JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError(E_MALFORMED, "header must be a JSON object with a string 'type'")
    return header, (parts[2] if len(parts) == 3 else None)


#: The frame notice without metadata exactly as the reference clients serialize it (keys in
#: this order, no spaces). The daemon reads it without a JSON parser; any other spelling of
#: the same message is parsed as JSON and means the same.
_NOTICE = re.compile(rb'\{"type":"frame","stream":(\d{1,18}),"seq":(\d{1,18}),"slot":(\d{1,18})\}')


def parse_notice(header: bytes) -> tuple[int, int, int] | None:
    """(stream, seq, slot) of a plain frame notice, or None for any other header."""
    m = _NOTICE.fullmatch(header)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


_NOTICE_START = re.compile(rb'\{"type":"frame","stream":(\d{1,18}),"seq":(\d{1,18}),"slot":(\d{1,18})[,}]')


def oversized_frame(header: bytes) -> tuple[int, int, int] | None:
    """(stream, seq, slot) of a frame notice too large to parse (its metadata exceeds the
    header limit), read from its first bytes as the reference clients order them; else None.
    The daemon hands the slot back and names the frame instead of losing both silently."""
    if len(header) <= MAX_HEADER_BYTES:
        return None
    m = _NOTICE_START.match(bytes(memoryview(header)[:128]))
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


_JSON_NAMES = {int: "an integer", str: "a string", dict: "an object", list: "an array",
               bool: "a boolean", float: "a number"}


def field(header: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required=True):
    """A header field of the right JSON type, or a `ProtocolError` naming it, its type and
    the value it has."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if name not in header:
        if required:
            raise ProtocolError(E_MALFORMED, f"{header.get('type', 'message')}: missing field "
                                             f"{name!r}")
        return None
    value = header[name]
    if value is None and not required:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kinds):
        want = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        got = json.dumps(value)
        got = got if len(got) <= 40 else got[:37] + "..."
        raise ProtocolError(E_MALFORMED, f"{header.get('type', 'message')}: field {name!r} must "
                                         f"be {want}, not {got}")
    return value


def error_header(code: str, message: str, *, stream: int = 0, seq: int = -1,
                 exception: str | None = None) -> dict[str, Any]:
    """An `error` message's header. Every field is always there, with one JSON type (clients
    such as LabVIEW read replies into fixed structures): ``stream`` 0 and ``seq`` -1 when
    the error concerns no stream or no frame, ``exception`` "" when no Python type applies."""
    return {"type": ERROR, "code": code, "message": message, "stream": stream, "seq": seq,
            "exception": exception or ""}


def error(code: str, message: str, **extra: Any) -> list:
    return encode(error_header(code, message, **extra))


#: Python exception types an `error` message may name in its optional ``exception`` field: the
#: type the in-process stream raises for the same cause, which a client raises in turn.
EXCEPTION_TYPES = ("FileExistsError", "FileNotFoundError", "IsADirectoryError",
                   "NotADirectoryError", "PermissionError", "OSError", "MemoryError",
                   "KeyError", "IndexError", "TypeError", "ValueError", "NotImplementedError")


def exception_name(e: BaseException) -> str | None:
    """The most specific of `EXCEPTION_TYPES` that ``e`` is an instance of (or None)."""
    for cls in type(e).__mro__:
        if cls.__name__ in EXCEPTION_TYPES and cls.__module__ == "builtins":
            return cls.__name__
    return None
