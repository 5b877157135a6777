"""Protocol 1.1 (PROTOCOL.md), rule by rule, with a raw ZeroMQ peer: a DEALER socket that
builds and reads the messages itself (JSON and bytes, as a C or LabVIEW client does), not
the Python client (only the test of what a 1.1 client says to a 1.0 daemon uses it, against
a stand-in for that daemon). Each test names the section whose rule it shows."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from ome_writers_service import platform

from ome_writers_service import protocol as P
from ome_writers_service.client import ServiceError, ServiceStream
from ome_writers_service.schema import AcquisitionSettings

from old_daemon import OldDaemon
from service_util import REPO, read_image, running_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("rt"))


class Peer:
    """A client written against PROTOCOL.md alone: one DEALER, PLAIN credentials, messages
    as ``[b"OWS1", JSON header(, payload)]``. Releases are counted as they arrive."""

    def __init__(self, daemon, *, token: str | None = None, mechanism: str = "plain"):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.token = daemon.token if token is None else token
        if mechanism == "plain":
            self.sock.plain_username = b"ows"
            self.sock.plain_password = self.token.encode()
        elif mechanism == "curve":  # a client of a CURVE daemon
            self.sock.curve_serverkey = zmq.curve_keypair()[0]
            self.sock.curve_publickey, self.sock.curve_secretkey = zmq.curve_keypair()
        self.monitor = self.sock.get_monitor_socket()
        self.sock.connect(daemon.endpoint)
        self.released: dict[int, list[int]] = {}  # stream -> slots, in arrival order
        self.kept: list[dict] = []  # what `expect` read past (errors, replies)

    def send(self, header: dict, payload: bytes | None = None) -> None:
        parts = [b"OWS1", json.dumps(header).encode()]
        self.sock.send_multipart(parts if payload is None else [*parts, payload])

    def recv(self, timeout: float = 10.0) -> tuple[dict, bytes | None]:
        assert self.sock.poll(int(timeout * 1000)), "no message from the daemon"
        parts = self.sock.recv_multipart()
        assert parts[0] == b"OWS1" and len(parts) in (2, 3), parts[:2]
        header = json.loads(parts[1])
        if header["type"] == "release":
            self.released.setdefault(header["stream"], []).extend(header["slots"])
        return header, parts[2] if len(parts) == 3 else None

    def expect(self, kind: str, timeout: float = 10.0, **match) -> dict:
        """The next message of type ``kind`` (matching ``match``); releases are taken in,
        anything else is kept in ``kept``."""
        for i, h in enumerate(self.kept):
            if h["type"] == kind and all(h.get(k) == v for k, v in match.items()):
                return self.kept.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            h, _ = self.recv(max(0.0, deadline - time.monotonic()))
            if h["type"] == kind and all(h.get(k) == v for k, v in match.items()):
                return h
            if h["type"] != "release":
                self.kept.append(h)

    def request(self, header: dict, kind: str, **match) -> dict:
        self.send(header)
        return self.expect(kind, **match)

    def open(self, settings: dict, transport: str = "inline", minor: int | None = 1,
             pid: bool = True) -> dict:
        """Open a stream; with ``pid`` the daemon watches this process (no heartbeats)."""
        header = {"type": "open", "version": 1, "token": self.token, "transport": transport,
                  "settings": settings}
        if minor is not None:
            header["minor"] = minor
        if pid:
            header.update(pid=os.getpid(), pidns=platform.pid_namespace())
        self.send(header)
        h = self.expect_one_of("opened", "error")
        assert h["type"] == "opened", h
        return h

    def expect_one_of(self, *kinds: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            h, _ = self.recv(max(0.0, deadline - time.monotonic()))
            if h["type"] in kinds:
                return h
            if h["type"] != "release":
                self.kept.append(h)

    def close_stream(self, sid: int, frames: int) -> dict:
        return self.request({"type": "close", "stream": sid, "frames": frames}, "closed",
                            stream=sid)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)


def settings(root: Path, frames: int = 8, size: int = 8, **kw) -> dict:
    kw.setdefault("ring_slots", 8)
    return {"root_path": str(root), "dtype": "uint16", "overwrite": True,
            "dimensions": [{"name": "t", "count": frames, **kw.pop("t", {})},
                           {"name": "y", "count": size}, {"name": "x", "count": size}], **kw}


def pixels(i: int, size: int = 8) -> bytes:
    return np.full((size, size), i + 1, np.uint16).tobytes()


def test_invalid_settings_reach_a_raw_client_in_plain_words(daemon, tmp_path):
    """§6 invalid_settings: the message names the field, with no validation dump."""
    peer = Peer(daemon)
    bad = settings(tmp_path / "b.ome.zarr", t={"count": -3, "chunk_size": 1})
    peer.send({"type": "open", "version": 1, "minor": 1, "token": daemon.token,
               "transport": "inline", "settings": bad})
    err = peer.expect("error")
    assert err["code"] == "invalid_settings" and err["stream"] == 0 and err["seq"] == -1
    assert err["message"] == ("invalid settings: dimensions[0].count: Input should be "
                              "greater than 0 (got -3)"), err
    # a path without a suffix: accepted, and opened says where the data goes and why
    opened = peer.open(settings(tmp_path / "plain"))
    assert opened["paths"] == [str(tmp_path / "plain.ome.zarr")]
    assert any("could not be inferred" in w for w in opened["warnings"]), opened
    peer.close_stream(opened["stream"], 0)
    peer.close()


# ---- §2.2 and §6: every error names its stream and frame ---------------------------------

def test_errors_name_their_stream_and_frame(daemon, tmp_path):
    """Two streams on one socket (§1): a refused frame of the second names the second and
    the frame; errors of other messages that name a stream carry it; errors about no stream
    carry 0 and -1. Every field has one type; no message shows a Python dump or None."""
    peer = Peer(daemon)
    a = peer.open(settings(tmp_path / "a.ome.zarr"))["stream"]
    b = peer.open(settings(tmp_path / "b.ome.zarr"))["stream"]
    peer.send({"type": "frame", "stream": b, "seq": 0, "slot": 0}, pixels(0))
    peer.send({"type": "frame", "stream": b, "seq": 0, "slot": 1}, pixels(0))  # seq again
    err = peer.expect("error")
    assert (err["code"], err["stream"], err["seq"]) == ("bad_sequence", b, 0), err
    cases = [  # (message, payload, code, stream, seq)
        ({"type": "frame", "stream": a, "seq": 3, "slot": 99}, pixels(3), "bad_slot", a, 3),
        ({"type": "frame", "stream": a, "seq": 0, "slot": 0}, None, "bad_frame", a, 0),
        ({"type": "frame", "stream": a, "seq": 0, "slot": 0, "meta": {"delta_t": "x"}},
         pixels(0), "malformed", a, 0),
        ({"type": "frame", "stream": a, "seq": 0, "slot": 0, "meta": [1]}, pixels(0),
         "malformed", a, 0),
        ({"type": "frame", "stream": 999, "seq": 4, "slot": 0}, pixels(4), "no_such_stream",
         999, 4),
        ({"type": "skip", "stream": b, "seq": 7, "count": 1}, None, "bad_sequence", b, 7),
        ({"type": "metadata", "stream": a, "namespace": "ome", "value": {}}, None, "malformed",
         a, -1),
        ({"type": "update_metadata", "stream": b, "attributes": {"nope": {}}}, None,
         "malformed", b, -1),
        ({"type": "read", "stream": a, "position": 5, "index": [0]}, None, "malformed", a, -1),
        ({"type": "status", "stream": 999}, None, "no_such_stream", 999, -1),
        ({"type": "close", "stream": b, "frames": 0}, None, "bad_sequence", b, -1),
        ({"type": "heartbeat", "stream": a, "key": "wrong"}, None, "no_such_stream", a, -1),
        ({"type": "frame", "stream": "1", "seq": 5, "slot": 0}, None, "malformed", 0, 5),
        ({"type": "dance"}, None, "unknown_type", 0, -1),
        ({"type": "open", "version": 1, "token": daemon.token, "transport": "carrier pigeon",
          "settings": {}}, None, "malformed", 0, -1),
    ]
    for header, payload, code, stream, seq in cases:
        peer.send(header, payload)
        err = peer.expect("error")
        assert (err["code"], err["stream"], err["seq"]) == (code, stream, seq), (header, err)
        assert isinstance(err["exception"], str) and isinstance(err["message"], str), err
        assert not re.search(r"\bNone\b|validation error|errors\.pydantic|Traceback",
                             err["message"]), err
    for raw, code in [([b"OWS1", b"{" + b" " * (1 << 20) + b"}"], "malformed"),  # > 1 MiB
                      ([b"OWS2", b'{"type":"ping"}'], "unsupported_version"),
                      ([b"OWS1", b"not json"], "malformed")]:
        peer.sock.send_multipart(raw)
        err = peer.expect("error")
        assert (err["code"], err["stream"], err["seq"]) == (code, 0, -1), err
    for sid in (a, b):
        peer.close_stream(sid, 1 if sid == b else 0)
    peer.close()


# ---- §3: a refused frame gives its slot back ------------------------------------------------

REFUSALS = [  # (why, frame message fields, payload): each is refused with its slot given back
    ("refused metadata", {"meta": {"delta_t": float("nan")}}, "ok"),
    ("metadata not an object", {"meta": "fast"}, "ok"),
    ("an old frame number", {"seq": 0}, "ok"),
    ("beyond the declared frames", {"seq": 99}, "ok"),
    ("a short inline payload", {}, "short"),
    ("no inline payload", {}, None),
]


@pytest.mark.parametrize("transport", ["inline", "shm"])
def test_refused_frames_give_their_slots_back_and_never_leak_credits(daemon, tmp_path,
                                                                     transport):
    """§3: a frame notice refused for any reason is answered with an error (stream, seq)
    and its slot comes back in a release. A client that keeps its credits by the releases
    alone — as §3 says — gets through more refusals than it has credits and still sends
    every frame; `closed` counts the refusals."""
    n, credits = 6, 8
    peer = Peer(daemon)
    opened = peer.open(settings(tmp_path / f"r-{transport}.ome.tiff", frames=n),
                       transport=transport)
    sid = opened["stream"]
    assert opened["credits"] == credits
    free = set(range(credits))
    peer.send({"type": "frame", "stream": sid, "seq": 0, "slot": 0},
              pixels(0) if transport == "inline" else None)
    free.discard(0)
    sent, refused = 1, 0
    refusals = [r for r in REFUSALS if transport == "inline" or r[2] != "short"]
    if transport == "shm":
        refusals = [(why, f, p) for why, f, p in refusals if p is not None] + [
            ("a payload on an shm stream", {}, "ok")]
    for round_ in range(3):  # 3 x the refusals > the credits: a leak would run out
        for why, fields, payload in refusals:
            slot = min(free)
            free.discard(slot)
            body = {"ok": pixels(sent), "short": b"xx", None: None}[payload]
            if transport == "shm" and why != "a payload on an shm stream":
                body = None
            peer.send({"type": "frame", "stream": sid, "seq": sent, "slot": slot, **fields},
                      body)
            err = peer.expect("error", stream=sid)
            assert err["seq"] == fields.get("seq", sent), (why, err)
            refused += 1
            while slot not in peer.released.get(sid, []):  # the release for the refusal
                peer.recv()
            peer.released[sid].remove(slot)
            free.add(slot)
    for i in range(sent, n):  # every frame still goes through
        slot = min(free)
        free.discard(slot)
        peer.send({"type": "frame", "stream": sid, "seq": i, "slot": slot},
                  pixels(i) if transport == "inline" else None)
    closed = peer.close_stream(sid, n)
    assert closed["frames_written"] == n and closed["frames_refused"] == refused, closed
    # §3: by `closed` every slot is back: the releases name every slot still lent
    back = set(peer.released.get(sid, [])) | free
    assert back == set(range(credits)), (back, peer.released)
    peer.close()


def test_a_1_0_client_keeps_working(daemon, tmp_path):
    """§8: an `open` without `minor` (a 1.0 client) streams as before; refused metadata
    gives its slot back (1.0 said so in §5), other refusals do not send a release the 1.0
    client did not expect (it may have freed the slot itself)."""
    peer = Peer(daemon)
    opened = peer.open(settings(tmp_path / "old.ome.zarr", frames=3), minor=None)
    sid = opened["stream"]
    assert opened["minor"] == 1 and opened["ring"] is None and opened["frames"] == 3
    peer.send({"type": "frame", "stream": sid, "seq": 0, "slot": 0}, pixels(0))
    peer.send({"type": "frame", "stream": sid, "seq": 0, "slot": 1}, pixels(0))
    assert peer.expect("error", stream=sid)["code"] == "bad_sequence"
    peer.send({"type": "frame", "stream": sid, "seq": 1, "slot": 2, "meta": {"index": 1}},
              pixels(1))
    assert peer.expect("error", stream=sid)["code"] == "malformed"
    for i in (1, 2):
        peer.send({"type": "frame", "stream": sid, "seq": i, "slot": 2 + i}, pixels(i))
    closed = peer.close_stream(sid, 3)
    assert closed["frames_written"] == 3 and closed["errors"] == [], closed
    assert 2 in peer.released[sid] and 1 not in peer.released[sid], peer.released
    peer.close()
    got = read_image(str(tmp_path / "old.ome.zarr"))
    assert [int(p[0, 0]) for p in got] == [1, 2, 3]


def test_an_inline_zarr_stream_closed_after_its_last_frame_gets_every_release(daemon,
                                                                            tmp_path):
    """§3: the last frames of a chunk still being filled come back too, before `closed`."""
    peer = Peer(daemon)
    sid = peer.open(settings(tmp_path / "c.ome.zarr", frames=10, t={"chunk_size": 4},
                             ring_slots=16))["stream"]
    for i in range(10):
        peer.send({"type": "frame", "stream": sid, "seq": i, "slot": i}, pixels(i))
    peer.send({"type": "close", "stream": sid, "frames": 10})
    while True:
        h, _ = peer.recv()
        if h["type"] == "closed":
            break
    assert sorted(peer.released[sid]) == list(range(10)), peer.released
    assert h["frames_written"] == 10
    peer.close()


# ---- §3.2: any message of the stream is a sign of life ----------------------------------------

def test_any_message_keeps_a_heartbeat_stream_alive_and_silence_ends_it(daemon, tmp_path):
    """§3.2: a client without pid liveness that sends no heartbeat, only a message every
    0.5 s — frames, then a skip, metadata, a status request and a frame the daemon refuses —
    is not taken for lost (the timeout is 1.5 s; this goes on for 4 s); once it falls
    silent, the stream is finalized with what it sent, reason_code client_lost."""
    peer = Peer(daemon)
    opened = peer.open(settings(tmp_path / "slow.ome.tiff", frames=20), pid=False)
    sid = opened["stream"]
    assert opened["liveness"] == "heartbeat"
    start = time.monotonic()
    messages = [({"type": "frame", "stream": sid, "seq": i, "slot": i}, pixels(i))
                for i in range(4)] + [
        ({"type": "skip", "stream": sid, "seq": 4, "count": 1}, None),
        ({"type": "metadata", "stream": sid, "namespace": "lab", "value": {"run": 1}}, None),
        ({"type": "status", "stream": sid}, None),
        ({"type": "frame", "stream": sid, "seq": 0, "slot": 4}, pixels(0)),  # refused
    ]
    for header, payload in messages:
        peer.send(header, payload)
        time.sleep(0.5)
    assert time.monotonic() - start > 2 * 1.5
    assert peer.expect("error", stream=sid)["code"] == "bad_sequence"
    status = peer.request({"type": "status", "stream": sid}, "status_reply")
    assert (status["frames_received"], status["frames_skipped"]) == (4, 1), status
    silent = time.monotonic()
    closed = peer.expect("closed", timeout=10, stream=sid)
    assert closed["reason_code"] == "client_lost" and closed["frames_written"] == 4, closed
    assert 1.4 < time.monotonic() - silent < 5
    assert "no message or heartbeat from the client" in closed["reason"], closed
    peer.close()


# ---- §2.2: fixed-type fields; §8: the version handshake ------------------------------------

def test_every_reply_field_has_one_type(daemon, tmp_path):
    """§2.2: where a 1.0 field changes type (ring, frames, frames_expected, the streams
    object), 1.1 gives a companion of one type; opened says the daemon's minor version."""
    peer = Peer(daemon)
    inline = peer.open(settings(tmp_path / "i.ome.zarr", frames=2))
    shm = peer.open({**settings(tmp_path / "s.ome.zarr"), "dimensions": [
        {"name": "t", "count": None}, {"name": "y", "count": 8}, {"name": "x", "count": 8}]},
        transport="shm")
    assert inline["minor"] == 1 and shm["minor"] == 1
    assert (inline["ring_name"], inline["ring_path"]) == ("", "")
    assert shm["ring_name"] == shm["ring"]["name"] and shm["ring_path"] == shm["ring"]["path"]
    assert (inline["frames_declared"], inline["unbounded"]) == (2, False)
    assert (shm["frames_declared"], shm["unbounded"]) == (0, True)
    assert inline["warnings"] == []
    status = peer.request({"type": "status"}, "status_reply")
    assert status["minor"] == 1
    listed = {r["stream"]: r for r in status["stream_list"]}
    assert listed[inline["stream"]] == status["streams"][str(inline["stream"])]
    assert listed[shm["stream"]]["unbounded"] is True
    assert listed[shm["stream"]]["frames_declared"] == 0
    assert peer.request({"type": "ping"}, "pong")["minor"] == 1
    for opened in (inline, shm):
        closed = peer.close_stream(opened["stream"], 0)
        assert closed["reason_code"] == "closed_by_client" and closed["errors"] == []
        assert isinstance(closed["frames_refused"], int)
    peer.send({"type": "open", "version": 1, "minor": "1", "token": daemon.token,
               "settings": settings(tmp_path / "m.ome.zarr")})
    assert peer.expect("error")["code"] == "malformed"
    peer.send({"type": "open", "version": 2, "token": daemon.token,
               "settings": settings(tmp_path / "v.ome.zarr")})
    err = peer.expect("error")
    assert err["code"] == "unsupported_version", err
    assert err["message"] == "open: the client speaks protocol 2.0, this daemon 1.1 (another " \
                             "major version)", err
    peer.close()


