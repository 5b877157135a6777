"""A stream's writer thread in the daemon: it owns the stream's ring and dataset, writes each
frame straight from its ring slot (or from the inline payload), and hands slots back with
``release`` messages to the main loop (`daemon.Daemon`), which sends them to the client.

A slot comes back once its frame is safe from a daemon crash: in the file, or in a chunk
buffer in shared memory with its metadata journaled. `StreamWorker.report` is what
``status`` and ``closed`` say about the stream.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from . import chunk_buffers
from . import format_metadata as fm
from . import platform
from . import protocol as P
from .arena import ArenaError, BufferArena
from .backends import create_backend
from .journal import journal_path
from .ring import FrameRing, RingError
from .schema import AcquisitionSettings
from .stream import OMEStream

log = logging.getLogger("ome_writers_service.daemon")

OUTBOX = "inproc://ows-outbox"
#: Slots written are handed back in one `release` at most this long after the previous one
#: (or sooner, `_release_every` of them at a time): at 5 kHz a release per frame made the
#: client decode 5,000 messages a second on its camera thread, 64 at a time (a ~150 us spike
#: every 64th append, its p99) and the daemon flush its journal as often.
RELEASE_DELAY = 0.002
#: lent frames of a unit still being assembled are copied into its (shared-memory) chunk
#: buffer, and their slots released, once no frame came for this long: a slow time-lapse
#: must not leave frames in slots that a daemon crash would lose, for minutes
HOLD_WHILE_IDLE = 0.05
#: `StreamWorker._busy` values
FRAME, HELD = 1, 2
_WAKE = ("wake",)


def reason_code(reason: str) -> str:
    """The fixed word for a `closed` reason (whose text may say more: "client lost: ...")."""
    head = reason.split(":", 1)[0]
    return {"closed by client": "closed_by_client", "shutdown": "shutdown",
            "client lost": "client_lost"}.get(head, "internal_error")


@dataclass
class StreamStats:
    received: int = 0
    written: int = 0
    dropped: int = 0
    skipped: int = 0
    recovered: int = 0  #: written from the ring without a notice (the client died)
    #: frames whose slots were released: on disk, or in a shared-memory chunk buffer, with
    #: their metadata in the journal; what survives a daemon crash (status' frames_written)
    released: int = 0
    refused: int = 0  #: frame notices refused (their slots given back unwritten)
    started: float = field(default_factory=time.monotonic)
    errors: list[str] = field(default_factory=list)
    #: where the writer thread's time went (seconds; `timings` in the report): handing
    #: frames to the backend (for OME-TIFF the page's write into the page cache; for
    #: OME-Zarr copies into chunk buffers and waits for writes in flight), flushing the
    #: journal before a release, and waiting for work (idle: the thread was not the limit)
    write_s: float = 0.0
    journal_s: float = 0.0
    idle_s: float = 0.0
    slowest_write_s: float = 0.0
    cpu_s: float = 0.0  #: the writer thread's own CPU time, first frame to finalized


class StreamWorker(threading.Thread):
    """Writes one stream's frames, in order, on its own thread.

    The thread also creates the stream's ring and dataset before it answers ``opened``: both
    can take a while (faulting in a large ring, deleting an old dataset) and the main loop
    must keep serving the other streams meanwhile.
    """

    def __init__(self, sid: int, peer: bytes, settings: AcquisitionSettings, transport: str,
                 slots: int, ctx: zmq.Context, s3_endpoint: str | None = None) -> None:
        super().__init__(name=f"ows-stream-{sid}", daemon=True)
        self.sid = sid
        self.peer = peer
        self.settings = settings
        self.s3_endpoint = s3_endpoint  #: the client's, for an s3:// root_path
        self.inline = transport == "inline"
        self.ring: FrameRing | None = None  # created on the worker thread
        self.slots = slots
        self.stats = StreamStats()
        self.stream: OMEStream | None = None  # created on the worker thread (may rmtree)
        self.opened_reply: dict[str, Any] = {}
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.expected_seq = 0  # next sequence number the main thread accepts
        self.frames_queued = 0  # frame notices the main thread handed over
        self.num_frames = settings.num_frames
        self._metadata_keys: list[str] | None = None
        #: frame notices of the current drain, handed over as one queue item (one wake-up)
        self.batch: list[tuple] = []
        #: liveness: the client's pid when it shares our pid namespace, else its messages:
        #: any message naming the stream, or a heartbeat with the key (PROTOCOL.md 3.2)
        self.client_pid: int | None = None
        self.client_watch: platform.ProcessWatch | None = None  # watches client_pid
        self.heartbeat_key = secrets.token_hex(8)
        self.last_heard = math.inf  # the clock starts when `opened` is sent
        #: the protocol minor version the stream speaks: the lower of the client's and ours
        self.minor = 0
        self.closing = False
        self.finished = threading.Event()
        self._pending_error: str | None = None
        self._pending_exception: str | None = None  # its type (`P.exception_name`)
        self._pending_seq = -1  # the frame it is about (-1: none or several, named in it)
        self._out: zmq.Socket | None = None  # the worker thread's socket to the main loop
        #: worst-case bytes of its buffers the daemon admitted the stream with, and whether
        #: they are free again (the stream finalized): no longer counted in the budget
        self.memory = 0
        self.memory_freed = False
        #: whether its chunk buffers (if any) survive the daemon (shared memory)
        self.buffers_durable = True
        #: slots handed back by the backend (possibly from its threads), not yet sent
        self._released: collections.deque[int] = collections.deque()
        self._lent = 0  # slots lent to the backend and not yet released
        #: busy[slot]: the worker took the slot and its release is not yet sent; FRAME if it
        #: holds a frame the backend accepted, HELD if not (refused, or after an error)
        self._busy = bytearray(slots)
        #: hand slots back at least this often while frames keep coming, so that a short
        #: disk stall does not become a full ring for the time the whole ring takes
        self._release_every = max(1, min(64, slots // 8))
        self._last_release = 0.0  # (monotonic) when the last `release` went out
        self._last_frame = 0.0  # (monotonic) when the last frame came
        self._idle = False  # the worker waits for work (a finished write must wake it)
        self._ctx = ctx
        self._views: list[np.ndarray] | None = None
        self._shape, self._dtype = settings.frame_shape, np.dtype(settings.dtype)
        self.storage_shape = tuple(d.count for d in settings.storage_dimensions[:-2])

    # ---- worker thread ----

    def run(self) -> None:
        out = self._ctx.socket(zmq.PUSH)
        out.connect(OUTBOX)
        self._out = out
        try:
            if not self._open(out):
                return
            while True:
                self._idle = True  # a write finishing wakes us (`_write`'s done)
                waited = time.perf_counter()
                try:  # while lent slots are out, wake up to hand them back
                    item = self.queue.get(timeout=self._release_wait())
                except queue.Empty:
                    self._idle = False
                    self.stats.idle_s += time.perf_counter() - waited
                    if self._lent and not self._released and self.stream is not None and \
                            time.monotonic() - self._last_frame >= HOLD_WHILE_IDLE:
                        self._guard(self.stream.give_back_held)
                    self._send_release(out)
                    continue
                self._idle = False
                self.stats.idle_s += time.perf_counter() - waited
                kind = item[0]
                if kind == "wake":  # slots came free: hand them back (below)
                    pass
                elif kind == "frames":
                    for seq, slot, meta, payload in item[1]:
                        self._write(seq, slot, meta, payload)
                        if len(self._released) >= self._release_every:
                            self._send_release(out)
                elif kind == "skip":
                    self._skip_to(item[1] + item[2], dropped=False)
                elif kind == "release":  # a notice the main thread refused
                    self._give_back_refused(item[1])
                elif kind == "metadata":
                    self._guard(lambda: self.stream.set_global_metadata(item[1], item[2]))
                elif kind == "update_metadata":
                    self._guard(lambda: self.stream.update_metadata(item[1]))
                elif kind == "read":
                    self._read(out, item[1], item[2])
                elif kind == "close":
                    self._finish(out, total=item[1], reason=item[2])
                    return
                if self.queue.empty() and (
                        len(self._released) >= self._release_every
                        or time.monotonic() - self._last_release >= RELEASE_DELAY):
                    self._send_release(out)
        except BaseException as e:  # noqa: BLE001 - a worker must report, never vanish
            log.exception("stream %d: worker crashed", self.sid)
            self.stats.errors.append(f"internal error: {e!r}")
            self._finish(out, total=None, reason="internal error")
        finally:
            out.close(linger=1000)
            self.finished.set()

    def _create_arena(self) -> BufferArena | None:
        """The chunk buffers of an OME-Zarr stream, in shared memory so that the frames in
        them survive the daemon (`arena`); sized by their worst case (`chunk_buffers`).
        Where /dev/shm cannot hold them (a container's default 64 MiB), they are the
        daemon's own memory, as the client is told (`buffers_durable`) and the log says."""
        found = chunk_buffers.estimate(self.settings)
        if not found.total:
            return None
        try:
            return BufferArena.create(chunk_buffers.write_unit(self.settings),
                                      self.settings.frame_nbytes,
                                      found.open_units + found.pending_units,
                                      journal=str(journal_path(self.settings)))
        except ArenaError as e:
            self.buffers_durable = False
            log.warning("stream %d (%s): chunk buffers in the daemon's memory, not shared "
                        "memory: frames waiting for their chunk would not survive a daemon "
                        "crash: %s", self.sid, self.settings.root_path, e)
            return None

    def metadata_keys(self) -> list[str]:
        """The group paths update_metadata() accepts (an OME-Zarr stream's image groups),
        worked out once from the layout."""
        if self._metadata_keys is None:
            self._metadata_keys = fm.zarr_keys(create_backend(self.settings).image_groups)
        return self._metadata_keys

    def _open(self, out: zmq.Socket) -> bool:
        """Create the ring and the dataset, then answer `opened`; or answer `error`."""
        arena = None
        try:
            if not self.inline:
                self.ring = FrameRing.create(self.settings.frame_nbytes, self.slots)
                self._views = self.ring.slots(self._shape, self._dtype)
            arena = self._create_arena()
            self.stream = OMEStream(self.settings, lend_limit=self.slots,
                                    s3_endpoint=self.s3_endpoint, arena=arena)
        except Exception as e:  # noqa: BLE001 - reported to the client
            log.warning("stream %d: cannot open %s: %s", self.sid, self.settings.root_path, e)
            self._remove_ring()
            if arena is not None:
                arena.close(unlink=True)
            # the service's own resources: no in-process counterpart
            ring = isinstance(e, (RingError, ArenaError))
            code, what = (P.E_RESOURCES, "") if ring else \
                (P.E_SETTINGS, f"cannot create {self.settings.root_path}: ")
            self._send(out, P.error_header(code, f"{what}{e}",
                                           exception=None if ring else P.exception_name(e)))
            return False
        ring = self.ring
        self._send(out, {**self.opened_reply, "paths": self.stream.paths,
                         "buffers_durable": self.buffers_durable, "ring": None if
                         ring is None else {
                             "name": ring.name, "path": str(ring.path), "slots": ring.slot_count,
                             "slot_size": ring.slot_size, "header_size": ring.header_size,
                             "frame_nbytes": ring.frame_nbytes},
                         # fixed-type companions of `ring` (1.1): "" for an inline stream
                         "ring_name": "" if ring is None else ring.name,
                         "ring_path": "" if ring is None else str(ring.path)})
        self.last_heard = time.monotonic()
        return True

    def _release_wait(self) -> float | None:
        """How long the worker may wait for work: with slots to hand back, until the next
        `release` is due; with lent slots out, until one may come free; else for ever."""
        if self._released:
            return max(0.0, RELEASE_DELAY - (time.monotonic() - self._last_release))
        return RELEASE_DELAY if self._lent else None

    def _give_back_refused(self, slot: int) -> None:
        """The slot of a frame notice the main thread refused comes back in a release (one
        rule for every refusal, PROTOCOL.md 3). A slot that still holds a frame the worker
        took (a client that reused a slot before its release) comes back once, with that
        frame: its pixels are still being written."""
        if self._busy[slot]:
            return
        if self.ring is not None:
            self.ring.forget(slot)  # not a frame whose notice was lost
        self._busy[slot] = HELD
        self._lent += 1
        self._released.append(slot)

    def _write(self, seq: int, slot: int, meta: dict | None, payload: Any) -> None:
        if not self.stats.received:  # the timings count from the first frame, not set-up
            self.stats.idle_s = 0.0
            self.stats.cpu_s = -time.thread_time()
        self.stats.received += 1
        self._last_frame = time.monotonic()
        self._lent += 1
        self._busy[slot] = FRAME
        once = [slot]
        released = self._released

        def done() -> None:  # from any thread, exactly once (list.pop is atomic)
            try:
                released.append(once.pop())
            except IndexError:
                return
            # a write finished while the worker sleeps: the client may be blocked waiting for
            # this very slot (a full ring), so wake the worker to send it back now. (Waking
            # only on its timeout ran W1 in 5 ms bursts: the worker idled 85 % of the time,
            # the disk with it.)
            if self._idle:
                self._idle = False
                self.queue.put(_WAKE)

        if self.stats.errors:
            self._busy[slot] = HELD
            done()  # nothing more is written after an error
            return
        if seq > self.stream._router.frames_done:
            self._skip_to(seq, dropped=True)
        if payload is not None:
            frame = np.frombuffer(payload, dtype=self._dtype).reshape(self._shape)
        else:
            frame = self._views[slot]
        started = time.perf_counter()
        try:
            self.stream.append_borrowed(frame, done, frame_metadata=meta)
        except Exception as e:  # noqa: BLE001 - reported to the client, never raised here
            self._busy[slot] = HELD
            self._failed(e, seq)
            done()
            return
        took = time.perf_counter() - started
        self.stats.write_s += took
        if took > self.stats.slowest_write_s:
            self.stats.slowest_write_s = took
        self.stats.written += 1
        if self.ring is not None:
            self.ring.set_frames_written(self.stats.written)

    def _skip_to(self, seq: int, *, dropped: bool) -> None:
        gap = seq - self.stream._router.frames_done
        if gap > 0 and not self.stats.errors:
            if self._guard(lambda: self.stream.skip(frames=gap)):
                if dropped:
                    self.stats.dropped += gap
                else:
                    self.stats.skipped += gap

    def _read(self, out: zmq.Socket, position: int, index: tuple[int, ...]) -> None:
        """A stored plane for the client's live view, read here: it may touch the disk."""
        try:
            plane = self.stream.read_plane(position, index)
        except Exception as e:  # noqa: BLE001 - a failed read is the reader's problem
            self._send(out, P.error_header(
                P.E_READ, f"read of plane {list(index)} at position {position} failed: {e}",
                stream=self.sid, exception=P.exception_name(e)))
            return
        header = {"type": P.PLANE, "stream": self.sid, "written": plane is not None}
        self._send(out, header, None if plane is None else np.ascontiguousarray(plane))

    def _guard(self, fn) -> bool:
        try:
            fn()
            return True
        except Exception as e:  # noqa: BLE001 - reported to the client, never raised here
            self._failed(e)
            return False

    def _failed(self, e: Exception, seq: int | None = None) -> None:
        """The stream cannot go on: tell the client, the message first, then the ring flag
        (the client, seeing the flag, waits for the message that says why)."""
        # an error that names the frames it lost is not about the frame being handled
        named = seq is None or getattr(e, "names_frames", False)
        msg = str(e) if named else f"frame {seq}: {e}"
        log.error("stream %d (%s): %s", self.sid, self.settings.root_path, msg)
        self.stats.errors.append(msg)
        if self._out is not None:
            self._send(self._out, P.error_header(P.E_WRITE, msg, stream=self.sid,
                                                 seq=-1 if named else seq,
                                                 exception=P.exception_name(e)))
        else:
            self._pending_error = msg
            self._pending_exception = P.exception_name(e)
            self._pending_seq = -1 if named else seq
        if self.ring is not None:
            self.ring.set_error(1)

    def _finish(self, out: zmq.Socket, total: int | None, reason: str) -> None:
        """Finalize the dataset with what arrived and send the final report."""
        if total is not None and not self.stats.errors:
            self._skip_to(total, dropped=True)  # frames the client dropped at the very end
        if reason != "closed by client":  # the daemon ends it
            if self.ring is not None and not self.ring.error_flag:
                self.ring.set_error(2)  # a live client stops filling slots at its next append
            if reason != "internal error":
                self._write_unannounced()
            self._send(out, P.error_header(
                P.E_SHUTDOWN, f"the daemon ended the stream ({reason}); it is finalized with "
                              f"the {self.stats.received} frames received", stream=self.sid))
        if self.stream is not None:
            started = time.monotonic()
            try:
                self.stream.close()
            except Exception as e:  # noqa: BLE001
                log.exception("stream %d: finalize failed", self.sid)
                self.stats.errors.append(f"finalize: {e}")
            # the report counts what is on disk (writes that failed at the end do not count)
            self.stats.written = self.stream.frames_written
            log.info("stream %d (%s) finalized in %.3f s: %s", self.sid,
                     self.settings.root_path, time.monotonic() - started, reason)
        self.stats.cpu_s += time.thread_time()  # from the first frame through finalize
        # every slot comes back before the final report (PROTOCOL.md 3): the client's credits
        # are whole again, also for the frames whose chunks the close just wrote
        self._send_release(out, journal=False)  # finalized: the journal is gone
        if self._lent:
            log.warning("stream %d: %d slot(s) still lent after finalizing", self.sid, self._lent)
        self.memory_freed = True  # finalized: the buffers are gone before the report says so
        if self.ring is not None:
            self.ring.unlink()  # the name is gone before the client reads the report
        self._send(out, {"type": P.CLOSED, "reason": reason,
                         "reason_code": reason_code(reason), **self.report()})
        self._remove_ring()  # unmapping frees the memory: not on the client's clock

    def _write_unannounced(self) -> None:
        """Write the frames the client put in the ring whose notices never arrived: a
        client killed right after append() returned takes its queued notices with it, not
        the ring, whose slot table names the frame in each slot (PROTOCOL.md 3.1)."""
        if self.ring is None or self.stream is None or self.stats.errors:
            return
        found = self.ring.unannounced(self.expected_seq, self.num_frames)
        for seq, slot in found:
            self._write(seq, slot, None, None)
        if found:
            self.stats.recovered += len(found)
            log.info("stream %d (%s): wrote %d frames (%d..%d) from the ring whose notices "
                     "were lost with the client", self.sid, self.settings.root_path, len(found),
                     found[0][0], found[-1][0])

    def _remove_ring(self) -> None:
        self._views = None  # drop the slot views so the mapping can go
        if self.ring is not None:
            self.ring.close()

    def _send_release(self, out: zmq.Socket, *, journal: bool = True) -> None:
        slots = []
        released = self._released
        while released:
            slots.append(released.popleft())
        frames = 0
        for slot in slots:
            frames += self._busy[slot] == FRAME
            self._busy[slot] = 0
        if slots:
            # the metadata of the frames released is in the journal first: a frame the
            # daemon released keeps its metadata even if the daemon dies
            if journal and self.stream is not None and not self.stats.errors:
                started = time.perf_counter()
                self._guard(self.stream.flush_journal)
                self.stats.journal_s += time.perf_counter() - started
            self._lent -= len(slots)
            self.stats.released += frames
            self._send(out, {"type": P.RELEASE, "stream": self.sid, "slots": slots})
            self._last_release = time.monotonic()
        err = self._pending_error
        if err is not None:
            self._pending_error = None
            self._send(out, P.error_header(P.E_WRITE, err, stream=self.sid,
                                           seq=self._pending_seq,
                                           exception=self._pending_exception))

    def _send(self, out: zmq.Socket, header: dict, payload: Any = None) -> None:
        out.send_multipart([self.peer, *P.encode(header, payload)])

    # ---- called by the main thread ----

    def enqueue(self, item: tuple) -> None:
        """Queue a control item after the frames that came before it."""
        self.flush_batch()
        self.queue.put(item)

    def flush_batch(self) -> None:
        if self.batch:
            self.queue.put(("frames", self.batch))
            self.batch = []

    def report(self) -> dict[str, Any]:
        s = self.stats
        elapsed = time.monotonic() - s.started
        n = self.settings.num_frames
        return {
            "stream": self.sid,
            "root_path": self.settings.root_path,
            "paths": self.stream.paths if self.stream is not None else [],
            "frames_expected": n,
            "frames_declared": n or 0,  # fixed-type companions of frames_expected (1.1)
            "unbounded": n is None,
            "frames_received": s.received,
            # while the stream runs: the frames that survive a daemon crash (released); a
            # write that failed later takes its frames off. Finalized: the frames on disk.
            "frames_written": s.written if self.memory_freed or self.stream is None else
            min(s.released, self.stream.frames_written),
            "frames_dropped": s.dropped,
            "frames_skipped": s.skipped,
            "frames_recovered": s.recovered,
            "frames_refused": s.refused,
            "backlog": max(0, self.frames_queued - s.received),
            "ring_slots": self.slots,
            "max_buffer_bytes": self.memory,
            "buffers_durable": self.buffers_durable,
            "elapsed_s": round(elapsed, 3),
            "rate_fps": round(s.written / elapsed, 1) if elapsed > 0 else 0.0,
            "errors": list(s.errors),
            "timings": {"write_s": round(s.write_s, 4), "slowest_write_s":
                        round(s.slowest_write_s, 4), "journal_s": round(s.journal_s, 4),
                        "idle_s": round(s.idle_s, 4), "worker_cpu_s": round(s.cpu_s, 4),
                        **(self.stream.backend_timings() if self.stream is not None else {})},
        }
