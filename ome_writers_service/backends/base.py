"""The contract every format writer fulfils, and what they share.

A backend receives frames already routed (position, storage-order index) and knows nothing of
acquisition order. Two promises make it safe to put behind a ring buffer:

* ``write()`` copies or fully consumes ``frame`` before it returns, so the caller may reuse
  (or hand back to a camera) the same buffer immediately;
* ``finalize()`` returns only once every accepted frame is on disk with complete metadata,
  or raises. It never gives up silently.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..format_metadata import is_zarr_group
from ..schema import AcquisitionSettings
from ..user_metadata import KNOWN_FRAME_KEYS, check_global_metadata

__all__ = ["KNOWN_FRAME_KEYS", "ArrayBackend", "BackendError", "prepare_output"]



class BackendError(RuntimeError):
    """A backend could not do what was asked; the message names the path and frame concerned."""


class ArrayBackend(ABC):
    """Writes routed frames of one acquisition into one format."""

    def __init__(self, settings: AcquisitionSettings) -> None:
        self.settings = settings
        self.dtype = np.dtype(settings.dtype)
        self.frame_shape = settings.frame_shape
        self.storage_dims = settings.storage_dimensions
        outer = self.storage_dims[:-2]
        self.outer_shape: list[int | None] = [d.count for d in outer]
        first = settings.dimensions[0]
        #: storage axis of the slowest acquisition axis (None when that is the position axis)
        self.first_axis: int | None = next(
            (i for i, d in enumerate(outer) if d.name == first.name), None)
        #: storage axis that grows (the unbounded acquisition axis), or None
        self.grow_axis: int | None = self.first_axis if settings.is_unbounded else None
        #: extent seen so far along grow_axis (frames written or skipped)
        self.grown = 0
        #: set by truncate(): the acquisition ended early, first_axis ends here
        self.final_extent: int | None = None
        #: frames expected / written, recorded in the metadata at finalize
        self.acquisition_summary: dict[str, Any] = {}
        self.positions = settings.positions
        self.global_metadata: dict[str, dict[str, Any]] = {}
        #: per position: storage index -> per-frame metadata given with append()
        self.frame_metadata: list[dict[tuple[int, ...], dict[str, Any]]] = [
            {} for _ in self.positions
        ]
        self.frames_written = 0
        #: how many lent frames (write_borrowed) the lender can spare at once; a backend
        #: may hold lent frames (and write them without a copy) only within this budget
        self.lend_limit = 0
        self._finalized = False

    # ---- the contract ----

    @abstractmethod
    def create(self) -> None:
        """Create the files/arrays and the initial metadata. Raises if the target is unusable."""

    @abstractmethod
    def write(
        self,
        position: int,
        index: tuple[int, ...],
        frame: np.ndarray,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one frame; ``frame`` is copied or consumed before this returns."""

    def write_borrowed(
        self,
        position: int,
        index: tuple[int, ...],
        frame: np.ndarray,
        metadata: Mapping[str, Any] | None,
        done: Callable[[], None],
    ) -> None:
        """Store one frame that stays valid until this backend calls ``done()`` (from any
        thread). The daemon lends ring slots this way, so a backend able to write straight
        from the slot saves a copy. The default copies/consumes it, as write() does."""
        self.write(position, index, frame, metadata)
        done()

    def timings(self) -> dict[str, float]:
        """Where this backend's time went so far, for the daemon's report (`timings`)."""
        return {}

    def give_back_held(self) -> None:
        """Copy the frames still lent in units being assembled to where they survive this
        process, and hand them back (the daemon does when no frame came for a while)."""

    def skip(self, position: int, index: tuple[int, ...]) -> None:
        """A frame that will never come: the slot keeps the fill value (zero)."""
        self._note_index(index)

    @abstractmethod
    def finalize(self) -> None:
        """Flush everything and write the final metadata; returns when all is on disk."""

    @abstractmethod
    def read(self, position: int, index: tuple[int, ...]) -> np.ndarray | None:
        """A frame written so far (for live views), or None where nothing was written."""

    @property
    @abstractmethod
    def paths(self) -> list[str]:
        """Where each position's image is stored."""

    # ---- shared behaviour ----

    def set_global_metadata(self, namespace: str, metadata: Mapping[str, Any]) -> None:
        self.global_metadata[namespace] = check_global_metadata(namespace, metadata)

    def recount_summary(self) -> None:
        """The acquisition summary (taken before finalize) corrected for the writes found
        failed since: their frames are not on disk, so neither counts them as written."""
        summary = self.acquisition_summary
        if summary:
            lost = summary["frames_written"] - self.frames_written
            summary["frames_written"] = self.frames_written
            summary["frames_without_data"] = summary.get("frames_without_data", 0) + lost

    # ---- the format's own metadata, as ome-writers exposes it ----

    def get_metadata(self) -> dict[Any, Any]:
        """OME-Zarr: ``{group path: attributes}`` of each image; OME-TIFF: ``{position:
        ome_types.OME}`` of each file. Copies, to edit and pass to `update_metadata`."""
        raise NotImplementedError

    def update_metadata(self, metadata: Mapping[Any, Any]) -> None:
        """Write metadata edited from `get_metadata` back."""
        raise NotImplementedError

    def rewrite_metadata(self) -> None:
        """Write the final metadata again (global metadata set after finalize)."""
        self._finalized = False
        self.finalize()

    def wait_for_writes(self) -> None:
        """Return once what was handed to the format library so far is readable."""

    def truncate(self, extent: int) -> None:
        """The acquisition ended before all declared frames: store and describe only
        ``extent`` steps of the slowest acquisition axis, so that frames never received are
        not presented as data."""
        if self.first_axis is None:
            raise ValueError("cannot truncate along the position axis")
        self.final_extent = extent

    def current_shape(self) -> tuple[int, ...]:
        """Storage shape of each image now (the grow axis at its extent so far)."""
        shape = list(self.outer_shape)
        if self.final_extent is not None:
            shape[self.first_axis] = self.final_extent  # type: ignore[index]
        elif self.grow_axis is not None:
            shape[self.grow_axis] = self.grown
        return (*shape, *self.frame_shape)  # type: ignore[return-value]

    def _note_index(self, index: tuple[int, ...]) -> None:
        if self.grow_axis is not None and index[self.grow_axis] >= self.grown:
            self.grown = index[self.grow_axis] + 1

    def _note_metadata(self, position: int, index: tuple[int, ...], md: Mapping | None) -> None:
        if md:
            self.frame_metadata[position][index] = dict(md)