def test_a_newer_client_is_told_both_versions(daemon, tmp_path):
    """§8: a client of a later minor version is served (the stream follows 1.1), and settings
    this daemon does not know are refused in words that name both versions."""
    peer = Peer(daemon)
    opened = peer.open(settings(tmp_path / "n.ome.zarr", frames=1), minor=7)
    assert opened["minor"] == 1
    peer.close_stream(opened["stream"], 0)
    newer = settings(tmp_path / "n2.ome.zarr")
    newer["dimensions"][0]["newer_field"] = 1
    peer.send({"type": "open", "version": 1, "minor": 7, "token": daemon.token,
               "transport": "inline", "settings": newer})
    err = peer.expect("error")
    assert err["code"] == "invalid_settings", err
    assert err["message"] == (
        "invalid settings: dimensions[0].newer_field: Extra inputs are not permitted (got 1) "
        "(the client speaks protocol 1.7, this daemon 1.1: settings added after 1.1 are "
        "unknown to it; upgrade the daemon)"), err
    peer.close()


def test_the_python_client_names_both_versions_with_a_1_0_daemon(tmp_path):
    """§8: an `open` a 1.0 daemon refuses (its errors have no `seq`) reads as the version
    mismatch it may be, with both versions, besides the daemon's own text."""
    old = OldDaemon(tmp_path)
    try:
        with pytest.raises(ServiceError) as err:
            ServiceStream(AcquisitionSettings.model_validate(settings(tmp_path / "o.ome.zarr")),
                          endpoint=old.endpoint, token=old.token, transport="inline")
        assert old.opens and old.opens[0]["minor"] == 1
    finally:
        old.stop()
    text = str(err.value)
    assert "Extra inputs are not permitted" in text and err.value.code == "invalid_settings"
    assert text.endswith("(the daemon speaks protocol 1.0, this client 1.1: upgrade the "
                         "daemon's ome-writers-service)"), text


