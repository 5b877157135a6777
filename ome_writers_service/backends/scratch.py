"""Scratch arrays: numpy arrays in the caller's process (ome-writers 0.3.2's scratch format).

What pymmcore-plus' ``output="memory"`` writes: one array per position, in acquisition order,
no OME metadata. Such a stream never crosses a process boundary (a daemon would have to copy
the arrays back), so `create_stream` always runs it in process.

With a ``root_path`` (or past ``max_memory_bytes`` with ``spill_to_disk``) the arrays are
memory-mapped files laid out as ome-writers lays them out, so its readers work: the
directory holds ``pos_<i>.dat`` (C order, the logical shape in ``manifest.json``'s
``position_shapes``), ``manifest.json`` (the settings, ``position_shapes`` and the global
metadata) and ``frame_metadata.jsonl`` (one line per frame with metadata:
``{"_pos": i, "_idx": [...], **frame_metadata}``).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..safe_files import create_new_file, write_atomically
from ..schema import ScratchFormat
from .base import ArrayBackend, BackendError

MANIFEST = "manifest.json"
FRAME_METADATA = "frame_metadata.jsonl"


class ScratchBackend(ArrayBackend):
    """Frames in numpy arrays, or in memory-mapped files of a scratch directory."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        fmt = settings.format
        assert isinstance(fmt, ScratchFormat)
        self._format = fmt
        # unbounded axis: start at 1 and grow by 1.5x, as ome-writers
        self._alloc_shape = tuple(n or 1 for n in self.outer_shape) + tuple(self.frame_shape)
        #: each position's shape as written so far (an unbounded axis starts at 1)
        self._logical = [list(self._alloc_shape) for _ in self.positions]
        self._arrays: list[np.ndarray] = []
        self._root: Path | None = Path(settings.output_path) if settings.root_path else None
        self._metadata_file = None
        self._settings_dump: dict[str, Any] = {}

    # ---- creation ----

    def create(self) -> None:
        s = self.settings
        if self._root is not None:
            _prepare_scratch_dir(self._root, s.overwrite)
        else:
            need = len(self.positions) * math.prod(self._alloc_shape) * self.dtype.itemsize
            if need > self._format.max_memory_bytes:
                if not self._format.spill_to_disk:
                    raise MemoryError(
                        f"Scratch arrays would require ~{need / 1e9:.1f} GB, exceeding "
                        f"max_memory_bytes={self._format.max_memory_bytes / 1e9:.1f} GB. Set "
                        "root_path to use disk-backed storage, or increase max_memory_bytes.")
                self._root = Path(tempfile.mkdtemp(prefix="ome_scratch_"))
                atexit.register(shutil.rmtree, self._root, True)
                warnings.warn(
                    f"Scratch arrays would require ~{need / 1e9:.1f} GB in memory. Using "
                    f"disk-backed storage at {self._root}", stacklevel=5)
        self._settings_dump = {"version": __version__, **s.model_dump(mode="json")}
        for i in range(len(self.positions)):
            self._arrays.append(self._new_array(i, self._alloc_shape))
        if self._root is not None:
            self._write_manifest()
            self._metadata_file = open(self._root / FRAME_METADATA, "a", encoding="utf-8")

    def _new_array(self, position: int, shape: tuple[int, ...]) -> np.ndarray:
        if self._root is None:
            return np.zeros(shape, self.dtype)
        return np.memmap(self._root / f"pos_{position}.dat", dtype=self.dtype, mode="w+",
                         shape=shape)

    # ---- frames ----

    def write(self, position: int, index: tuple[int, ...], frame: np.ndarray,
              metadata: Mapping[str, Any] | None = None) -> None:
        self._ensure_room(position, index)
        self._arrays[position][index] = frame
        self._grow_logical(position, index)
        self._note_index(index)
        self._note_metadata(position, index, metadata)
        self.frames_written += 1
        if metadata and self._metadata_file is not None:
            record = {"_pos": position, "_idx": list(index), **metadata}
            self._metadata_file.write(json.dumps(record) + "\n")

    def skip(self, position: int, index: tuple[int, ...]) -> None:
        self._ensure_room(position, index)
        self._grow_logical(position, index)
        super().skip(position, index)

    def _grow_logical(self, position: int, index: tuple[int, ...]) -> None:
        if self.grow_axis is not None:
            shape = self._logical[position]
            shape[self.grow_axis] = max(shape[self.grow_axis], index[self.grow_axis] + 1)

    def _ensure_room(self, position: int, index: tuple[int, ...]) -> None:
        """Grow an unbounded axis by 1.5x (amortized) when ``index`` lies beyond it."""
        ax = self.grow_axis
        arr = self._arrays[position]
        if ax is None or index[ax] < arr.shape[ax]:
            return
        shape = list(arr.shape)
        shape[ax] = max(index[ax] + 1, int(shape[ax] * 1.5))
        if self._root is None:
            grown = np.zeros(tuple(shape), self.dtype)
            grown[tuple(slice(0, n) for n in arr.shape)] = arr
            self._arrays[position] = grown
            return
        # a C-order file grows along its first axis in place; any other axis is re-laid
        path = self._root / f"pos_{position}.dat"
        arr.flush()
        if ax == 0:
            self._arrays[position] = arr = None  # type: ignore[assignment]
            with open(path, "r+b") as f:
                f.truncate(math.prod(shape) * self.dtype.itemsize)
            self._arrays[position] = np.memmap(path, dtype=self.dtype, mode="r+",
                                               shape=tuple(shape))
            return
        tmp = path.with_suffix(".dat.tmp")
        fd = create_new_file(tmp, replace_stale=True)  # ours, never a planted name
        try:
            os.ftruncate(fd, math.prod(shape) * self.dtype.itemsize)
        finally:
            os.close(fd)
        grown = np.memmap(tmp, dtype=self.dtype, mode="r+", shape=tuple(shape))
        grown[tuple(slice(0, n) for n in arr.shape)] = arr
        grown.flush()
        del grown
        self._arrays[position] = None  # type: ignore[assignment]
        del arr
        tmp.replace(path)
        self._arrays[position] = np.memmap(path, dtype=self.dtype, mode="r+", shape=tuple(shape))

    # ---- reading ----

    def read(self, position: int, index: tuple[int, ...]) -> np.ndarray | None:
        arrays = self._arrays or self._reopen()
        return np.array(arrays[position][index])

    def get_arrays(self) -> list[ScratchArray]:
        """Each position's array, live (as ome-writers' scratch backend): read-only,
        the logical shape of what was written so far."""
        return [ScratchArray(self, i) for i in range(len(self.positions))]

    def _reopen(self) -> list[np.ndarray]:
        if self._root is None:
            raise BackendError("scratch arrays were released")
        return [np.memmap(self._root / f"pos_{i}.dat", dtype=self.dtype, mode="r",
                          shape=tuple(shape)) for i, shape in enumerate(self._logical)]

    @property
    def paths(self) -> list[str]:
        if self._root is None:
            return []
        return [str(self._root / f"pos_{i}.dat") for i in range(len(self.positions))]

    # ---- metadata ----

    def get_metadata(self) -> dict[Any, Any]:
        """A scratch dataset has no format metadata (as ome-writers)."""
        return {}

    def update_metadata(self, metadata: Mapping[Any, Any]) -> None:
        if metadata:
            raise ValueError("a scratch dataset has no format metadata to update; use "
                             "set_global_metadata()")

    def set_global_metadata(self, namespace: str, metadata: Mapping[str, Any]) -> None:
        super().set_global_metadata(namespace, metadata)
        if self._finalized and self._root is not None:
            self._write_manifest()

    def rewrite_metadata(self) -> None:
        if self._root is not None:
            self._write_manifest()

    # ---- end ----

    def truncate(self, extent: int) -> None:
        super().truncate(extent)
        for shape in self._logical:
            shape[self.first_axis] = min(shape[self.first_axis], extent)  # type: ignore[index]

    def finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        if self._metadata_file is not None:
            self._metadata_file.close()
            self._metadata_file = None
        if self._root is not None:
            for arr in self._arrays:
                arr.flush()
            self._write_manifest()
            # release the maps (files can be moved or removed); reads reopen them
            self._arrays = []
            return
        if self.grow_axis is not None:  # hand back only the logical extent
            self._arrays = [arr[tuple(slice(0, n) for n in shape)]
                            for arr, shape in zip(self._arrays, self._logical)]

    def _write_manifest(self) -> None:
        assert self._root is not None
        doc = {**self._settings_dump, "position_shapes": [list(s) for s in self._logical],
               "global_metadata": self.global_metadata}
        write_atomically(self._root / MANIFEST, json.dumps(doc).encode("utf-8"))


