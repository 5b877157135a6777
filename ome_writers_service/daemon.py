"""The writer daemon: one ROUTER socket, one writer thread per stream.

The main thread only moves messages: it parses and checks each one, answers what it can
(open, status, errors) and queues frames to the stream's worker (`stream_worker`). A worker
owns its stream's router + backend (an in-process `OMEStream`), writes each frame straight
from its ring slot and hands the slot back with a ``release`` message. Disk I/O (tensorstore, file writes)
releases the GIL, so one slow stream does not stall another.

Memory is bounded by construction: a client can only have as many frames in flight as its
ring has slots (inline frames too: they use the same credits), so a worker's queue never
holds more than the ring, whatever the backlog.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from . import __version__
from . import chunk_buffers
from . import format_metadata as fm
from . import protocol as P
from . import wire_settings
from .backends.zarr_metadata import check_global_namespace
from . import platform
from .connection import ConnectionInfo, default_endpoint, pid_namespace, runtime_dir
from .arena import clean_stale_arenas
from .chunk_buffers import physical_memory
from .priority import set_nice
from .ring import clean_stale_rings, shm_free
from .schema import AcquisitionSettings
from .stream_worker import OUTBOX, StreamWorker
from .user_metadata import check_frame_metadata, check_global_metadata

log = logging.getLogger("ome_writers_service.daemon")

#: A client whose liveness rests on heartbeats is declared dead after this much silence.
HEARTBEAT_TIMEOUT = 1.5
#: How often the main loop checks client liveness.
LIVENESS_INTERVAL = 0.25
PID_NAMESPACE = pid_namespace()

#: Default ring size when the settings do not fix ``ring_slots``: at 100 fps of 2048x2048
#: uint16 it absorbs a 0.3 s disk stall without blocking the camera.
RING_BYTES = 256 * 2**20
MIN_SLOTS, MAX_SLOTS = 8, wire_settings.MAX_RING_SLOTS
#: Most bytes of frames an inline stream may have in flight (they live in the daemon's memory).
INLINE_BYTES = 1024 * 2**20
#: Largest jump in frame numbers (frames dropped by the client, skip, close) one message may
#: make: each missing frame costs the worker a little work.
MAX_GAP = 1_000_000
#: Most messages the daemon queues for one peer (one connection) that does not read them; a
#: peer that lets that many pile up is dropped. A client that reads at least when it needs a
#: slot has at most one unread release per slot of its streams, plus a few replies.
PEER_QUEUE = 2 * MAX_SLOTS + 1024
#: Most ring slots the streams of one connection may hold together (see PEER_QUEUE).
PEER_CREDITS = 2 * MAX_SLOTS
#: Share of the machine's RAM the streams' buffers may take together by default (the rest is
#: the page cache's, the rings', the acquisition software's): `serve --memory-budget`.
MEMORY_FRACTION = 0.4
#: Below this much free shared memory (/dev/shm) the daemon warns at start-up.
SHM_WARN_BYTES = 128 * 2**20
def ring_slots_for(settings: AcquisitionSettings, shm_free_bytes: int | None = None, *,
                   inline: bool = False) -> int:
    """Slots of a stream's ring: ``ring_slots`` if set, else about RING_BYTES of frames —
    less when /dev/shm is small (at most half of what is free), never fewer than MIN_SLOTS.
    Inline streams hold their frames in the daemon's memory: at most INLINE_BYTES of them."""
    frame = max(1, settings.frame_nbytes)
    if settings.ring_slots:
        slots = settings.ring_slots
        if slots > MAX_SLOTS:
            raise ValueError(f"ring_slots={slots} is more than {MAX_SLOTS}")
    elif inline:
        slots = max(MIN_SLOTS, min(MAX_SLOTS, RING_BYTES // frame))
    else:
        free = shm_free() if shm_free_bytes is None else shm_free_bytes
        budget = min(RING_BYTES, free // 2)
        slots = max(MIN_SLOTS, min(MAX_SLOTS, budget // frame))
    if inline and slots * frame > INLINE_BYTES:
        raise ValueError(f"{slots} inline frames of {frame / 2**20:.1f} MiB exceed the "
                         f"{INLINE_BYTES // 2**20} MiB an inline stream may hold in the daemon; "
                         "lower ring_slots or use shared memory")
    return slots


class Daemon:
    """Serves any number of streams on one endpoint until stopped."""

    def __init__(self, endpoint: str | None = None, *, rt_dir: str | os.PathLike | None = None,
                 idle_exit: float | None = None, allow_remote: bool = False,
                 curve: bool = False, memory_budget: int | None = None) -> None:
        self.rt = runtime_dir(rt_dir)
        #: bytes the streams' buffers may take together, worst case (`chunk_buffers`)
        self.memory_budget = memory_budget or default_memory_budget()
        self.endpoint = endpoint or default_endpoint(self.rt)
        _check_endpoint(self.endpoint, allow_remote)
        self.token = secrets.token_hex(16)
        #: a non-loopback endpoint is always encrypted (CURVE); ``curve`` forces it on loopback
        self.curve = self._curve_keys() if curve or not P.is_loopback(self.endpoint) else None
        self.idle_exit = idle_exit
        self.ctx = zmq.Context()
        self.streams: dict[int, StreamWorker] = {}
        self._next_sid = 1
        self._stop = threading.Event()
        self._last_active = time.monotonic()
        self._now = time.monotonic()  # read once per batch of messages (liveness)
        self._dropped: set[bytes] = set()  # peers that did not read their messages

    @staticmethod
    def _curve_keys() -> dict[str, str]:
        if not zmq.has("curve"):
            raise ValueError("this libzmq has no CURVE support: a daemon reachable from other "
                             "machines must encrypt its connections")
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return {"server_public": server_public.decode(), "server_secret": server_secret.decode(),
                "client_public": client_public.decode(), "client_secret": client_secret.decode()}

    # ---- lifecycle ----

    def serve(self) -> None:
        # every frame makes a few short-lived tuples and closures: collect the young
        # generation 20x less often than Python's default (700), and never scan start-up
        # objects again
        gc.freeze()
        gc.set_threshold(14_000, 10, 10)
        check_shm_size()
        removed = clean_stale_rings()
        if removed:
            log.info("removed %d stale ring(s) of dead daemons: %s", len(removed), removed)
        removed = clean_stale_arenas()
        if removed:
            log.info("removed %d chunk-buffer arena(s) of finalized datasets: %s",
                     len(removed), removed)
        # peers prove they hold the token in the ZMTP handshake (PLAIN): without it nothing
        # they send reaches the daemon (no routing-id games, no giant messages)
        platform.selector_event_loops()  # the authenticator's zmq asyncio (Windows: not proactor)
        auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("ome_writers_service.auth"))
        auth.start()
        router = self.ctx.socket(zmq.ROUTER)
        if self.curve is None:
            auth.configure_plain(domain="*", passwords={P.PLAIN_USERNAME.decode(): self.token})
            router.plain_server = True
        else:  # encrypted: only the client key pair of the connection file gets in
            allowed = self.curve["client_public"].encode()
            auth.configure_curve_callback(domain="*", credentials_provider=_OneClientKey(allowed))
            router.curve_secretkey = self.curve["server_secret"].encode()
            router.curve_publickey = self.curve["server_public"].encode()
            router.curve_server = True
        # a peer's queue is bounded (PEER_QUEUE); a send that finds it full fails at once
        # (mandatory routing, no wait), and that peer is dropped rather than any reply of a
        # reading client (a lost `release` would cost it its slots for good)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 2000)
        router.setsockopt(zmq.SNDHWM, PEER_QUEUE)
        router.setsockopt(zmq.MAXMSGSIZE, INLINE_BYTES)  # a larger message: peer disconnected
        _bind(router, self.endpoint)
        # tcp://127.0.0.1:* (or :0) picks a free port: publish the one actually bound
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        outbox = self.ctx.socket(zmq.PULL)
        outbox.bind(OUTBOX)
        info = ConnectionInfo(self.endpoint, self.token, os.getpid(), __version__,
                              pid_namespace(), curve=None if self.curve is None else {
                                  k: v for k, v in self.curve.items() if k != "server_secret"})
        conn_file = info.write(self.rt)
        log.info("ome-writers-service %s listening on %s (connection file %s)",
                 __version__, self.endpoint, conn_file)
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(outbox, zmq.POLLIN)
        next_liveness = time.monotonic() + LIVENESS_INTERVAL
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(200))
                if router in events:
                    self._drain(router, outbox)
                if outbox in events:
                    self._forward(outbox, router)
                self._reap()
                if time.monotonic() >= next_liveness:
                    self._check_clients()
                    next_liveness = time.monotonic() + LIVENESS_INTERVAL
                if self.idle_exit is not None and not self.streams and \
                        time.monotonic() - self._last_active > self.idle_exit:
                    log.info("idle for %.0f s: exiting", self.idle_exit)
                    break
            self._shutdown(router, outbox)
        finally:
            if ConnectionInfo.read(self.rt) == info:
                (self.rt / "daemon.json").unlink(missing_ok=True)
            if self.endpoint.startswith("ipc://"):
                Path(self.endpoint[len("ipc://"):]).unlink(missing_ok=True)
            router.close(linger=1000)
            outbox.close(linger=0)
            auth.stop()
            self.ctx.term()

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def _shutdown(self, router: zmq.Socket, outbox: zmq.Socket) -> None:
        """Finalize every open stream with what it received, tell its client, then exit."""
        self._drain(router, outbox)  # notices already here are frames received
        for w in list(self.streams.values()):
            if not w.closing:
                w.closing = True
                w.enqueue(("close", None, "shutdown"))
        while any(not w.finished.is_set() for w in self.streams.values()):
            if outbox.poll(100):
                self._forward(outbox, router)
        self._forward(outbox, router)
        self._reap()

    def _check_clients(self) -> None:
        """Finalize the streams of clients that died (SIGKILL, crash) with what arrived."""
        now = time.monotonic()
        for w in self.streams.values():
            if w.closing:
                continue
            if w.client_pid is not None:
                dead = not w.client_watch.alive()
                why = f"client pid {w.client_pid} is gone"
            else:
                dead = now - w.last_heard > HEARTBEAT_TIMEOUT
                why = f"no message or heartbeat from the client for {now - w.last_heard:.1f} s"
            if dead:
                log.warning("stream %d (%s): %s; finalizing the %d frames received",
                            w.sid, w.settings.root_path, why, w.expected_seq)
                w.closing = True
                w.enqueue(("close", None, f"client lost: {why}"))

    def _reap(self) -> None:
        for sid, w in list(self.streams.items()):
            if w.finished.is_set():
                w.join()
                w._remove_ring()  # normally done already, before the final report
                del self.streams[sid]
                self._last_active = time.monotonic()

    # ---- message handling (main thread) ----

    def _forward(self, outbox: zmq.Socket, router: zmq.Socket) -> None:
        """Send what the workers queued (releases, replies) on to the clients."""
        while True:
            try:
                parts = outbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._send_to(router, parts)

    def _send_to(self, router: zmq.Socket, parts: list) -> None:
        """Send to a peer (``parts[0]``) without ever waiting: a peer gone is ignored, one
        whose queue is full is dropped."""
        try:
            router.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            self._drop_peer(parts[0])
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:  # a peer that disconnected: nothing to tell it
                raise

    def _drop_peer(self, peer: bytes) -> None:
        """A peer that does not read what the daemon sends it: ignore it from now on and
        finalize its streams, as for a client that died."""
        if peer in self._dropped:
            return
        self._dropped.add(peer)
        mine = [w for w in self.streams.values() if w.peer == peer and not w.closing]
        log.warning("peer %s does not read the daemon's messages (%d unread): dropping it%s",
                    peer.hex(), PEER_QUEUE, "" if not mine else "; finalizing its streams " +
                    ", ".join(f"{w.sid} ({w.settings.root_path})" for w in mine))
        for w in mine:
            w.closing = True
            w.enqueue(("close", None, "client lost: it does not read the daemon's messages"))

    def _drain(self, router: zmq.Socket, outbox: zmq.Socket) -> None:
        recv = router.recv
        self._now = time.monotonic()
        for i in range(10000):
            try:  # zmq frames, not bytes: no copy of inline pixels, cheaper than recv_multipart
                part = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            peer = part.bytes
            parts = []
            while part.more:
                part = recv(copy=False)
                parts.append(part)
            if peer in self._dropped:
                continue
            try:
                reply = self._dispatch(peer, parts)
            except P.ProtocolError as e:
                log.warning("peer %s: %s", peer.hex(), e)
                reply = P.error(e.code, str(e), stream=e.stream, seq=e.seq)
            except Exception as e:  # noqa: BLE001 - outside _handle's net: still never die
                log.exception("peer %s: unexpected error", peer.hex())
                reply = P.error(P.E_MALFORMED, f"internal error handling the message: {e!r}")
            if reply is not None:
                self._send_to(router, [peer, *reply])
            if i % 32 == 31:  # keep the workers and the clients' credits moving
                self._flush_batches()
                self._forward(outbox, router)
                self._now = time.monotonic()
        self._flush_batches()
        self._forward(outbox, router)

    def _dispatch(self, peer: bytes, parts: list) -> list | None:
        """Handle one message; a `ProtocolError` it raises names the stream and frame the
        message named (PROTOCOL.md 2.2: every error says which)."""
        if len(parts) == 2 and parts[0].bytes == P.TAG:
            notice = P.parse_notice(parts[1].bytes)
            if notice is not None:  # the plain frame notice: no JSON parsing on the frame path
                try:
                    return self._on_frame(peer, *notice, None, None)
                except P.ProtocolError as e:
                    e.stream, e.seq = notice[0], notice[1]
                    raise
        try:
            header, payload = P.decode(parts)
        except P.ProtocolError:
            self._refuse_oversized_frame(peer, parts)
            raise
        try:
            if header["type"] == P.OPEN:  # where the client runs decides how it is watched
                return self._on_open(peer, header, self._on_this_machine(parts[0]))
            return self._handle(peer, header, payload)
        except Exception as e:
            if not isinstance(e, P.ProtocolError):  # never let a client's message kill us
                log.exception("peer %s: unexpected error", peer.hex())
                e = P.ProtocolError(P.E_MALFORMED, f"{header['type']}: internal error "
                                                   f"handling the message: {e!r}")
            sid, seq = header.get("stream"), header.get("seq")
            if type(sid) is int and e.stream == 0:
                e.stream = sid
            if type(seq) is int and e.seq == -1 and header["type"] in (P.FRAME, P.SKIP):
                e.seq = seq
            raise e from None

    def _on_this_machine(self, frame: zmq.Frame) -> bool:
        """Whether the peer that sent ``frame`` runs on this machine: over ipc, or TCP from a
        loopback address. (Another host's client may name a pid namespace equal to ours,
        since every host's initial namespace has the same id: its pid means nothing here.)"""
        if not self.endpoint.startswith("tcp://"):
            return True
        try:
            address = frame.get("Peer-Address")
        except zmq.ZMQError:
            return False
        address = address.removeprefix("::ffff:")
        return address == "::1" or address.startswith("127.")

    def _refuse_oversized_frame(self, peer: bytes, parts: list) -> None:
        """A frame notice whose metadata makes it too large to parse: its slot comes back and
        the error names the frame (else both would be lost without a word)."""
        found = P.oversized_frame(parts[1].bytes) if len(parts) in (2, 3) else None
        if found is None:
            return
        sid, seq, slot = found
        w = self.streams.get(sid)
        if w is not None and w.peer == peer and 0 <= slot < w.slots and not w.closing:
            w.last_heard = self._now
            w.stats.refused += 1
            w.enqueue(("release", slot))
        raise P.ProtocolError(P.E_MALFORMED, f"frame {seq}: its header is {len(parts[1]):,} "
                                             f"bytes, more than {P.MAX_HEADER_BYTES:,} (frame "
                                             "metadata too large): the frame is not written "
                                             "and its slot is released", stream=sid, seq=seq)

    def _flush_batches(self) -> None:
        for w in self.streams.values():
            w.flush_batch()

    def _handle(self, peer: bytes, h: dict, payload: Any) -> list | None:
        kind = h["type"]
        if kind == P.FRAME:
            return self._on_frame(peer, P.field(h, "stream", int), P.field(h, "seq", int),
                                  P.field(h, "slot", int), h.get("meta"), payload)
        if kind == P.SKIP:
            w = self._stream_of(peer, h)
            seq = P.field(h, "seq", int)
            count = P.field(h, "count", int)
            if seq != w.expected_seq or count < 0:
                raise P.ProtocolError(P.E_SEQUENCE, f"skip: expected seq {w.expected_seq}, "
                                                    f"count >= 0; got seq {seq}, count {count}")
            self._check_room(w, seq + count)
            w.expected_seq = seq + count
            w.enqueue(("skip", seq, count))
            return None
        if kind == P.METADATA:
            w = self._stream_of(peer, h)
            ns = P.field(h, "namespace", str)
            try:
                value = check_global_metadata(ns, P.field(h, "value", dict))
                if w.settings.format_name == "ome-zarr":
                    check_global_namespace(w.settings, ns)
            except (TypeError, ValueError) as e:
                raise P.ProtocolError(P.E_MALFORMED, f"metadata: {e}") from None
            w.enqueue(("metadata", ns, value))
            return None
        if kind == P.UPDATE_METADATA:
            w = self._stream_of(peer, h)
            attributes = P.field(h, "attributes", dict)
            if w.settings.format_name != "ome-zarr":
                raise P.ProtocolError(P.E_MALFORMED, "update_metadata: OME-Zarr streams only "
                                                     "(OME-TIFF metadata is updated after close)")
            try:
                fm.check_zarr_update(attributes, w.metadata_keys())
            except (TypeError, KeyError, ValueError) as e:
                raise P.ProtocolError(P.E_MALFORMED, f"update_metadata: {e}") from None
            w.enqueue(("update_metadata", attributes))
            return None
        if kind == P.STATUS:
            sid = P.field(h, "stream", int, required=False)
            if sid is not None:
                w = self._stream_of(peer, h)
                return P.encode({"type": P.STATUS_REPLY, **w.report()})
            reports = [w.report() for w in self.streams.values()]
            return P.encode({"type": P.STATUS_REPLY, "pid": os.getpid(), "version": __version__,
                             "minor": P.PROTOCOL_MINOR, "memory_budget": self.memory_budget,
                             "memory_committed": self._memory_committed(),
                             "streams": {str(r["stream"]): r for r in reports},
                             "stream_list": reports})  # the same as an array (1.1)
        if kind == P.CLOSE:
            w = self.streams.get(P.field(h, "stream", int))
            if w is not None and w.peer == peer and w.closing:
                return None  # the daemon is ending it already: its `closed` report follows
            w = self._stream_of(peer, h)
            total = P.field(h, "frames", int)
            if total < w.expected_seq:
                raise P.ProtocolError(P.E_SEQUENCE, f"close: frames={total} but "
                                                    f"{w.expected_seq} were sent")
            self._check_room(w, total)
            w.closing = True
            w.enqueue(("close", total, "closed by client"))
            return None
        if kind == P.READ:
            return self._on_read(peer, h)
        if kind == P.HEARTBEAT:
            sid = P.field(h, "stream", int)
            key = P.field(h, "key", str)
            w = self.streams.get(sid)
            if w is None or not secrets.compare_digest(key, w.heartbeat_key):
                raise P.ProtocolError(P.E_NO_STREAM, f"heartbeat: no open stream {sid} with "
                                                     "that key (closed, or a wrong key)")
            w.last_heard = self._now
            return None
        if kind == P.PING:
            return P.encode({"type": P.PONG, "pid": os.getpid(), "minor": P.PROTOCOL_MINOR})
        raise P.ProtocolError(P.E_UNKNOWN_TYPE, f"unknown message type {kind!r}")

    def _on_open(self, peer: bytes, h: dict, on_this_machine: bool) -> None:
        token = h.get("token")
        if not isinstance(token, str) or not secrets.compare_digest(token, self.token):
            log.warning("peer %s: open refused: missing or wrong token", peer.hex())
            raise P.ProtocolError(P.E_AUTH, "open refused: missing or wrong token "
                                            "(see the daemon's connection file)")
        version = h.get("version", P.PROTOCOL_VERSION)
        minor = h.get("minor", 0)  # absent: a 1.0 client
        ours = f"{P.PROTOCOL_VERSION}.{P.PROTOCOL_MINOR}"
        if type(version) is not int or version != P.PROTOCOL_VERSION:
            theirs = json.dumps(version) + (f".{minor}" if type(minor) is int else "")
            raise P.ProtocolError(P.E_VERSION, f"open: the client speaks protocol {theirs}, "
                                               f"this daemon {ours} (another major version)")
        minor = P.field(h, "minor", int, required=False) or 0
        if minor < 0:
            raise P.ProtocolError(P.E_MALFORMED, f"open: minor must be >= 0, not {minor}")
        raw = P.field(h, "settings", dict)
        transport = h.get("transport", "shm")
        if transport not in ("shm", "inline"):
            raise P.ProtocolError(P.E_MALFORMED, f"open: transport must be \"shm\" or "
                                                 f"\"inline\", not {json.dumps(transport)}")
        try:
            settings, warned = wire_settings.parse(raw)
        except wire_settings.SettingsError as e:
            newer = "" if minor <= P.PROTOCOL_MINOR else (
                f" (the client speaks protocol {P.PROTOCOL_VERSION}.{minor}, this daemon "
                f"{ours}: settings added after {ours} are unknown to it; upgrade the daemon)")
            raise P.ProtocolError(P.E_SETTINGS, f"invalid settings: {e}{newer}") from None
        try:
            slots = ring_slots_for(settings, inline=transport == "inline")
        except ValueError as e:
            raise P.ProtocolError(P.E_RESOURCES, str(e)) from None
        s3_endpoint = h.get("s3_endpoint")
        if s3_endpoint is not None and not (isinstance(s3_endpoint, str) and
                                            s3_endpoint.startswith(("http://", "https://"))):
            raise P.ProtocolError(P.E_MALFORMED, "open: s3_endpoint must be an http(s):// URL")
        memory = self._admit_memory(settings, slots * settings.frame_nbytes
                                    if transport == "inline" else 0)
        held = sum(w.slots for w in self.streams.values() if w.peer == peer)
        if held + slots > PEER_CREDITS:
            raise P.ProtocolError(P.E_RESOURCES, f"this connection's streams hold {held} ring "
                                                 f"slots; {slots} more would pass the "
                                                 f"{PEER_CREDITS} one connection may hold: open "
                                                 "the stream on a connection of its own")
        worker = StreamWorker(self._next_sid, peer, settings, transport, slots, self.ctx,
                              s3_endpoint)
        worker.memory = memory
        worker.minor = min(minor, P.PROTOCOL_MINOR)
        pid, pidns = h.get("pid"), h.get("pidns")
        if isinstance(pid, int) and not isinstance(pid, bool) and pidns == PID_NAMESPACE \
                and PID_NAMESPACE and on_this_machine:
            worker.client_pid = pid
            worker.client_watch = platform.ProcessWatch(pid)
        sid = self._next_sid
        self._next_sid += 1
        self.streams[sid] = worker
        log.info("stream %d opened: %s (%s, %s frames, %d slots)", sid, settings.root_path,
                 settings.format_name, settings.num_frames or "unbounded", slots)
        n = settings.num_frames
        worker.opened_reply = {
            "type": P.OPENED, "stream": sid, "minor": P.PROTOCOL_MINOR, "pid": os.getpid(),
            "pidns": PID_NAMESPACE, "transport": transport,
            "credits": slots, "frame_shape": list(settings.frame_shape),
            "dtype": settings.dtype, "frames": n, "frames_declared": n or 0,
            "unbounded": n is None, "warnings": warned,
            "frame_nbytes": settings.frame_nbytes, "backpressure": settings.backpressure,
            "backpressure_timeout": settings.backpressure_timeout,
            "liveness": "pid" if worker.client_pid is not None else "heartbeat",
            "heartbeat_key": worker.heartbeat_key, "heartbeat_interval": HEARTBEAT_TIMEOUT / 4,
            "max_buffer_bytes": memory,
        }
        worker.start()  # replies `opened` (ring, paths) or `error` once ring and dataset exist
        self._last_active = time.monotonic()
        return None

    def _memory_committed(self) -> int:
        return sum(w.memory for w in self.streams.values() if not w.memory_freed)

    def _admit_memory(self, settings: AcquisitionSettings, inline_bytes: int) -> int:
        """The worst-case memory a new stream may take here (its chunk buffers, and an
        inline stream's frames in flight), or `resources` when it does not fit the budget
        beside the open streams: naming the axis and chunk size to change."""
        found = chunk_buffers.estimate(settings)
        need = found.total + inline_bytes
        used = self._memory_committed()
        if used + need <= self.memory_budget:
            return need
        gib = 2**30
        where = (f"beside the open streams' {used / gib:.2f} GiB " if used else "")
        why = found.explain() if found.total else \
            f"an inline stream holds up to {inline_bytes / gib:.2f} GiB of frames: lower ring_slots"
        raise P.ProtocolError(P.E_RESOURCES, f"{settings.root_path}: its buffers may take "
                                             f"{need / gib:.2f} GiB, which does not fit "
                                             f"{where}in the daemon's memory budget of "
                                             f"{self.memory_budget / gib:.2f} GiB (serve "
                                             f"--memory-budget): {why}")

    def _on_frame(self, peer: bytes, sid: int, seq: int, slot: int, meta: dict | None,
                  payload: Any) -> None:
        w = self._stream_of(peer, sid, P.FRAME)
        if not 0 <= slot < w.slots:  # no slot of the stream's: none to give back
            raise P.ProtocolError(P.E_SLOT, f"frame {seq}: slot {slot} is not in 0..{w.slots - 1}")
        try:
            if meta is not None:
                meta = self._frame_meta(meta, seq)
            if seq < w.expected_seq:
                raise P.ProtocolError(P.E_SEQUENCE, f"frame {seq}: out of order, expected >= "
                                                    f"{w.expected_seq}")
            self._check_room(w, seq + 1)
            if w.inline:
                if payload is None or len(payload) != w.settings.frame_nbytes:
                    got = "no payload" if payload is None else f"a payload of {len(payload)} bytes"
                    raise P.ProtocolError(P.E_FRAME, f"frame {seq}: {got}; an inline frame is "
                                                     f"{w.settings.frame_nbytes} bytes")
            elif payload is not None:
                raise P.ProtocolError(P.E_FRAME, f"frame {seq}: a payload on a shared-memory "
                                                 "stream (its pixels go into the ring)")
        except P.ProtocolError as e:
            # refused: the slot comes back in a release, whatever the reason (PROTOCOL.md 3);
            # a 1.0 client was promised that only for refused metadata (it may free the
            # others itself: a release later could free a slot it filled again)
            w.stats.refused += 1
            if w.minor >= 1 or e.code == P.E_MALFORMED:
                w.enqueue(("release", slot))
            raise
        w.expected_seq = seq + 1
        w.frames_queued += 1
        w.batch.append((seq, slot, meta, payload))  # queued as one item at the end of _drain
        return None

    @staticmethod
    def _frame_meta(meta: Any, seq: int) -> dict:
        """A frame's ``meta``, checked (PROTOCOL.md 5), or `malformed` naming the key."""
        if not isinstance(meta, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(meta),
                                                                              "a number")
            raise P.ProtocolError(P.E_MALFORMED, f"frame {seq}: meta must be a JSON object, "
                                                 f"not {kind}")
        try:
            return check_frame_metadata(meta, seq)
        except (TypeError, ValueError) as e:
            raise P.ProtocolError(P.E_MALFORMED, str(e)) from None

    def _on_read(self, peer: bytes, h: dict) -> None:
        """A stored plane, for the client's live view: checked here, read by the worker."""
        w = self._stream_of(peer, h)
        pos = P.field(h, "position", int)
        index = P.field(h, "index", list)
        shape = w.storage_shape
        if not 0 <= pos < len(w.settings.positions) or len(index) != len(shape) \
                or not all(type(i) is int and i >= 0 and (n is None or i < n)
                           for i, n in zip(index, shape)):
            raise P.ProtocolError(P.E_MALFORMED, f"read: no plane {index} at position {pos}")
        w.enqueue(("read", pos, tuple(index)))

    def _stream_of(self, peer: bytes, h: dict | int, kind: str = "") -> StreamWorker:
        """The stream a message names (``h``: its header, or the stream id), if the peer's."""
        sid = P.field(h, "stream", int) if isinstance(h, dict) else h
        kind = kind or h["type"]
        w = self.streams.get(sid)
        if w is None or w.peer != peer:
            raise P.ProtocolError(P.E_NO_STREAM, f"{kind}: no open stream {sid} of yours")
        w.last_heard = self._now  # any message of the stream's client shows it alive
        if w.closing or w.finished.is_set():
            raise P.ProtocolError(P.E_NO_STREAM, f"{kind}: stream {sid} is closing")
        return w

    @staticmethod
    def _check_room(w: StreamWorker, end: int) -> None:
        if end - w.expected_seq > MAX_GAP:
            raise P.ProtocolError(P.E_SEQUENCE, f"frame {end - 1}: {end - w.expected_seq} frames "
                                                f"past the last one sent (at most {MAX_GAP})")
        n = w.num_frames
        if n is not None and end > n:
            raise P.ProtocolError(P.E_SEQUENCE, f"frame {end - 1}: the acquisition declares "
                                                f"{n} frames")


def check_shm_size() -> int:
    """Warn at start-up when /dev/shm cannot hold even one default ring (docker's default
    /dev/shm is 64 MiB). Returns the free bytes."""
    free = shm_free()
    need = SHM_WARN_BYTES
    if free < need:
        log.warning("%s has only %.0f MiB free; rings get small (slow disks will block the "
                    "camera sooner) and streams of large frames cannot open (8 slots of a 2048x"
                    "2048 uint16 frame need 64 MiB): %s.", platform.SHM_WHAT,
                    free / 2**20, platform.SHM_MORE)
    return free


class _OneClientKey:
    """ZAP credentials check of a CURVE daemon: the client's public key must be the one its
    connection file hands out."""

    def __init__(self, allowed: bytes) -> None:
        self.allowed = allowed  # Z85, as the authenticator passes the client's key

    def callback(self, domain: str, key: bytes) -> bool:
        return secrets.compare_digest(key, self.allowed)


def _check_endpoint(endpoint: str, allow_remote: bool) -> None:
    if endpoint.startswith("ipc://"):
        return
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
        if host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.") or allow_remote:
            return
        raise ValueError(f"refusing to listen on {endpoint}: not a loopback address "
                         "(pass --allow-remote to expose the daemon to the network)")
    raise ValueError(f"unsupported endpoint {endpoint!r}: use ipc://PATH or tcp://127.0.0.1:PORT")


def _bind(sock: zmq.Socket, endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://"):])
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a stale socket of a dead daemon
    sock.bind(endpoint)
    if endpoint.startswith("ipc://"):
        platform.make_socket_private(path)


def default_memory_budget() -> int:
    """What the streams' buffers may take together unless told: MEMORY_FRACTION of the RAM
    (1 GiB where the RAM is unknown)."""
    ram = physical_memory()
    return int(ram * MEMORY_FRACTION) if ram else 2**30


def run(endpoint: str | None = None, *, rt_dir: str | None = None, idle_exit: float | None = None,
        allow_remote: bool = False, curve: bool = False,
        memory_budget: int | None = None, nice: int | None = None) -> None:
    """Run a daemon in this process until asked to stop (SIGTERM, Ctrl+C; on Windows also its
    stop event, Ctrl+Break and the console closing: `platform.on_stop_request`), finalizing
    every open stream; at CPU priority ``nice`` (None: as started), set before any of its
    threads start."""
    if nice is not None:
        set_nice(nice)
    daemon = Daemon(endpoint, rt_dir=rt_dir, idle_exit=idle_exit, allow_remote=allow_remote,
                    curve=curve, memory_budget=memory_budget)
    finished = threading.Event()
    platform.on_stop_request(daemon.stop, finished)
    try:
        daemon.serve()
    finally:
        finished.set()
