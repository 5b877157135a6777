"""The in-process stream: router + backend in the caller's process (no daemon).

Same API as ome-writers' ``OMEStream``. The service's client stream (``client.py``) offers the
same methods on top of the shared-memory ring; this one is what the daemon runs per stream,
and what ``create_stream(settings, in_process=True)`` returns.
"""

from __future__ import annotations

import abc
import bisect
import logging
import queue
import threading
import warnings
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from .backends import ArrayBackend, create_backend
from .journal import Journal, NullJournal
from .router import FrameRouter
from .schema import AcquisitionSettings, ScratchFormat
from .user_metadata import check_frame_metadata

log = logging.getLogger(__name__)

EventName = Literal["coords_expanded", "coords_changed"]


@dataclass(frozen=True)
class CoordUpdate:
    """Coordinate state passed to event handlers after a frame is stored or skipped (as
    ome-writers: every dimension, acquisition order, the position axis included)."""

    max_coords: Mapping[str, Sequence]
    """Each dimension's visited coordinates so far: ``range(0, n)``, or the first n labels of
    a dimension with coords (channel, position names); the frame dimensions in full."""
    current_indices: Mapping[str, int]
    """Index of the frame just handled along each dimension (0 for the frame dimensions)."""
    frame_number: int
    is_high_water_mark: bool
    """True when this frame expanded ``max_coords``."""


def in_runs(runs: Sequence[tuple[int, int]], n: int) -> bool:
    """Whether frame ``n`` lies in one of ``runs``, sorted (first frame, count) pairs."""
    i = bisect.bisect_right(runs, (n, float("inf"))) - 1
    return i >= 0 and n < runs[i][0] + runs[i][1]


class FrameCountError(IndexError):
    """More frames than the settings declare."""


class FrameMismatchError(ValueError, TypeError):
    """A frame whose shape or dtype differs from the settings (a TypeError too: what
    ome-writers 0.3.2 raises for a frame of another dtype, so its scripts' handlers match)."""


def check_frame(frame: Any, shape: tuple[int, int], dtype: np.dtype, frame_number: int) -> None:
    """Raise a `FrameMismatchError` naming the frame and field when ``frame`` does not fit."""
    if not isinstance(frame, np.ndarray):
        raise FrameMismatchError(
            f"frame {frame_number}: expected a numpy array, got {type(frame).__name__}"
        )
    if frame.shape != shape:
        raise FrameMismatchError(
            f"frame {frame_number}: shape {frame.shape} does not match the settings' frame "
            f"shape {shape} (dimensions y, x)"
        )
    if frame.dtype != dtype:
        raise FrameMismatchError(
            f"frame {frame_number}: dtype {frame.dtype} does not match settings.dtype {dtype}"
        )


