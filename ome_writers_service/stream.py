"""The in-process stream: router + backend in the caller's process (no daemon).

Same API as ome-writers' ``OMEStream``. The service's client stream (``client.py``) offers the
same methods on top of the shared-memory ring; this one is what the daemon runs per stream,
and what ``create_stream(settings, in_process=True)`` returns.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from .backends import ArrayBackend, create_backend
from .journal import Journal
from .router import FrameRouter
from .schema import AcquisitionSettings
from .user_metadata import check_frame_metadata

EventName = Literal["coords_expanded", "coords_changed"]


@dataclass(frozen=True)
class CoordUpdate:
    """Coordinate state passed to event handlers after a frame is stored or skipped."""

    max_coords: Mapping[str, Sequence]
    """Each storage axis' visited range (``range(0, n)``) so far."""
    current_indices: Mapping[str, int]
    """Storage index of the frame just handled, by axis name."""
    frame_number: int
    is_high_water_mark: bool
    """True when this frame expanded ``max_coords``."""


class FrameCountError(IndexError):
    """More frames than the settings declare."""


class FrameMismatchError(ValueError):
    """A frame whose shape or dtype differs from the settings."""


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


class OMEStream:
    """Appends frames in acquisition order to one dataset, in this process."""

    def __init__(self, settings: AcquisitionSettings, backend: ArrayBackend | None = None, *,
                 lend_limit: int = 0) -> None:
        settings.validate_for_writing()
        self._settings = settings
        self._router = FrameRouter(settings)
        self._backend = backend or create_backend(settings)
        self._backend.lend_limit = lend_limit  # frames append_borrowed() may leave lent
        self._backend.create()
        self._journal = Journal(settings)  # lets `recover` finalize the dataset if we die
        self._frame_shape = settings.frame_shape
        self._dtype = np.dtype(settings.dtype)
        self._events = CoordEvents(self._router)
        self._lock = threading.Lock()
        self._closed = False

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
                f"frame {n}: the acquisition declares {self._router.num_frames} frames; "
                "nothing more can be appended"
            ) from None
        with self._lock:
            if done is None:
                self._backend.write(loc.position, loc.index, frame, frame_metadata)
            else:
                self._backend.write_borrowed(loc.position, loc.index, frame, frame_metadata, done)
        if self._events:
            self._events.emit(n, loc.index)

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
        handled = [] if self._events else None  # kept only for the event handlers
        with self._lock:
            self._journal.skipped(start, frames)
            for loc in locs:
                self._backend.skip(loc.position, loc.index)
                if handled is not None:
                    handled.append(loc)
        for n, loc in enumerate(handled or (), start):
            self._events.emit(n, loc.index)

    def close(self) -> None:
        """Write everything and the final metadata. Raises if anything could not be written."""
        if self._closed:
            return
        self._closed = True
        done, expected = self._router.frames_done, self._router.num_frames
        backend = self._backend
        backend.acquisition_summary = {
            "frames_expected": expected, "frames_written": backend.frames_written,
            "frames_without_data": done - backend.frames_written,  # skipped or dropped
            "complete": expected in (None, done),
        }
        if expected is not None and done < expected and backend.first_axis is not None:
            # ended early: describe only what arrived (the last step of the slowest axis
            # may be partial; its missing frames keep the fill value)
            backend.truncate(self._router.extent_after(done)[backend.first_axis])
        with self._lock:
            try:
                backend.finalize()
            except BaseException:
                self._journal.close()  # kept: `recover` can retry what finalize could not
                raise
            self._journal.remove()

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
                self._backend._finalized = False
                self._backend.finalize()

    def get_metadata(self) -> dict[str, Any]:
        """The global metadata set so far, by namespace."""
        return dict(self._backend.global_metadata)

    def update_metadata(self, metadata: Mapping[str, Mapping[str, Any]]) -> None:
        """Set several namespaces of global metadata at once."""
        for ns, mapping in metadata.items():
            self.set_global_metadata(ns, mapping)

    # ---- observation ----

    @property
    def frames_written(self) -> int:
        return self._backend.frames_written

    @property
    def paths(self) -> list[str]:
        """Where each position's image is stored."""
        return self._backend.paths

    def on(self, event: EventName, callback: Callable[[CoordUpdate], None]) -> None:
        """Call ``callback(CoordUpdate)`` after each frame ("coords_changed") or when the
        written extent grows ("coords_expanded")."""
        self._events.on(event, callback)

    def read_plane(self, position: int, index: tuple[int, ...]) -> np.ndarray | None:
        """One stored plane (storage-order index), or None where nothing was written."""
        with self._lock:
            return self._backend.read(position, index)

    def view(self, *, dynamic_shape: bool = True, strict: bool = False) -> StreamView:
        """A live, read-only array view of what has been written (positions first if several)."""
        return StreamView(self._router, len(self._backend.positions), self._dtype,
                          self.read_plane, dynamic_shape=dynamic_shape, strict=strict)


