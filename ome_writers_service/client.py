"""The Python client: a stream whose frames go to the writer daemon through shared memory.

``append()`` is the camera's hot path: it copies the frame into a free ring slot and sends one
small notice; it never waits for disk. Slots come back in ``release`` messages, which are read
only when the client runs out of free slots, so the steady-state cost is one memcpy and one
ZeroMQ send.
"""

from __future__ import annotations

import builtins
import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

_monotonic = time.monotonic

from . import platform
from . import protocol as P
from .connection import ConnectionInfo, CurveKeys, runtime_dir
from .platform import ProcessWatch, hold_lock, pid_alive, pid_namespace, spawn_detached
from .dataset_reader import DatasetReader
from .ring import FrameRing
from .schema import AcquisitionSettings
from .router import FrameRouter
from .stream import (CoordEvents, FrameCountError, OMEStream, StreamView, check_frame,
                     in_runs)
from .user_metadata import check_frame_metadata, check_global_metadata

#: How long to wait for a reply the daemon should give at once (open, status).
REPLY_TIMEOUT = 30.0
#: How often a blocked call checks that the daemon is still alive.
LIVENESS_INTERVAL = 0.25
#: A blocked call pings a silent daemon after this long, and gives up on it after HUNG_TIMEOUT.
PING_AFTER = 1.0
HUNG_TIMEOUT = 5.0


#: Error codes that answer a request (open, status, close, read) rather than report that the
#: stream's data could not be written.
_ANSWER_CODES = frozenset({P.E_MALFORMED, P.E_VERSION, P.E_UNKNOWN_TYPE, P.E_AUTH, P.E_SETTINGS,
                           P.E_NO_STREAM, P.E_SEQUENCE, P.E_RESOURCES, P.E_READ})


#: handshake failures: a refused token or key, or a PLAIN client meeting a CURVE daemon
#: what libzmq reports when the daemon refuses the handshake: a wrong token or key pair
#: (_AUTH), or another security mechanism (PLAIN meeting CURVE), which libzmq reports as
#: _PROTOCOL or, in about 3 of 4 attempts measured on 127.0.0.1, _NO_DETAIL
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class ServiceError(RuntimeError):
    """The daemon reported an error; ``code`` is the protocol error code."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


_BUILTIN_ERRORS: dict[str, type[Exception]] = {
    name: getattr(builtins, name) for name in P.EXCEPTION_TYPES}
_SERVICE_VARIANTS: dict[type, type] = {}


def _older_daemon(err: dict, awaited: str) -> str:
    """What to add to an `open` refused by a 1.0 daemon (its errors have no ``seq``, every
    1.1 error has): both versions, so that a refusal of something 1.1 added reads as the
    version mismatch it is rather than as the daemon's validation text alone."""
    if awaited != P.OPENED or "seq" in err or err.get("code") in (P.E_AUTH, P.E_RESOURCES):
        return ""
    return (f" (the daemon speaks protocol {P.PROTOCOL_VERSION}.0, this client "
            f"{P.PROTOCOL_VERSION}.{P.PROTOCOL_MINOR}: upgrade the daemon's ome-writers-service)")


def remote_error(message: str, code: str = "", exception: str | None = None) -> Exception:
    """The exception for an error the daemon reported: of the type the in-process stream
    raises for the same cause (``exception``, one of `protocol.EXCEPTION_TYPES`), else a
    `ServiceError`. Non-OS types are also ServiceErrors; OS errors (which cannot be) carry
    the protocol ``code`` as an attribute too."""
    cls = _BUILTIN_ERRORS.get(exception or "")
    if cls is None:
        return ServiceError(message, code)
    if issubclass(cls, OSError):
        err = cls(message)
        err.code = code  # type: ignore[attr-defined]
        return err
    variant = _SERVICE_VARIANTS.get(cls)
    if variant is None:
        variant = _SERVICE_VARIANTS[cls] = type(f"Service{cls.__name__}", (ServiceError, cls),
                                                {"__module__": __name__})
    return variant(message, code)


class DaemonGoneError(ServiceError):
    """The daemon died or stopped answering."""


class RingFullError(ServiceError):
    """Every ring slot is in use (``backpressure="raise"``, or "block" after its timeout)."""