class OMEStream(metaclass=abc.ABCMeta):
    """Appends frames in acquisition order to one dataset, in this process.

    The daemon-backed stream (`ServiceStream`) is registered as a virtual subclass: what
    ``create_stream`` returns is an ``OMEStream``, as in ome-writers."""

    def __init__(self, settings: AcquisitionSettings, backend: ArrayBackend | None = None, *,
                 lend_limit: int = 0, s3_endpoint: str | None = None,
                 arena: Any = None) -> None:
        settings.validate_for_writing()
        if settings.acquisition_date is None:  # the OME-XML's AcquisitionDate: now, as
            settings = settings.model_copy(  # ome-writers (kept in the journal for recover)
                update={"acquisition_date": datetime.now(timezone.utc)})
        self._settings = settings
        self._router = FrameRouter(settings)
        self._backend = backend or create_backend(settings, s3_endpoint=s3_endpoint)
        self._backend.lend_limit = lend_limit  # frames append_borrowed() may leave lent
        self._backend.create()
        # lets `recover` finalize the dataset if we die (scratch arrays have nothing to recover)
        self._journal = NullJournal() if isinstance(settings.format, ScratchFormat) \
            else Journal(settings)
        #: the daemon's chunk buffers in shared memory (`arena`): kept with the journal when
        #: the stream cannot be finalized, removed with it when it is
        self._arena = arena
        if arena is not None:
            self._backend.use_arena(arena)
            self._journal.buffers(str(arena.path))
        self._frame_shape = settings.frame_shape
        self._dtype = np.dtype(settings.dtype)
        self._events = CoordEvents(self._router)
        self._lock = threading.Lock()
        self._closed = False
        #: (first frame, count) of each skip() (the daemon's dropped frames too), in order:
        #: their planes hold no frame (read_plane answers None)
        self._skipped: list[tuple[int, int]] = []
        # a stream dropped without close() is finalized when collected, with a warning when
        # it holds frames (as ome-writers 0.3.2): its dataset is never left half-written
        self._collected = weakref.finalize(self, _finish_collected, self._router,
                                           self._backend, self._journal, self._lock, arena)

    # ---- frames ----

    def append(self, frame: np.ndarray, *, frame_metadata: dict | None = None) -> None:
        """Store the next frame in acquisition order; ``frame`` may be reused on return."""
        self._check_open()
        n = self._router.frames_done
        check_frame(frame, self._frame_shape, self._dtype, n)
        if frame_metadata is not None:
            frame_metadata = check_frame_metadata(frame_metadata, n)
        self._append(frame, frame_metadata, None)

    def append_borrowed(self, frame: np.ndarray, done: Callable[[], None], *,
                        frame_metadata: dict | None = None) -> None:
        """Like append(), but ``frame`` stays untouched until ``done()`` is called (any
        thread). For the daemon, which lends ring slots; not part of the ome-writers API.
        The daemon made ``frame`` from its ring and checked ``frame_metadata`` already."""
        self._check_open()
        self._append(frame, frame_metadata, done)

    def _append(self, frame: np.ndarray, frame_metadata: dict | None,
                done: Callable[[], None] | None) -> None:
        n = self._router.frames_done
        try:
            loc = next(self._router)
        except StopIteration:
            raise FrameCountError(
                f"frame {n}: Cannot append frame: would exceed total of "
                f"{self._router.num_frames} frames the acquisition declares"
            ) from None
        with self._lock:
            if frame_metadata:  # journaled: `recover` gives it back if the writer dies
                self._journal.frame_metadata(n, frame_metadata)
            if done is None:
                self._backend.write(loc.position, loc.index, frame, frame_metadata)
            else:
                self._backend.write_borrowed(loc.position, loc.index, frame, frame_metadata, done)
        if self._events:
            self._events.emit(n, loc.index)

    def backend_timings(self) -> dict[str, float]:
        """The backend's own timings (`ArrayBackend.timings`), for the daemon's report."""
        return self._backend.timings()

    def flush_journal(self) -> None:
        """Write the per-frame metadata batched so far to the journal (the daemon does, before
        it releases the frames' slots)."""
        with self._lock:
            self._journal.flush()

    def give_back_held(self) -> None:
        """Hand back the frames lent to units still being assembled, copied (the daemon's
        worker does when the camera pauses: a slot is no place to keep a frame for long)."""
        with self._lock:
            self._backend.give_back_held()

    def skip(self, *, frames: int = 1) -> None:
        """Advance ``frames`` frames without data; they keep the fill value (zero)."""
        self._check_open()
        if frames <= 0:
            raise ValueError(f"skip: frames must be positive, not {frames}")
        start = self._router.frames_done
        try:
            locs = self._router.skip(frames)
        except IndexError as e:
            raise FrameCountError(str(e)) from None
        with self._lock:
            self._journal.skipped(start, frames)
            self._skipped.append((start, frames))
            for loc in locs:
                self._backend.skip(loc.position, loc.index)
        if self._events:
            self._events.emit_skip(start, frames)

    def close(self) -> None:
        """Write everything and the final metadata. Raises if anything could not be written."""
        if self._closed:
            return
        self._closed = True
        self._collected.detach()
        self._events.close()  # the handlers have seen every frame when close() returns
        _finish(self._router, self._backend, self._journal, self._lock, self._arena)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> OMEStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the stream to {self._settings.root_path} is closed")

    # ---- metadata ----

    def set_global_metadata(self, namespace: str, metadata: Mapping[str, Any]) -> None:
        """Acquisition-wide metadata under ``namespace``; replaces an earlier value of it."""
        with self._lock:
            self._backend.set_global_metadata(namespace, metadata)
            if self._closed:
                self._backend.rewrite_metadata()

    def get_global_metadata(self) -> dict[str, dict[str, Any]]:
        """The global metadata set so far, by namespace (`set_global_metadata`)."""
        return {ns: dict(v) for ns, v in self._backend.global_metadata.items()}

    def get_metadata(self) -> dict[Any, Any]:
        """The format's metadata, as ome-writers: OME-Zarr ``{group path: attributes}`` of
        each image group (``"."``: the store's root is the image); OME-TIFF ``{position
        index: ome_types.OME}`` of each file. Copies: edit them and pass them (or some of
        them) to `update_metadata`. Global metadata: `get_global_metadata`."""
        with self._lock:
            return self._backend.get_metadata()

    def update_metadata(self, metadata: Mapping[Any, Any]) -> None:
        """Write metadata edited from `get_metadata` back, as ome-writers. OME-Zarr: each
        group's attributes are replaced at once, and kept at close (the per-frame table and
        acquisition summary under ``ome_writers``, and global metadata, stay the writer's).
        OME-TIFF: only after close(); each file's OME-XML is replaced."""
        with self._lock:
            self._backend.update_metadata(metadata)

    # ---- observation ----

    @property
    def frames_written(self) -> int:
        return self._backend.frames_written

    @property
    def frames_sent(self) -> int:
        """Frames appended or skipped so far: the next frame's number (as the daemon-backed
        stream's ``frames_sent``)."""
        return self._router.frames_done

    @property
    def paths(self) -> list[str]:
        """Where each position's image is stored."""
        return self._backend.paths

    def on(self, event: EventName, callback: Callable[[CoordUpdate], None]) -> None:
        """Call ``callback(CoordUpdate)`` after each frame ("coords_changed") or when the
        written extent grows ("coords_expanded")."""
        self._events.on(event, callback)

    def read_plane(self, position: int, index: tuple[int, ...]) -> np.ndarray | None:
        """One stored plane (storage-order index), or None where no frame was written (not
        yet appended, skipped, or dropped by the daemon's client)."""
        n = self._router.frame_number(position, index)
        if n >= self._router.frames_done or self._was_skipped(n):
            return None
        with self._lock:
            self._backend.wait_for_writes()  # the plane may be in a write still in flight
            return self._backend.read(position, index)

    def _was_skipped(self, n: int) -> bool:
        return in_runs(self._skipped, n)

    def view(self, *, dynamic_shape: bool = True, strict: bool = False) -> StreamView:
        """A live, read-only array view of the data, in acquisition order with the position
        axis in place (as ome-writers); see `StreamView`."""
        return StreamView(self._settings, self._router, self.read_plane,
                          dynamic_shape=dynamic_shape, strict=strict, events=self._events)