class CoordEvents:
    """The on() events of a stream, computed from frame numbers (so the daemon-backed stream
    offers them too). Costs nothing per frame while no handler is registered."""

    def __init__(self, router: FrameRouter) -> None:
        self._router = router
        self.handlers: dict[str, list[Callable[[CoordUpdate], None]]] = {}
        self._max_index = [-1] * len(router.storage_names)

    def __bool__(self) -> bool:
        return bool(self.handlers)

    def on(self, event: str, callback: Callable[[CoordUpdate], None]) -> None:
        if event not in ("coords_expanded", "coords_changed"):
            raise ValueError(f"unknown event {event!r}; use 'coords_expanded' or 'coords_changed'")
        self.handlers.setdefault(event, []).append(callback)

    def emit(self, frame_number: int, index: tuple[int, ...] | None = None) -> None:
        if index is None:
            index = self._router.locate(frame_number).index
        grew = False
        for i, v in enumerate(index):
            if v > self._max_index[i]:
                self._max_index[i] = v
                grew = True
        names = self._router.storage_names
        update = CoordUpdate(
            max_coords={n: range(m + 1) for n, m in zip(names, self._max_index)},
            current_indices=dict(zip(names, index)),
            frame_number=frame_number,
            is_high_water_mark=grew,
        )
        for cb in self.handlers.get("coords_changed", ()):
            cb(update)
        if grew:
            for cb in self.handlers.get("coords_expanded", ()):
                cb(update)


class StreamView:
    """Array-like access to a stream's data while it is written.

    Shape is storage order, with a leading position axis when there are several positions.
    With ``dynamic_shape`` the shape covers what was written so far, otherwise the declared
    shape (an unbounded axis: its extent so far). Unwritten planes read as zeros, or raise
    with ``strict=True``. ``read_plane(position, index)`` supplies the pixels: the backend in
    process, a ``read`` request to the daemon otherwise.
    """

    def __init__(self, router: FrameRouter, n_positions: int, dtype: np.dtype,
                 read_plane: Callable[[int, tuple[int, ...]], np.ndarray | None], *,
                 dynamic_shape: bool, strict: bool,
                 frames_done: Callable[[], int] | None = None) -> None:
        self._router = router
        self._frames_done = frames_done or (lambda: router.frames_done)
        self._npos = n_positions
        self._read = read_plane
        self._dynamic = dynamic_shape
        self._strict = strict
        self.dtype = np.dtype(dtype)
        self._frame_shape = router.frame_shape

    @property
    def shape(self) -> tuple[int, ...]:
        extent = self._router.extent_after(self._frames_done())
        if self._dynamic:
            outer = extent
        else:
            outer = tuple(e if n is None else n for n, e in zip(self._router.storage_shape, extent))
        lead = (self._npos,) if self._npos > 1 else ()
        return (*lead, *outer, *self._frame_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        shape = self.shape
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = (*key[:i], *(slice(None),) * (len(shape) - len(key) + 1), *key[i + 1:])
        key = (*key, *(slice(None),) * (len(shape) - len(key)))
        if len(key) != len(shape):
            raise IndexError(f"too many indices for a view of shape {shape}")
        n_outer = len(shape) - 2
        ranges = []
        for k, n in zip(key[:n_outer], shape[:n_outer]):
            if isinstance(k, slice):
                ranges.append(range(*k.indices(n)))
            else:
                k = int(k)
                if not -n <= k < n:
                    raise IndexError(f"index {k} out of range for an axis of {n}")
                ranges.append(k % n)
        frame_key = key[n_outer:]
        grid = [r if isinstance(r, range) else [r] for r in ranges]
        planes = [self._plane(idx)[frame_key] for idx in np.ndindex(*map(len, grid))
                  for idx in [tuple(g[i] for g, i in zip(grid, idx))]]
        out_shape = [len(r) for r in ranges if isinstance(r, range)]
        frame_part = np.zeros(self._frame_shape, self.dtype)[frame_key].shape
        if not planes:
            return np.zeros((*out_shape, *frame_part), self.dtype)
        return np.stack(planes).reshape(*out_shape, *frame_part)

    def _plane(self, idx: tuple[int, ...]) -> np.ndarray:
        pos, index = (idx[0], tuple(idx[1:])) if self._npos > 1 else (0, tuple(idx))
        router = self._router
        if self._strict and router.frame_number(pos, index) >= self._frames_done():
            raise IndexError(f"plane {idx} has not been written")
        frame = self._read(pos, index)
        if frame is None:
            return np.zeros(self._frame_shape, self.dtype)
        return frame