class ServiceStream:
    """A daemon-backed stream with the `OMEStream` API plus `claim()` and `status()`."""

    def __init__(self, settings: AcquisitionSettings, *, endpoint: str, token: str,
                 transport: str = "shm", daemon_pid: int | None = None,
                 ctx: zmq.Context | None = None, s3_endpoint: str | None = None,
                 curve: CurveKeys | None = None) -> None:
        settings.validate_for_writing()
        # the daemon's working directory is not ours: send an absolute path
        settings = settings.model_copy(update={"root_path": settings.output_path})
        self._settings = settings
        self._s3_endpoint = s3_endpoint
        self._ctx = ctx or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        #: a ZeroMQ socket is not thread-safe: every use of ``_sock`` (sends and the replies
        #: they wait for) holds this lock, so the stream may be used from several threads as
        #: the in-process one can (e.g. set_global_metadata() while close() runs)
        self._lock = threading.RLock()
        self._sock.setsockopt(zmq.LINGER, 0)
        # never block in send, never drop a reply (a lost `release` would lose slots for
        # good): credits bound what is in flight either way
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        _require_encryption(endpoint, curve)
        P.authenticate(self._sock, token, curve)
        # a wrong token (or key) fails the handshake, which no message reports: watch for it
        self._auth_events = self._sock.get_monitor_socket(_HANDSHAKE_FAILED)
        self._sock.connect(endpoint)
        self._endpoint = endpoint
        self._daemon_pid = daemon_pid
        self._daemon = ProcessWatch(daemon_pid) if daemon_pid else None
        self._closed = False
        self._ring: FrameRing | None = None
        self._error: Exception | None = None
        self._last_heard = self._last_ping = _monotonic()
        self._replies: dict[str, dict] = {}  # latest reply of each type, until awaited
        self.report: dict[str, Any] | None = None
        try:
            opening = {"type": P.OPEN, "version": P.PROTOCOL_VERSION,
                       "minor": P.PROTOCOL_MINOR, "token": token, "transport": transport,
                       "settings": settings.model_dump(mode="json"),
                       "pid": os.getpid(), "pidns": pid_namespace()}
            if s3_endpoint:
                opening["s3_endpoint"] = s3_endpoint
            self._send(opening)
            reply = self._await(P.OPENED, REPLY_TIMEOUT, what="open")
        except BaseException:
            self._stop_auth_events()
            self._sock.close(linger=0)
            raise
        self._stop_auth_events()
        self._sid: int = reply["stream"]
        same_ns = reply.get("pidns") == pid_namespace() != ""
        self._daemon_pid = reply.get("pid", daemon_pid) if same_ns else None
        if self._daemon_pid != daemon_pid:
            self._daemon = ProcessWatch(self._daemon_pid) if self._daemon_pid else None
        self._next_liveness = 0.0
        self.paths: list[str] = reply["paths"]
        if reply.get("buffers_durable") is False:
            warnings.warn(f"{settings.root_path}: the daemon's {platform.SHM_WHAT} cannot "
                          "hold this stream's chunk buffers; they are in the daemon's memory, "
                          "so frames waiting for their chunk would not survive a daemon crash "
                          f"({platform.SHM_MORE})", RuntimeWarning, stacklevel=3)
        self._shape = settings.frame_shape
        self._dtype = np.dtype(settings.dtype)
        self._total = settings.num_frames
        self._credits = reply["credits"]
        #: free[slot] is 1 while the slot is ours to fill. A frame prefers the slot after the
        #: previous frame's (`_next_slot`), so consecutive frames fill consecutive slots and
        #: the daemon can write a chunk of several frames straight from the ring. (Preferring
        #: slot n % credits, as before, scattered frames once slots came back out of order:
        #: W2 put 58 % of its frames elsewhere, and the daemon copied a third of them.)
        self._free = bytearray(b"\x01") * self._credits
        self._nfree = self._credits
        self._next_slot = 0
        self._inline = reply["ring"] is None
        if not self._inline:
            try:
                self._ring = FrameRing.attach(reply["ring"]["name"])
            except BaseException:  # e.g. another /dev/shm: let the daemon end the stream
                self._sock.send_multipart(P.encode({"type": P.CLOSE, "stream": self._sid,
                                                    "frames": 0}))
                self._sock.close(linger=1000)
                raise
            self._slots = self._ring.slots(self._shape, self._dtype)
            self._filled = self._ring.filled  # the slot table (PROTOCOL.md 3.1)
            self._err_flag = self._ring._error
        else:
            self._slots = self._filled = None
            self._err_flag = np.zeros(1, np.uint32)
        self._scratch = np.empty(self._shape, self._dtype)  # claim() target for dropped frames
        self._seq = 0
        self._dropped = 0
        #: (first frame, count) of the frames sent without data (skipped or dropped here),
        #: so that a view read after close tells them from written frames
        self._gaps: list[tuple[int, int]] = []
        self._closed_reader: DatasetReader | None = None
        #: OME-Zarr attributes given to update_metadata() while open, by group path
        self._zarr_updates: dict[str, dict[str, Any]] = {}
        self._policy = settings.backpressure
        self._block_timeout = settings.backpressure_timeout
        self._notice = b'{"type":"frame","stream":%d,"seq":%%d,"slot":%%d}' % self._sid
        self._router = FrameRouter(settings)  # for on() events and view() only
        self._events = CoordEvents(self._router, frames_done=lambda: self._seq)
        self._last_payload: bytes | None = None
        self._global_metadata: dict[str, dict[str, Any]] = {}
        self._heartbeat: _Heartbeat | None = None
        if reply.get("liveness") == "heartbeat":
            self._heartbeat = _Heartbeat(self._ctx, endpoint, token, self._sid,
                                         reply["heartbeat_key"], reply.get("heartbeat_interval", 0.5),
                                         curve)

    # ---- frames (hot path) ----

    def append(self, frame: np.ndarray, *, frame_metadata: Mapping | None = None) -> None:
        """Copy ``frame`` into the next free slot and notify the daemon; returns at once."""
        with self._lock:
            seq = self._seq
            if type(frame) is not np.ndarray or frame.shape != self._shape or \
                    frame.dtype != self._dtype:
                check_frame(frame, self._shape, self._dtype, seq)
            slot, meta = self._take_slot(frame_metadata)
            if slot < 0:
                return  # dropped
            try:
                if self._inline:
                    self._send_frame(seq, slot, meta, np.ascontiguousarray(frame))
                else:
                    np.copyto(self._slots[slot], frame)
                    self._filled[slot] = seq + 1  # after the pixels: the daemon finds the
                    self._send_frame(seq, slot, meta)  # frame even if the notice is lost
            except BaseException:  # nothing was sent: the slot is still ours
                self._give_back(slot)
                raise
            self._sent(seq)

    @contextmanager
    def claim(self, *, frame_metadata: Mapping | None = None) -> Iterator[np.ndarray]:
        """A writable view of the next slot: fill it in place (zero-copy) and leave the block
        to send it. If the block raises, the slot is returned unsent. Under the "drop"
        policy a full ring yields a scratch buffer and the frame is counted as dropped."""
        with self._lock:
            seq = self._seq
            slot, meta = self._take_slot(frame_metadata)
        if slot < 0:
            yield self._scratch  # dropped: the camera still needs somewhere to put it
            return
        view = self._scratch if self._inline else self._slots[slot]
        try:
            yield view
            with self._lock:
                if not self._inline:
                    self._filled[slot] = seq + 1  # the frame is in the ring (see append)
                self._send_frame(seq, slot, meta, view if self._inline else None)
        except BaseException:  # nothing was sent: the slot is still ours
            with self._lock:
                self._give_back(slot)
            raise
        with self._lock:
            self._sent(seq)

    def _take_slot(self, frame_metadata: Mapping | None) -> tuple[int, Mapping | None]:
        """What every frame goes through before its pixels move: the daemon's health, the
        frame count, its metadata; then the slot it goes to, taken (-1: the frame was
        dropped, policy "drop"). A frame prefers the slot after the previous frame's."""
        if self._err_flag[0] or self._error is not None:
            self._raise_remote()
        if _monotonic() >= self._next_liveness:  # a clock read; a syscall only every 0.25 s
            self._check_daemon_alive()
        seq = self._seq
        if self._total is not None and seq >= self._total:
            self._too_many(seq)
        if frame_metadata is not None:
            frame_metadata = check_frame_metadata(frame_metadata, seq)
        slot = self._next_slot
        if not self._free[slot]:
            slot = self._other_slot()
            if slot < 0:
                self._seq = seq + 1
                self._dropped += 1
                self._add_gap(seq, 1)
                return -1, None
        self._free[slot] = 0
        self._nfree -= 1
        self._next_slot = slot + 1 if slot + 1 < self._credits else 0
        return slot, frame_metadata

    def _give_back(self, slot: int) -> None:
        """A slot taken for a frame that was not sent."""
        if self._filled is not None:
            self._filled[slot] = 0  # (if its table entry was written) not a frame
        self._free[slot] = 1
        self._nfree += 1
        self._next_slot = slot  # the next frame takes it: the run of slots stays unbroken

    def _sent(self, seq: int) -> None:
        self._seq = seq + 1
        # take the releases in as they come (the daemon sends one every ~2 ms at most), a
        # few at a time, not all at once on a full ring: on 5 kHz camera loops, taking them
        # every 64th frame made that frame ~150 us late
        if seq & 7 == 7:
            self._pump(0)
        if self._events.handlers:
            self._events.emit(seq)

    def _send_frame(self, seq: int, slot: int, meta: Mapping | None, payload=None) -> None:
        if meta is None:
            header = self._notice % (seq, slot)
        else:
            header = P.encode({"type": P.FRAME, "stream": self._sid, "seq": seq, "slot": slot,
                               "meta": meta})[1]
        sock = self._sock
        if payload is None:  # two plain sends: half the cost of send_multipart
            sock.send(P.TAG, zmq.SNDMORE)
            sock.send(header)
        else:
            sock.send(P.TAG, zmq.SNDMORE)
            sock.send(header, zmq.SNDMORE)
            sock.send(payload, copy=True)

    def skip(self, *, frames: int = 1) -> None:
        """Advance ``frames`` frames without data (they keep the fill value)."""
        with self._lock:
            self._skip(frames)

    def _skip(self, frames: int) -> None:
        self._check_usable()
        if frames <= 0:
            raise ValueError(f"skip: frames must be positive, not {frames}")
        if self._total is not None and self._seq + frames > self._total:
            self._too_many(self._seq + frames - 1)
        self._send({"type": P.SKIP, "stream": self._sid, "seq": self._seq, "count": frames})
        self._add_gap(self._seq, frames)
        self._seq += frames
        if self._events.handlers:
            self._events.emit_skip(self._seq - frames, frames)

    # ---- observation (same API as the in-process stream) ----

    def on(self, event: str, callback) -> None:
        """Call ``callback(CoordUpdate)`` after each frame sent ("coords_changed") or when
        the extent grows ("coords_expanded")."""
        self._events.on(event, callback)

    def view(self, *, dynamic_shape: bool = True, strict: bool = False) -> StreamView:
        """A live array view of the data (planes read from the daemon on demand), in
        acquisition order with the position axis in place, as ome-writers; see `StreamView`.

        The shape follows the frames sent. A read is served by the daemon after every frame
        sent before it, so a sent plane is final when it is read; the daemon answers "not
        written" for planes it has no frame for (skipped, or dropped under
        ``backpressure="drop"``), which read as zeros, or raise IndexError with
        ``strict=True``. After close, planes are read from the finished files (this process
        must see them)."""
        return StreamView(self._settings, self._router, self.read_plane,
                          dynamic_shape=dynamic_shape, strict=strict,
                          frames_done=lambda: self._seq, events=self._events)

    def _add_gap(self, start: int, count: int) -> None:
        if self._gaps and sum(self._gaps[-1]) == start:
            first, n = self._gaps[-1]
            self._gaps[-1] = (first, n + count)
        else:
            self._gaps.append((start, count))

    def read_plane(self, position: int, index: tuple[int, ...]) -> np.ndarray | None:
        """One stored plane: from the daemon while the stream is open (after every frame sent
        before the request), from the finished files after close (as ome-writers' view)."""
        with self._lock:
            if not (self._closed and self.report is not None):
                self._check_usable()
                self._send({"type": P.READ, "stream": self._sid, "position": position,
                            "index": [int(i) for i in index]})
                reply = self._await(P.PLANE, REPLY_TIMEOUT, what="read")
                if not reply["written"]:
                    return None
                return np.frombuffer(self._last_payload, self._dtype).reshape(self._shape).copy()
        return self._read_closed(position, index)

    def _read_closed(self, position: int, index: tuple[int, ...]) -> np.ndarray | None:
        n = self._router.frame_number(position, index)
        if n >= self._seq or in_runs(self._gaps, n):
            return None  # never sent, skipped, or dropped
        if self._closed_reader is None:
            self._closed_reader = DatasetReader(self._settings, self._s3_endpoint)
        return self._closed_reader.read(position, index)

    def _too_many(self, seq: int) -> None:
        raise FrameCountError(f"frame {seq}: Cannot append frame: would exceed total of "
                              f"{self._total} frames the acquisition declares")

    # ---- slots and replies ----

    def _other_slot(self) -> int:
        """The slot for frame ``_seq`` when its preferred slot is still in use: that one if
        the daemon has released it meanwhile, else the first free one after it, else wait
        as the backpressure policy says. -1 means: drop this frame (policy "drop")."""
        if not self._wait_for_slot():
            return -1
        slot = self._next_slot
        if self._free[slot]:
            return slot
        # the first free one after it: slots come back in runs (a chunk written from
        # consecutive slots), so the frames that follow lie back to back again
        found = self._free.find(1, slot)
        return found if found >= 0 else self._free.find(1)

    def _wait_for_slot(self) -> bool:
        """Get at least one slot back. False means: drop this frame (policy "drop")."""
        self._pump(0)
        if self._error is not None:
            raise self._error
        if self._nfree:
            return True
        if self._policy == "drop":
            return False
        if self._policy == "raise":
            raise RingFullError(f"frame {self._seq}: all {self._credits} ring slots are in use "
                                "(backpressure='raise')")
        deadline = time.monotonic() + self._block_timeout
        while not self._nfree:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RingFullError(
                    f"frame {self._seq}: no ring slot came free within {self._block_timeout} s "
                    f"(all {self._credits} in use; the daemon is behind or stalled)")
            self._pump(min(remaining, LIVENESS_INTERVAL))
            if self._error is not None:
                raise self._error
            if not self._nfree:
                self._check_daemon_alive()
                self._check_responsive(f"frame {self._seq}", deadline - self._block_timeout)
        return True

    def _pump(self, timeout: float) -> None:
        """Handle everything the daemon sent, waiting up to ``timeout`` s for the first
        message: releases free slots, replies are kept by type for `_await`, errors about
        the stream's data are kept in ``_error`` for the next call to raise."""
        sock = self._sock
        if timeout > 0:
            if not sock.poll(int(timeout * 1000)):
                return
        elif not sock.get(zmq.EVENTS) & zmq.POLLIN:  # (nothing there: no exception raised)
            return
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = _monotonic()
            header, payload = P.decode(parts)
            kind = header["type"]
            if kind == P.RELEASE:
                self._take_release(header["slots"])
                continue
            if kind == P.PLANE:
                self._last_payload = payload
            elif kind == P.ERROR and (header.get("code") not in _ANSWER_CODES
                                      or header.get("seq", -1) >= 0):
                # a frame or metadata could not be written, a frame was refused (an error
                # naming a frame answers no request), or the daemon ends the stream: the
                # stream is broken; the first reason is the one to raise
                if self._error is None:
                    code = header.get("code", "")
                    self._error = DaemonGoneError(f"daemon: {header['message']}", code) \
                        if code == P.E_SHUTDOWN else \
                        remote_error(f"daemon: {header['message']}", code,
                                     header.get("exception"))
                continue
            elif kind == P.CLOSED and not self._closed:  # the daemon ended the stream
                self.report = header
                if self._error is None or self._error.code == P.E_SHUTDOWN:
                    self._error = DaemonGoneError(
                        f"the daemon closed the stream ({header.get('reason')}) after writing "
                        f"{header.get('frames_written')} frames to {self._settings.root_path}"
                        + (f": {'; '.join(header['errors'])}" if header.get("errors") else ""),
                        P.E_SHUTDOWN)
            self._replies[kind] = header

    def _take_release(self, slots: list[int]) -> None:
        """Slots the daemon no longer needs (their frames are written, or safe in its chunk
        buffers, with their metadata journaled) are ours to fill again."""
        free = self._free
        for slot in slots:
            if not free[slot]:
                free[slot] = 1
                self._nfree += 1

    def _await(self, kind: str, timeout: float | None, *, what: str) -> dict:
        """Wait for the reply of type ``kind`` to the request just sent, handling releases;
        raise on an error answering it, on the stream's end, or on the daemon's death."""
        start = _monotonic()
        deadline = None if timeout is None else start + timeout
        replies = self._replies
        while True:
            if kind in replies:
                return replies.pop(kind)
            err = replies.pop(P.ERROR, None)
            if err is not None:
                raise remote_error(f"{what}: {err['message']}{_older_daemon(err, kind)}",
                                   err.get("code", ""), err.get("exception") or None)
            if kind == P.OPENED and self._error is not None:
                error, self._error = self._error, None
                raise error
            if P.CLOSED in replies:
                closed = replies[P.CLOSED]
                raise DaemonGoneError(f"{what}: the daemon closed the stream "
                                      f"({closed.get('reason')}): {closed.get('errors')}")
            step = LIVENESS_INTERVAL if deadline is None else \
                min(LIVENESS_INTERVAL, max(0.0, deadline - _monotonic()))
            self._pump(step)
            if any(k in replies for k in (kind, P.ERROR, P.CLOSED)):
                continue
            if kind == P.OPENED:
                self._check_auth(what)
            self._check_daemon_alive()
            self._check_responsive(what, start)
            if deadline is not None and _monotonic() >= deadline:
                raise DaemonGoneError(f"{what}: no answer from the daemon at {self._endpoint} "
                                      f"within {timeout} s")

    def _check_auth(self, what: str) -> None:
        events = self._auth_events
        if events is not None and events.poll(0):
            if recv_monitor_message(events)["event"] & _HANDSHAKE_FAILED:
                raise ServiceError(f"{what} refused: the daemon at {self._endpoint} did not "
                                   "accept the token or keys, or speaks another security "
                                   "mechanism (PLAIN/CURVE: see the daemon's connection file)",
                                   P.E_AUTH)

    def _stop_auth_events(self) -> None:
        if self._auth_events is not None:
            self._sock.disable_monitor()
            self._auth_events.close(linger=0)
            self._auth_events = None

    def _check_daemon_alive(self) -> None:
        self._next_liveness = _monotonic() + LIVENESS_INTERVAL
        if self._daemon is not None and not self._daemon.alive():
            raise DaemonGoneError(f"the writer daemon (pid {self._daemon_pid}) is gone; frames "
                                  f"it acknowledged are on disk at {self._settings.root_path}")

    def _check_responsive(self, what: str, since: float) -> None:
        """While blocked since ``since``: ping a silent daemon; give up on one that stays
        silent (hung, SIGSTOP-ed, unreachable) instead of waiting forever. Silence counts
        from the later of the last message and the start of the wait, so a stream that sat
        idle is not taken for dead."""
        now = _monotonic()
        silent = now - max(self._last_heard, since)
        if silent > HUNG_TIMEOUT:
            raise DaemonGoneError(f"{what}: the daemon at {self._endpoint} has not answered for "
                                  f"{silent:.1f} s (hung or unreachable)")
        if silent > PING_AFTER and now - self._last_ping > PING_AFTER:
            self._last_ping = now
            self._send({"type": P.PING})

    def _raise_remote(self) -> None:
        """The ring's error flag is up (or an error arrived): raise the daemon's own reason.
        The daemon sends it just before it raises the flag, so wait for it to arrive (as
        long as the daemon lives and answers)."""
        start = _monotonic()
        while self._error is None:
            self._pump(LIVENESS_INTERVAL)
            if self._error is not None:
                break
            self._check_daemon_alive()
            if _monotonic() - start > HUNG_TIMEOUT:
                raise ServiceError(f"the daemon flagged the stream to {self._settings.root_path}"
                                   f" as failed (ring error flag {int(self._err_flag[0])}) but "
                                   f"sent no reason within {HUNG_TIMEOUT:.0f} s")
            self._check_responsive("waiting for the daemon's error message", start)
        raise self._error

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError(f"the stream to {self._settings.root_path} is closed")
        if self._err_flag[0] or self._error is not None:
            self._raise_remote()

    def _send(self, header: dict) -> None:
        self._sock.send_multipart(P.encode(header))

    # ---- control ----

    def status(self) -> dict[str, Any]:
        """The daemon's view of this stream: frames written, dropped, backlog, rate, errors."""
        with self._lock:
            if self._closed and self.report is not None:
                return dict(self.report)
            self._send({"type": P.STATUS, "stream": self._sid})
            st = self._await(P.STATUS_REPLY, REPLY_TIMEOUT, what="status")
        st["frames_sent"] = self._seq
        st["client_dropped"] = self._dropped
        st["slots_in_use"] = self._credits - self._nfree
        return st

    def set_global_metadata(self, namespace: str, metadata: Mapping[str, Any]) -> None:
        """Acquisition-wide metadata under ``namespace``: handed to the daemon, which writes
        it at close; after close (as ome-writers allows), written into the finished files
        from this process."""
        value = check_global_metadata(namespace, metadata)
        if self._settings.format_name == "ome-zarr":
            from .backends.zarr_metadata import check_global_namespace

            check_global_namespace(self._settings, namespace)
        with self._lock:  # before close's request, or after its report: never during
            if self._closed and self.report is not None:
                self._write_global_metadata(namespace, value)
            else:
                self._check_usable()
                self._send({"type": P.METADATA, "stream": self._sid, "namespace": namespace,
                            "value": value})
            self._global_metadata[namespace] = value

    def _write_global_metadata(self, namespace: str, value: dict[str, Any]) -> None:
        from . import format_metadata as fm
        from .backends import create_backend

        # not created: the layout only
        backend = create_backend(self._settings, s3_endpoint=self._s3_endpoint)
        try:
            if self._settings.format_name == "ome-zarr":
                attrs = backend.layout.read_attributes("")
                attrs[namespace] = value
                backend.layout.write_group("", attrs)
                backend.layout.write_ome_xml()  # its annotations hold global metadata too
                return
            layout = backend.layout
            for key in layout.keys():  # the documents that describe images get it
                ome = layout.read_document(key)
                if ome.binary_only is None:
                    fm.set_global_annotation(ome, namespace, value)
                    layout.write_document(key, ome)
        except OSError as e:
            raise OSError(f"{self._settings.output_path}: cannot write global metadata from "
                          f"this process: {e}") from e

    def get_global_metadata(self) -> dict[str, dict[str, Any]]:
        """The global metadata set so far, by namespace (`set_global_metadata`)."""
        return {ns: dict(v) for ns, v in self._global_metadata.items()}

    def get_metadata(self) -> dict[Any, Any]:
        """The format's metadata in ome-writers' structure (see `OMEStream.get_metadata`):
        OME-Zarr ``{group path: attributes}``, OME-TIFF ``{position index: ome_types.OME}``.

        Read from the dataset's files, which the daemon writes (zarr metadata at creation and at
        close, OME-TIFF's final OME-XML at close). Before an OME-TIFF is closed, or where this
        process cannot see the files (a remote daemon), built from the settings and the global
        metadata set here, as the daemon builds it (no per-frame metadata then)."""
        from . import format_metadata as fm
        from .backends import create_backend

        # not created: layout and metadata only
        backend = create_backend(self._settings, s3_endpoint=self._s3_endpoint)
        backend.global_metadata.update(self.get_global_metadata())
        if self._settings.format_name == "ome-zarr":
            keys = fm.zarr_keys(backend.image_groups)
            out = {}
            for i, key in enumerate(keys):
                try:
                    out[key] = backend.layout.read_attributes(backend.image_groups[i])
                except (OSError, ValueError):
                    out[key] = backend._image_attributes(i)
                if key in self._zarr_updates and not self._closed:
                    # handed to the daemon, maybe not written yet: what it will store
                    out[key] = fm.merge_zarr_attributes(self._zarr_updates[key], out[key])
            return out
        if self._closed:  # the files the daemon finalized, where this process sees them
            try:
                return {key: backend.layout.read_document(key) for key in backend.layout.keys()}
            except Exception:  # noqa: BLE001 - not visible here, or not an OME-TIFF
                pass
        return backend.get_metadata()

    def update_metadata(self, metadata: Mapping[Any, Any]) -> None:
        """Write metadata edited from `get_metadata` back (see `OMEStream.update_metadata`).

        OME-Zarr, while the stream is open: checked here, then handed to the daemon in order
        with the frames (a failure to write it is reported by the next call, as any write
        error). After close, and for OME-TIFF (only after close, as ome-writers), written from
        this process into the files the daemon finalized (so this process must see them)."""
        with self._lock:
            self._update_metadata(metadata)

    def _update_metadata(self, metadata: Mapping[Any, Any]) -> None:
        from . import format_metadata as fm
        from .backends import create_backend

        backend = create_backend(self._settings, s3_endpoint=self._s3_endpoint)
        zarr = self._settings.format_name == "ome-zarr"
        if not self._closed:
            if not zarr:
                raise RuntimeError("update_metadata() must be called after the stream context "
                                   "exits. TIFF files must be closed before metadata can be "
                                   "updated.")
            self._check_usable()
            keys = fm.zarr_keys(backend.image_groups)
            checked = fm.check_zarr_update(metadata, keys)
            attributes = {keys[pos]: attrs for pos, attrs in checked.items()}
            self._send({"type": P.UPDATE_METADATA, "stream": self._sid,
                        "attributes": attributes})
            self._zarr_updates.update(attributes)
            return
        if zarr:
            keys = fm.zarr_keys(backend.image_groups)
            for pos, attrs in fm.check_zarr_update(metadata, keys).items():
                group = backend.image_groups[pos]
                keep = self._global_metadata if not group else ()
                try:
                    current = backend.layout.read_attributes(group)
                    backend.layout.write_group(group, fm.merge_zarr_attributes(attrs, current,
                                                                               keep))
                except (OSError, ValueError) as e:
                    raise OSError(f"{backend.paths[pos]}: cannot update its metadata from this "
                                  f"process: {e}") from e
            backend.layout.write_ome_xml()  # the names it gives the images follow
            return
        layout = backend.layout
        updates = fm.check_tiff_update(metadata, layout.keys())
        try:
            layout.adopt_file_uuids()
        except Exception as e:  # noqa: BLE001
            raise OSError(f"{self._settings.output_path}: cannot read the dataset's files "
                          f"from this process: {e}") from e
        for key, ome in updates.items():
            try:
                layout.write_document(key, layout.relink(key, ome))
            except OSError as e:
                raise OSError(f"{layout.path_of(key)}: cannot update its metadata from this "
                              f"process: {e}") from e

    def close(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the daemon to write everything; return its final report, or raise
        `ServiceError` if any frame could not be written."""
        if self._closed:
            return self.report or {}
        # the handlers see every frame sent (and may still read the view) before it ends
        self._events.close()
        with self._lock:
            if self._closed:  # closed by another thread meanwhile
                return self.report or {}
            self._closed = True
            try:
                self._send({"type": P.CLOSE, "stream": self._sid, "frames": self._seq})
                # unmapped while the daemon still maps the ring: cheap; the daemon's unmap,
                # after its report, frees the memory
                self._release_ring()
                self.report = self._await(P.CLOSED, timeout, what="close")
            finally:
                self._release_resources()
        if self.report.get("errors"):
            raise ServiceError(f"{self._settings.root_path}: " + "; ".join(self.report["errors"]),
                               P.E_WRITE)
        if self.report.get("reason", "closed by client") != "closed by client":
            raise DaemonGoneError(f"{self._settings.root_path}: the daemon ended the stream "
                                  f"({self.report['reason']}) after writing "
                                  f"{self.report.get('frames_written')} of the "
                                  f"{self._seq} frames sent", P.E_SHUTDOWN)
        return self.report

    def _release_ring(self) -> None:
        self._slots = self._filled = None
        # append()/claim() check these first: make them raise "closed"
        self._err_flag = np.ones(1, np.uint32)
        self._error = RuntimeError(f"the stream to {self._settings.root_path} is closed")
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def _release_resources(self, linger: int = 0) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self._release_ring()
        self._sock.close(linger=linger)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def frames_sent(self) -> int:
        return self._seq

    @property
    def frames_dropped(self) -> int:
        """Frames dropped on this side because the ring was full (policy "drop")."""
        return self._dropped

    @property
    def lag(self) -> int:
        """Frames sent but not yet written by the daemon (read from the ring, no message)."""
        if self._ring is None:
            return self._credits - self._nfree
        return self._seq - self._dropped - self._ring.frames_written

    def __enter__(self) -> ServiceStream:
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            try:  # keep the original exception; still finalize what was written
                self.close()
            except Exception:  # noqa: BLE001
                pass

    def __del__(self) -> None:
        """A stream dropped without close(): ask the daemon to finalize it (best effort,
        no wait), so that its dataset and ring do not live as long as this process."""
        if not getattr(self, "_closed", True) and getattr(self, "_sock", None) is not None:
            if getattr(self, "_seq", 0):  # as the in-process stream (and ome-writers 0.3.2)
                warnings.warn("OMEStream was not closed before garbage collection. Please use "
                              "`with create_stream(...):` in a context manager or call "
                              "`stream.close()` before deletion.", UserWarning, stacklevel=2)
            try:
                self._sock.send_multipart(P.encode({"type": P.CLOSE, "stream": self._sid,
                                                    "frames": self._seq}), zmq.NOBLOCK)
                self._release_resources(linger=1000)
            except Exception:  # noqa: BLE001
                pass


class _Heartbeat(threading.Thread):
    """Tells a daemon that cannot see our pid (another pid namespace, another host) that
    this client is alive; its own socket, so the camera thread's socket stays single-threaded."""

    def __init__(self, ctx: zmq.Context, endpoint: str, token: str, sid: int, key: str,
                 interval: float, curve: CurveKeys | None = None):
        super().__init__(name=f"ows-heartbeat-{sid}", daemon=True)
        self._ctx, self._endpoint, self._token, self._interval = ctx, endpoint, token, interval
        self._curve = curve
        self._msg = P.encode({"type": P.HEARTBEAT, "stream": sid, "key": key})
        self._stopped = threading.Event()
        self.start()

    def run(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        P.authenticate(sock, self._token, self._curve)
        sock.connect(self._endpoint)
        try:
            while not self._stopped.is_set():
                sock.send_multipart(self._msg)
                while sock.poll(0):
                    sock.recv_multipart()  # an error reply (stream gone) needs no action here
                self._stopped.wait(self._interval)
        finally:
            sock.close(0)

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=2)


# ---- finding or starting the local daemon ----

def _require_encryption(endpoint: str, curve: CurveKeys | None) -> None:
    """PLAIN would send the token in clear text: beyond loopback, only CURVE."""
    if curve is None and not P.is_loopback(endpoint):
        raise ServiceError(
            f"{endpoint} is not a loopback address: its connection must be encrypted (CURVE). "
            "Pass the daemon's connection file (create_stream(..., connection_file=...), "
            "copied from its machine: it holds the daemon's public key and your key pair)",
            P.E_AUTH)


def request(endpoint: str, token: str, header: dict, timeout: float = 5.0,
            curve: CurveKeys | None = None) -> dict:
    """One request to a daemon on a socket of its own, and its reply (status, ping).
    Raises TimeoutError when no answer comes, ServiceError when the token is refused."""
    _require_encryption(endpoint, curve)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    P.authenticate(sock, token, curve)
    events = sock.get_monitor_socket(_HANDSHAKE_FAILED)
    try:
        sock.connect(endpoint)
        sock.send_multipart(P.encode(header))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(events, zmq.POLLIN)
        ready = dict(poller.poll(int(timeout * 1000)))
        if sock in ready:
            return P.decode(sock.recv_multipart())[0]
        if events in ready:
            raise ServiceError(f"the daemon at {endpoint} did not accept the token", P.E_AUTH)
        raise TimeoutError(f"no answer from the daemon at {endpoint} within {timeout} s")
    finally:
        sock.disable_monitor()
        events.close(linger=0)
        sock.close(linger=0)


def daemon_status(endpoint: str, token: str, timeout: float = 5.0,
                  curve: CurveKeys | None = None) -> dict:
    """The daemon's status: its pid and version, and a report per open stream."""
    return request(endpoint, token, {"type": P.STATUS}, timeout, curve)


def daemon_running(info: ConnectionInfo | None) -> bool:
    """Whether the daemon of a connection file runs: by its pid where that means something
    (our pid namespace), else by asking it."""
    if info is None:
        return False
    if not info.pidns or info.pidns == pid_namespace():
        return pid_alive(info.pid)
    try:
        return request(info.endpoint, info.token, {"type": P.PING}, timeout=2.0,
                       curve=info.curve_keys)["type"] == P.PONG
    except (TimeoutError, ServiceError, zmq.ZMQError):
        return False


def local_daemon(rt_dir: str | os.PathLike | None = None, *, start: bool = True,
                 idle_exit: float = 300.0, timeout: float = 30.0) -> ConnectionInfo:
    """The connection of the local daemon, starting one (detached; it exits after
    ``idle_exit`` seconds without streams) when none runs."""
    rt = runtime_dir(rt_dir)
    info = ConnectionInfo.read(rt)
    if daemon_running(info):
        return info
    if not start:
        raise DaemonGoneError(f"no daemon runs for {rt}")
    with open(rt / "start.lock", "w") as lock:
        hold_lock(lock.fileno())  # two clients starting at once start one daemon
        info = ConnectionInfo.read(rt)
        if daemon_running(info):
            return info
        log_path = rt / "daemon.log"
        pid = spawn_detached(
            [sys.executable, "-m", "ome_writers_service", "serve", "--runtime-dir", str(rt),
             "--idle-exit", str(idle_exit)], log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = ConnectionInfo.read(rt)
            if info is not None and info.pid == pid:
                return info
            if not pid_alive(pid):
                break
            time.sleep(0.05)
        raise DaemonGoneError(f"the writer daemon did not start; see {log_path}:\n"
                              + _tail(log_path))


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def connect_stream(settings: AcquisitionSettings, *, endpoint: str | None = None,
                   token: str | None = None, transport: str = "shm",
                   runtime_dir_path: str | os.PathLike | None = None,
                   s3_endpoint: str | None = None,
                   connection_file: str | os.PathLike | None = None) -> ServiceStream:
    """A `ServiceStream` to ``endpoint``, to the daemon of ``connection_file`` (a copy of
    its ``daemon.json``), or to the local daemon (started when none runs)."""
    pid = None
    curve = None
    if connection_file is not None:
        info = ConnectionInfo.from_file(connection_file)
        endpoint = endpoint or info.endpoint
        token, curve = token or info.token, info.curve_keys
    elif endpoint is None:
        info = local_daemon(runtime_dir_path)
        endpoint, pid, curve = info.endpoint, info.pid, info.curve_keys
        token = token or info.token
    else:
        info = ConnectionInfo.read(runtime_dir(runtime_dir_path))
        if info is not None and info.endpoint == endpoint:
            curve = info.curve_keys
            if token is None:
                token, pid = info.token, info.pid
        token = token or os.environ.get("OME_WRITERS_SERVICE_TOKEN")
    if token is None:
        raise ServiceError(f"no token for {endpoint}: pass token=..., set "
                           "OME_WRITERS_SERVICE_TOKEN, or read it from the daemon's connection "
                           "file", P.E_AUTH)
    return ServiceStream(settings, endpoint=endpoint, token=token, transport=transport,
                         daemon_pid=pid, s3_endpoint=s3_endpoint, curve=curve)


OMEStream.register(ServiceStream)  # create_stream() returns an OMEStream either way