def _finish(router: FrameRouter, backend: ArrayBackend, journal: Any,
            lock: threading.Lock, arena: Any = None) -> None:
    """Close a stream's dataset: the acquisition summary, the extent that arrived, the
    final metadata; the journal (and the daemon's chunk-buffer arena) go once that is
    written."""
    done, expected = router.frames_done, router.num_frames
    backend.acquisition_summary = {
        "frames_expected": expected, "frames_written": backend.frames_written,
        "frames_without_data": done - backend.frames_written,  # skipped or dropped
        "complete": expected in (None, done),
    }
    if expected is not None and done < expected and backend.first_axis is not None:
        # ended early: describe only what arrived (the last step of the slowest axis
        # may be partial; its missing frames keep the fill value)
        backend.truncate(router.extent_after(done)[backend.first_axis])
    with lock:
        try:
            backend.finalize()
        except BaseException:
            journal.close()  # kept: `recover` can retry what finalize could not
            if arena is not None:  # kept too if it holds units that could not be written
                arena.close(unlink=not arena.has_pending())
            raise
        journal.remove()
        if arena is not None:
            arena.close(unlink=True)


def _finish_collected(router: FrameRouter, backend: ArrayBackend, journal: Any,
                      lock: threading.Lock, arena: Any = None) -> None:
    if router.frames_done:
        warnings.warn("OMEStream was not closed before garbage collection. Please use `with "
                      "create_stream(...):` in a context manager or call `stream.close()` "
                      "before deletion.", UserWarning, stacklevel=2)
    _finish(router, backend, journal, lock, arena)


#: seconds close() waits for on() handlers still busy with earlier frames
CLOSE_WAIT = 5.0