class ScratchArray:
    """A live, read-only view of one position's scratch array (its logical shape)."""

    __slots__ = ("_backend", "_position")

    def __init__(self, backend: ScratchBackend, position: int) -> None:
        self._backend = backend
        self._position = position

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._backend._logical[self._position])

    @property
    def dtype(self) -> np.dtype:
        return self._backend.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.array(self[...])
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> Any:
        b = self._backend
        arr = (b._arrays or b._reopen())[self._position]
        arr = arr[tuple(slice(0, n) for n in self.shape)]
        out = arr[key]
        if isinstance(out, np.ndarray):
            out = out.copy() if isinstance(arr, np.memmap) else out.view()
            out.flags.writeable = False
        return out

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("scratch arrays are read-only")


def _prepare_scratch_dir(root: Path, overwrite: bool) -> None:
    """Create the scratch directory; replace an earlier scratch dataset only if told."""
    if root.exists() or root.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{root} already exists. Use overwrite=True to overwrite it.")
        if root.is_dir() and not root.is_symlink():
            if any(root.iterdir()) and not (root / MANIFEST).is_file():
                raise FileExistsError(
                    f"{root} is a directory that is not a scratch dataset (no {MANIFEST}): "
                    "overwrite=True replaces a dataset, never other data")
            shutil.rmtree(root)
        else:
            root.unlink()
    root.mkdir(parents=True, exist_ok=True)

