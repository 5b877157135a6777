"""FrameRouter: frame number (acquisition order) -> (position, storage-order index).

The only place that knows both orders. Backends receive storage-order indices and never see
the acquisition order; the stream and the daemon only count frames.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

from .schema import AcquisitionSettings


class FrameLocation(NamedTuple):
    """Where one frame goes: which position's image, and its index over the non-frame axes."""

    position: int
    index: tuple[int, ...]


class FrameRouter:
    """Iterates frames in acquisition order and yields where each one is stored.

    ``locate(n)`` is stateless, so a daemon can place frame ``n`` whatever arrived before it;
    iteration (``next(router)``) and ``skip()`` keep the running frame number for a stream.
    """

    def __init__(self, settings: AcquisitionSettings) -> None:
        outer = list(settings.dimensions[:-2])  # acquisition order, position included
        self.num_frames: int | None = settings.num_frames
        names = [d.name for d in outer]
        self.acquisition_names: tuple[str, ...] = tuple(names)
        self._sizes = [d.count for d in outer]  # the first may be None (unbounded)
        strides = []
        acc = 1
        for size in reversed(self._sizes[1:]):
            strides.append(acc)
            acc *= int(size)  # type: ignore[arg-type]
        strides.append(acc)
        self._strides = list(reversed(strides))  # stride of acquisition axis i, in frames
        pos = next((i for i, d in enumerate(outer) if d.is_position), None)
        self._position_axis = pos
        storage = settings.storage_dimensions[:-2]
        self._storage_from_acq = [names.index(d.name) for d in storage]
        self.storage_shape: tuple[int | None, ...] = tuple(d.count for d in storage)
        self.storage_names: tuple[str, ...] = tuple(d.name for d in storage)
        self.frame_shape: tuple[int, int] = settings.frame_shape
        self.frame_names: tuple[str, ...] = tuple(d.name for d in settings.dimensions[-2:])
        #: per acquisition axis: its coordinate labels (channel/position names...) or None
        self.acquisition_labels: list[list | None] = [
            [getattr(c, "name", c) for c in d.coords] if d.coords else None for d in outer]
        self._next = 0

    def locate(self, frame_number: int) -> FrameLocation:
        """Position and storage-order index of frame ``frame_number`` (0-based)."""
        if frame_number < 0 or (self.num_frames is not None and frame_number >= self.num_frames):
            raise IndexError(
                f"frame {frame_number} is outside the acquisition ({self.num_frames} frames declared)"
            )
        acq = self._acq(frame_number)
        position = acq[self._position_axis] if self._position_axis is not None else 0
        return FrameLocation(position, tuple(acq[a] for a in self._storage_from_acq))

    def frame_number(self, position: int, index: tuple[int, ...]) -> int:
        """Inverse of locate(): the frame number that goes to ``position``, ``index``."""
        acq = [0] * len(self._strides)
        for storage_axis, acq_axis in enumerate(self._storage_from_acq):
            acq[acq_axis] = index[storage_axis]
        if self._position_axis is not None:
            acq[self._position_axis] = position
        return sum(i * s for i, s in zip(acq, self._strides))

    def acquisition_index(self, frame_number: int) -> dict[str, int]:
        """Index of a frame along each named acquisition axis (for metadata and errors)."""
        return dict(zip(self.acquisition_names, self._acq(frame_number)))

    def _acq(self, frame_number: int) -> list[int]:
        out, rem = [], frame_number
        for stride in self._strides:
            q, rem = divmod(rem, stride)
            out.append(q)
        return out

    def extent_after(self, frames: int) -> tuple[int, ...]:
        """Storage-order extent covered by the first ``frames`` frames (for live views)."""
        ext = self.acquisition_extent_after(frames)
        return tuple(ext[a] for a in self._storage_from_acq)

    def acquisition_extent_after(self, frames: int) -> tuple[int, ...]:
        """Extent of each acquisition axis (position axis included) covered by the first
        ``frames`` frames: ome-writers' live view shape, without the frame axes."""
        ext = []
        for size, stride in zip(self._sizes, self._strides):
            if frames <= 0:
                ext.append(0)
            elif size is not None and frames > stride * size:
                ext.append(size)  # this axis has cycled through completely
            else:
                ext.append((frames - 1) // stride + 1)
        return tuple(ext)

    @property
    def acquisition_shape(self) -> tuple[int | None, ...]:
        """Declared size of each acquisition axis (position included); None: unbounded."""
        return tuple(self._sizes)

    def from_acquisition(self, acq_index: tuple[int, ...]) -> FrameLocation:
        """Position and storage-order index of the plane at an acquisition-order index
        (one entry per acquisition axis, the position axis included)."""
        position = acq_index[self._position_axis] if self._position_axis is not None else 0
        return FrameLocation(position, tuple(acq_index[a] for a in self._storage_from_acq))

    @property
    def frames_done(self) -> int:
        """Frames routed or skipped so far by iteration."""
        return self._next

    def __iter__(self) -> Iterator[FrameLocation]:
        return self

    def __next__(self) -> FrameLocation:
        if self.num_frames is not None and self._next >= self.num_frames:
            raise StopIteration
        loc = self.locate(self._next)
        self._next += 1
        return loc

    def skip(self, frames: int = 1) -> Iterator[FrameLocation]:
        """Advance past ``frames`` frames; returns where they would have gone (lazily: a
        long skip costs no memory)."""
        if frames < 0:
            raise ValueError("skip: frames must be >= 0")
        if self.num_frames is not None and self._next + frames > self.num_frames:
            raise IndexError(
                f"skip({frames}) at frame {self._next} goes past the {self.num_frames} frames declared"
            )
        start = self._next
        self._next += frames
        return map(self.locate, range(start, start + frames))