class CoordEvents:
    """The on() events of a stream, computed from frame numbers (so the daemon-backed stream
    offers them too). Handlers run on a thread of their own, in frame order, as ome-writers
    runs them on a pool: a slow handler (a viewer redrawing) never slows append(), and one
    that raises is logged, never raised into the acquisition loop. Costs nothing per frame
    while no handler is registered; one queue put per frame while one is."""

    def __init__(self, router: FrameRouter, frames_done: Callable[[], int] | None = None
                 ) -> None:
        self._router = router
        self._frames_done = frames_done or (lambda: router.frames_done)
        self.handlers: dict[str, list[Callable[[CoordUpdate], None]]] = {}
        self._max_index = [-1] * len(router.acquisition_names)
        self._frame_coords = {n: range(k) for n, k in zip(router.frame_names, router.frame_shape)}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.handlers)

    def on(self, event: str, callback: Callable[[CoordUpdate], None]) -> None:
        if event not in ("coords_expanded", "coords_changed"):
            raise ValueError(f"unknown event {event!r}; use 'coords_expanded' or 'coords_changed'")
        self.handlers.setdefault(event, []).append(callback)
        with self._start_lock:  # one consumer, or frames could be seen out of order
            if self._thread is None:
                # registered mid-acquisition: the coordinates reached so far are known
                extent = self._router.acquisition_extent_after(self._frames_done())
                self._max_index = [max(m, e - 1) for m, e in zip(self._max_index, extent)]
                self._thread = threading.Thread(target=self._run, name="ows-events",
                                                daemon=True)
                self._thread.start()

    def emit(self, frame_number: int, index: tuple[int, ...] | None = None) -> None:
        """After frame ``frame_number`` was handled (``index``: its storage index, unused;
        kept for callers that have it)."""
        self._queue.put(frame_number)

    def emit_skip(self, first: int, count: int) -> None:
        """After ``skip(frames=count)`` from frame ``first``: one update at most, for its last
        frame, and only when the skip reached new coordinates (as ome-writers)."""
        self._queue.put((first, count))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the handlers have seen every frame emitted so far; False if they had
        not after ``timeout`` s. At once when called from a handler (it cannot wait for
        itself)."""
        if self._thread is None or threading.current_thread() is self._thread:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (waiting at most ``timeout`` s, `CLOSE_WAIT` by default,
        for handlers that block), then end the handlers' thread once it is through (it
        holds the handlers)."""
        timeout = CLOSE_WAIT if timeout is None else timeout
        if not self.flush(timeout):
            log.warning("on() handlers still busy %.0f s after close(); they go on with the "
                        "frames left in the background", timeout)
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
            elif isinstance(item, tuple):
                first, count = item
                grew = any([self._track(n) for n in range(first, first + count)])
                if grew:
                    self._deliver(first + count - 1, True)
            else:
                self._deliver(item, self._track(item))

    def _track(self, frame_number: int) -> bool:
        """Extend the highest index seen along each axis; whether it grew."""
        grew = False
        for i, v in enumerate(self._router._acq(frame_number)):
            if v > self._max_index[i]:
                self._max_index[i] = v
                grew = True
        return grew

    def _deliver(self, frame_number: int, grew: bool) -> None:
        router = self._router
        acq = router._acq(frame_number)
        names = router.acquisition_names
        max_coords: dict[str, Sequence] = {
            n: range(m + 1) if labels is None else labels[:m + 1]
            for n, m, labels in zip(names, self._max_index, router.acquisition_labels)}
        max_coords.update(self._frame_coords)
        current = dict(zip(names, acq))
        current.update(dict.fromkeys(router.frame_names, 0))
        update = CoordUpdate(max_coords=max_coords, current_indices=current,
                             frame_number=frame_number, is_high_water_mark=grew)
        callbacks = list(self.handlers.get("coords_changed", ()))
        if grew:
            callbacks += self.handlers.get("coords_expanded", ())
        for cb in callbacks:
            try:
                cb(update)
            except Exception:  # noqa: BLE001 - a handler's bug must not stop the acquisition
                log.exception("on() handler %r failed for frame %d", cb, frame_number)