# ---- §1: how a refused handshake shows ---------------------------------------------------------

def _handshake_failures(peer: Peer, timeout: float = 5.0) -> set[int]:
    failed = {zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
              zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL}
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while not seen and time.monotonic() < deadline:
        if peer.monitor.poll(100):
            event = recv_monitor_message(peer.monitor)["event"]
            if event in failed:
                seen.add(event)
        assert not peer.sock.poll(0), "a peer without the token got an answer"
    return seen


def test_a_wrong_token_shows_as_handshake_failed_auth(daemon):
    """§1: no message tells a refused peer; its socket monitor does."""
    wrong = Peer(daemon, token="0" * 32)
    wrong.send({"type": "ping"})
    assert _handshake_failures(wrong) == {zmq.EVENT_HANDSHAKE_FAILED_AUTH}
    wrong.close()


@pytest.mark.parametrize("mechanism", ["none", "curve"])
def test_a_peer_without_plain_credentials_sees_handshake_failed_protocol(daemon, mechanism):
    """§1: a peer without credentials, or a CURVE client at this PLAIN daemon, sees
    HANDSHAKE_FAILED_PROTOCOL or _NO_DETAIL — never _AUTH, never an answer."""
    peer = Peer(daemon, mechanism=mechanism)
    peer.send({"type": "ping"})
    seen = _handshake_failures(peer)
    assert seen and seen <= {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                             zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL}, seen
    peer.close()