def prepare_output(path: str | os.PathLike, overwrite: bool, *, directory: bool = False) -> Path:
    """Make ``path`` ready to be created: refuse to clobber data unless told, check writability.

    With ``overwrite``, only a dataset of the kind about to be written is replaced: a zarr
    store (``directory``: a zarr group's directory, or an empty one) or a file; anything
    else is refused, never deleted. A symlink is removed, never followed."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{p} already exists; pass overwrite=True to replace it")
        if p.is_symlink():
            p.unlink()
        elif directory:
            if not p.is_dir():
                raise FileExistsError(
                    f"{p} is a file, not a zarr store: overwrite=True replaces a dataset, never "
                    "other data; remove it yourself if it must go")
            if not is_zarr_group(p) and any(p.iterdir()):
                raise FileExistsError(
                    f"{p} is a directory that is not a zarr store: overwrite=True replaces a "
                    "dataset, never other data; remove it yourself if it must go")
            shutil.rmtree(p)
        else:
            if p.is_dir():
                raise FileExistsError(
                    f"{p} is a directory, not a file: overwrite=True replaces a dataset, never "
                    "other data; remove it yourself if it must go")
            p.unlink()
    parent = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create the directory {parent}: {e.strerror}") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{parent} is not writable: cannot create {p.name}")
    return p