class _Signal:
    """Minimal signal (connect/disconnect/emit), as ome-writers' view offers."""

    def __init__(self) -> None:
        self._slots: list[Callable[[], None]] = []

    def connect(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._slots.append(callback)
        return callback

    def disconnect(self, callback: Callable[[], None]) -> None:
        self._slots.remove(callback)

    def emit(self) -> None:
        for cb in list(self._slots):
            cb()


class StreamView:
    """Array-like access to a stream's data while it is written, as ome-writers' view.

    Axes are in acquisition order, the position axis in place (``dims`` names them, like
    ``settings.dimensions``), whatever the storage order. With ``dynamic_shape`` the shape
    covers what was acquired so far (frames appended or skipped), else the declared shape (an
    unbounded axis: its extent so far). Slices cover the shape; an integer index may go up to
    the declared extent. Planes without a frame read as zeros; with ``strict=True`` an integer
    index outside the live shape, or a plane without a written frame (not yet written, skipped
    or dropped), raises IndexError. ``read_plane(position, storage_index)`` supplies the
    pixels (None: no frame): the stream in process, a ``read`` request to the daemon otherwise.
    """

    def __init__(self, settings: AcquisitionSettings, router: FrameRouter,
                 read_plane: Callable[[int, tuple[int, ...]], np.ndarray | None], *,
                 dynamic_shape: bool, strict: bool,
                 frames_done: Callable[[], int] | None = None,
                 events: CoordEvents | None = None) -> None:
        self._router = router
        self._frames_done = frames_done or (lambda: router.frames_done)
        self._read = read_plane
        self._dynamic = dynamic_shape
        self._strict = strict
        self.dtype = np.dtype(settings.dtype)
        self._frame_shape = router.frame_shape
        self._dims = tuple(d.name for d in settings.dimensions)
        self._labels = [None if not d.coords else [getattr(c, "name", c) for c in d.coords]
                        for d in settings.dimensions[:-2]]
        self._events = events
        self._signal: _Signal | None = None

    # ---- shape and labels ----

    def _outer(self) -> tuple[int, ...]:
        extent = self._router.acquisition_extent_after(self._frames_done())
        if self._dynamic:
            return extent
        return tuple(e if n is None else n for n, e in zip(self._router.acquisition_shape, extent))

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self._outer(), *self._frame_shape)

    @property
    def dims(self) -> tuple[str, ...]:
        """Dimension names, in acquisition order (``settings.dimensions``)."""
        return self._dims

    @property
    def coords(self) -> dict[str, Sequence]:
        """Coordinate labels of each dimension over the current shape."""
        out: dict[str, Sequence] = {}
        for name, labels, n in zip(self._dims, self._labels, self._outer()):
            out[name] = range(n) if labels is None else labels[:n]
        for name, n in zip(self._dims[-2:], self._frame_shape):
            out[name] = range(n)
        return out

    @property
    def coords_changed(self) -> _Signal:
        """Emitted (no arguments) when the live shape grows (``dynamic_shape`` views)."""
        if self._signal is None:
            self._signal = _Signal()
            if self._dynamic and self._events is not None:
                sig = self._signal
                self._events.on("coords_expanded", lambda _update: sig.emit())
        return self._signal

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"StreamView(dims={self._dims}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError("a StreamView cannot be converted to an array without a copy")
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    # ---- indexing ----

    def __getitem__(self, key: Any) -> np.ndarray:
        outer = self._outer()
        shape = (*outer, *self._frame_shape)
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = (*key[:i], *(slice(None),) * (len(shape) - len(key) + 1), *key[i + 1:])
        if len(key) > len(shape):
            raise IndexError(f"too many indices for array: array is {len(shape)}-dimensional, "
                             f"but {len(key)} were indexed")
        key = (*key, *(slice(None),) * (len(shape) - len(key)))
        n_outer = len(outer)
        declared = self._router.acquisition_shape
        ranges: list[range | int] = []
        for axis, (k, n) in enumerate(zip(key[:n_outer], outer)):
            if isinstance(k, slice):
                ranges.append(range(*k.indices(n)))
                continue
            k = int(k)
            # integer indices: within the live shape (strict), else within the declared one
            bound = n if self._strict or declared[axis] is None else declared[axis]
            if not -bound <= k < bound:
                raise IndexError(f"index {k} is out of bounds for "
                                 f"{'live ' if self._strict else ''}dimension "
                                 f"{self._dims[axis]!r} with size {bound}")
            ranges.append(k % bound)
        frame_key = key[n_outer:]
        grid = [r if isinstance(r, range) else [r] for r in ranges]
        planes = [self._plane(tuple(g[i] for g, i in zip(grid, idx)))[frame_key]
                  for idx in np.ndindex(*map(len, grid))]
        out_shape = [len(r) for r in ranges if isinstance(r, range)]
        frame_part = np.zeros(self._frame_shape, self.dtype)[frame_key].shape
        if not planes:
            return np.zeros((*out_shape, *frame_part), self.dtype)
        return np.stack(planes).reshape((*out_shape, *frame_part))  # () for one pixel

    def _plane(self, acq_index: tuple[int, ...]) -> np.ndarray:
        router = self._router
        pos, index = router.from_acquisition(acq_index)
        if self._strict and router.frame_number(pos, index) >= self._frames_done():
            raise IndexError(f"plane {dict(zip(self._dims, acq_index))} has not been written")
        frame = self._read(pos, index)
        if frame is None:
            if self._strict:
                raise IndexError(f"plane {dict(zip(self._dims, acq_index))} has not been "
                                 "written (no frame: skipped or dropped)")
            return np.zeros(self._frame_shape, self.dtype)
        return frame