def _endpoint_nobody_listens_on(tmp_path) -> str:
    if zmq.has("ipc"):
        return f"ipc://{tmp_path / 'nobody.sock'}"
    with socket.socket() as s:  # Windows: a loopback port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_an_endpoint_nobody_listens_on_shows_connect_retried(tmp_path):
    """§1: a stale connection file's endpoint: CONNECT_RETRIED, and never an answer."""
    nobody = zmq.Context.instance().socket(zmq.DEALER)
    nobody.linger = 0
    monitor = nobody.get_monitor_socket()
    nobody.connect(_endpoint_nobody_listens_on(tmp_path))
    nobody.send_multipart([b"OWS1", b'{"type":"ping"}'])
    events = set()
    deadline = time.monotonic() + 5
    while zmq.EVENT_CONNECT_RETRIED not in events and time.monotonic() < deadline:
        if monitor.poll(100):
            events.add(recv_monitor_message(monitor)["event"])
    assert zmq.EVENT_CONNECT_RETRIED in events and not nobody.poll(0), events
    nobody.disable_monitor()
    monitor.close(0)
    nobody.close(0)


def test_every_error_code_is_in_the_table():
    """§6 lists every code the daemon can send (protocol.E_*), and no other."""
    doc = (REPO / "PROTOCOL.md").read_text(encoding="utf-8")
    table = doc[doc.index("## 6. Errors"):doc.index("## 7.")]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    codes = {v for k, v in vars(P).items() if k.startswith("E_")}
    assert listed == codes, (listed ^ codes)
