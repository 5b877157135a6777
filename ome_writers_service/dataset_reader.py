"""Planes of a finished dataset read back from its files by storage index (what a
daemon-backed stream's view() reads after close, in the client's process).

OME-Zarr through tensorstore. OME-TIFF through tifffile, page by page: the dataset's OME-XML
(the file's own, or the master or companion file a BinaryOnly file names) is parsed once, and
its TiffData say which file and IFD hold each plane, so that reading a plane never parses the
document again nor opens every file of a multi-file dataset; at most `MAX_OPEN_FILES` stay
open.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .backends.ome_xml import tiff_axes
from .schema import AcquisitionSettings

MAX_OPEN_FILES = 16


class DatasetReader:
    """Reads planes of the dataset ``settings`` describe, once it is finished."""

    def __init__(self, settings: AcquisitionSettings, s3_endpoint: str | None = None) -> None:
        from .backends import create_backend

        self._settings = settings
        # not created: the layout only
        self._backend = create_backend(settings, s3_endpoint=s3_endpoint)
        self._zarr = settings.format_name == "ome-zarr"
        self._arrays: dict[int, Any] = {}
        self._planes: dict[int, dict[tuple[int, int, int], tuple[str, int]]] | None = None
        self._files: OrderedDict[str, Any] = OrderedDict()
        self._letters = [] if self._zarr else tiff_axes(settings.storage_dimensions)
        # a view may read after close until it is dropped: its files close with it. A
        # finalizer (not __del__) runs before the files' own when a cycle is collected, so
        # no "unclosed file" ResourceWarning
        weakref.finalize(self, _close_files, self._files)

    def read(self, position: int, index: tuple[int, ...]) -> np.ndarray | None:
        """The plane at ``index`` (storage order) of ``position``; None where the dataset
        has none (beyond its final extent)."""
        try:
            return self._read_zarr(position, index) if self._zarr else \
                self._read_tiff(position, index)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise RuntimeError(f"the stream is closed and {self._backend.paths[position]} "
                               f"cannot be read from this process: {e}") from e

    def close(self) -> None:
        _close_files(self._files)

    # ---- OME-Zarr ----

    def _read_zarr(self, position: int, index: tuple[int, ...]) -> np.ndarray | None:
        if position not in self._arrays:
            import tensorstore as ts

            from .backends.zarr_metadata import DATASET, join
            from .backends.zarr_tensorstore import array_driver

            store = self._backend.store
            group = self._backend.image_groups[position]
            spec = {"driver": array_driver(self._settings.format.version),
                    "kvstore": store.kvstore(join(group, DATASET))}
            self._arrays[position] = ts.open(spec, open=True, read=True,
                                             context=ts.Context(store.context())).result()
        arr = self._arrays[position]
        if any(i >= n for i, n in zip(index, arr.shape)):
            return None
        return arr[index].read().result()

    # ---- OME-TIFF ----

    def _read_tiff(self, position: int, index: tuple[int, ...]) -> np.ndarray | None:
        if self._planes is None:
            self._planes = _plane_map(Path(self._backend.paths[0]))
        plane = dict(zip(self._letters, index))
        where = self._planes.get(position, {}).get(
            (plane.get("T", 0), plane.get("C", 0), plane.get("Z", 0)))
        if where is None:
            return None
        name, ifd = where
        return self._file(str(Path(self._backend.paths[position]).parent / name)) \
            .pages[ifd].asarray()

    def _file(self, path: str) -> Any:
        import tifffile

        if path in self._files:
            self._files.move_to_end(path)
        else:
            if len(self._files) >= MAX_OPEN_FILES:
                self._files.popitem(last=False)[1].close()
            self._files[path] = tifffile.TiffFile(path, is_ome=False)
        return self._files[path]


def _close_files(files: OrderedDict[str, Any]) -> None:
    while files:
        files.popitem()[1].close()


def _plane_map(first_file: Path) -> dict[int, dict[tuple[int, int, int], tuple[str, int]]]:
    """{position: {(t, c, z): (file name, IFD)}} from the dataset's OME-XML."""
    from .metadata import dataset_document

    ome = dataset_document(first_file)
    out = {}
    for k, image in enumerate(ome.images):
        suffix = image.id.rsplit(":", 1)[-1]  # Image:<position>, as the writer names them
        out[int(suffix) if suffix.isdigit() else k] = _image_planes(image.pixels,
                                                                      first_file.name)
    return out


def _image_planes(pixels: Any, default_file: str) -> dict[tuple[int, int, int], tuple[str, int]]:
    """Each plane's (file, IFD), from TiffData: ``PlaneCount`` planes from (FirstT, FirstC,
    FirstZ) on, in DimensionOrder, in consecutive IFDs from ``IFD``."""
    order = pixels.dimension_order.value[2:]  # e.g. "ZCT": fastest first
    sizes = {"Z": pixels.size_z, "C": pixels.size_c, "T": pixels.size_t}
    shape = [sizes[a] for a in reversed(order)]  # slowest first
    total = int(np.prod(shape))
    planes = {}
    for td in pixels.tiff_data_blocks:
        name = td.uuid.file_name if td.uuid is not None and td.uuid.file_name else default_file
        first = {"T": td.first_t or 0, "C": td.first_c or 0, "Z": td.first_z or 0}
        start = int(np.ravel_multi_index([first[a] for a in reversed(order)], shape))
        count = td.plane_count if td.plane_count is not None else total - start
        for k in range(min(count, total - start)):
            coords = dict(zip(reversed(order), np.unravel_index(start + k, shape)))
            planes[(int(coords["T"]), int(coords["C"]), int(coords["Z"]))] = (name, (td.ifd or 0) + k)
    return planes
