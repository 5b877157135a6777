"""OME-TIFF through tifffile: one file per position, written page by page.

Each frame becomes one TIFF page the moment it arrives (no contiguous-series mode), so a file
cut short by a crash still holds a readable IFD chain of every page written. The first page
carries the OME-XML declared at creation; ``finalize`` replaces it with the complete document
(true plane counts, per-plane metadata, annotations) through ``tifffile.tiffcomment``.
"""

from __future__ import annotations

import os
import re
from typing import Any
from pathlib import Path

import numpy as np
import tifffile

from .. import format_metadata as fm
from ..schema import AcquisitionSettings
from .base import ArrayBackend, BackendError, prepare_output
from .ome_xml import build_ome
from .tiff_pages import PageAppender

#: Classic TIFF addresses 4 GiB; leave room for IFDs and the OME-XML.
_CLASSIC_TIFF_LIMIT = 2**32 - 2**26
#: MapAnnotation namespace of the frames expected/written summary
SUMMARY_NS = "ome_writers.acquisition"
_COMPRESSION = {None: None, "none": None, "lzw": "lzw", "zstd": "zstd"}
#: Room kept after the first OME-XML (bytes): per plane, and at most; unbounded acquisitions
_RESERVE_PER_PLANE = 256
_RESERVE_MAX = 16 * 2**20
_RESERVE_UNBOUNDED = 1 * 2**20


def tiff_paths(settings: AcquisitionSettings) -> list[Path]:
    """One file per position: ``name.ome.tiff``, or ``name_p000.ome.tiff``... for several."""
    root = Path(settings.output_path)
    if settings.position_dimension is None:
        return [root]
    name = root.name
    match = re.search(r"(\.ome)?\.tiff?$", name, re.IGNORECASE)
    stem, suffix = (name[: match.start()], name[match.start():]) if match else (name, ".ome.tiff")
    n = len(settings.positions)
    width = max(3, len(str(n - 1)))
    return [root.with_name(f"{stem}_p{i:0{width}d}{suffix}") for i in range(n)]


class TifffileBackend(ArrayBackend):
    """Writes one OME-TIFF file per position with tifffile."""

    def __init__(self, settings: AcquisitionSettings) -> None:
        super().__init__(settings)
        self._paths = tiff_paths(settings)
        self._writers: list[tifffile.TiffWriter] = []
        #: per position, once tifffile wrote the first two pages of an uncompressed file:
        #: the cheaper writer of every later page (see tiff_pages.py)
        self._appenders: list[PageAppender | None] = [None for _ in self._paths]
        #: OME documents the user gave update_metadata(), by position
        self.user_ome: dict[int, Any] = {}
        #: per position: storage index of each page, in page order
        self._pages: list[list[tuple[int, ...]]] = [[] for _ in self._paths]
        self._page_of: list[dict[tuple[int, ...], int]] = [{} for _ in self._paths]
        self._compression = _COMPRESSION[settings.compression]
        planes = (settings.num_frames or 0) // max(1, len(self._paths))
        self._bigtiff = settings.is_unbounded or planes * settings.frame_nbytes > _CLASSIC_TIFF_LIMIT
        #: spaces after the first OME-XML, so that the final one (plane counts, one TiffData
        #: per page when pages arrive out of plane order, per-plane metadata) fits in place
        self._reserve = _RESERVE_UNBOUNDED if settings.is_unbounded else \
            min(_RESERVE_MAX, 4096 + _RESERVE_PER_PLANE * planes)

    @property
    def paths(self) -> list[str]:
        return [str(p) for p in self._paths]

    def _xml(self, pos: int, outer_shape) -> str:
        annotations = dict(self.global_metadata)
        if self.acquisition_summary:
            annotations[SUMMARY_NS] = self.acquisition_summary
        ome = build_ome(
            self.settings, pos, self.positions[pos], outer_shape, self._pages[pos],
            self.frame_metadata[pos], annotations,
        )
        return ome.to_xml()

    def create(self) -> None:
        if self._compression is not None:
            try:
                import imagecodecs  # noqa: F401  (tifffile encodes LZW/zstd through it)
            except ImportError as e:
                raise BackendError(
                    f"compression {self.settings.compression!r} for OME-TIFF needs the "
                    "'imagecodecs' package: pip install imagecodecs"
                ) from e
        for path in self._paths:
            prepare_output(path, self.settings.overwrite)
        try:
            for path in self._paths:
                self._writers.append(tifffile.TiffWriter(path, bigtiff=self._bigtiff, ome=False))
        except OSError as e:
            raise BackendError(f"cannot create {e.filename or self._paths[0]}: {e.strerror}") from e

    def write(self, position, index, frame, metadata=None) -> None:
        self._note_index(index)
        self._note_metadata(position, index, metadata)
        if index in self._page_of[position]:
            raise BackendError(f"{self._paths[position]}: plane {index} written twice")
        self._write_page(position, index, frame)
        self.frames_written += 1

    def _write_page(self, position: int, index: tuple[int, ...], frame: np.ndarray) -> None:
        pages = self._pages[position]
        appender = self._appenders[position]
        try:
            if appender is not None:
                appender.append(np.ascontiguousarray(frame))
            else:
                self._write_with_tifffile(position, frame)
        except OSError as e:
            raise BackendError(f"writing page {len(pages)} of {self._paths[position]} failed: "
                               f"{_why(e, self._paths[position])}") from e
        self._page_of[position][index] = len(pages)
        pages.append(index)

    def _write_with_tifffile(self, position: int, frame: np.ndarray) -> None:
        pages = self._pages[position]
        writer = self._writers[position]
        description = None
        if not pages:  # the first page carries the OME-XML, with room for the final one
            xml = self._xml(position, self._declared_shape()).encode()
            description = xml + b" " * self._reserve
        writer.write(frame, photometric="minisblack", compression=self._compression,
                     contiguous=False, metadata=None, description=description, software=False)
        writer._fh.flush()  # nothing of an acknowledged page waits in a Python buffer
        if len(pages) == 1 and self._compression is None:  # page 1 written: the template
            writer.close()
            self._appenders[position] = PageAppender(self._paths[position], template=1)

    def get_metadata(self) -> dict[int, Any]:
        out = {}
        for pos, path in enumerate(self._paths):
            if pos in self.user_ome:
                out[pos] = self.user_ome[pos].model_copy(deep=True)
            elif self._finalized:
                out[pos] = fm.read_tiff_ome(path)
            else:
                annotations = dict(self.global_metadata)
                out[pos] = build_ome(self.settings, pos, self.positions[pos],
                                     self._declared_shape(), self._pages[pos],
                                     self.frame_metadata[pos], annotations)
        return out

    def update_metadata(self, metadata) -> None:
        """After finalize only (as ome-writers): each file's OME-XML is replaced."""
        if not self._finalized:
            raise RuntimeError("update_metadata() must be called after the stream context "
                               "exits. TIFF files must be closed before metadata can be updated.")
        for pos, ome in fm.check_tiff_update(metadata, len(self._paths)).items():
            fm.write_tiff_ome(self._paths[pos], ome)
            self.user_ome[pos] = ome.model_copy(deep=True)

    def rewrite_metadata(self) -> None:
        super().rewrite_metadata()
        # documents the user replaced with update_metadata() keep their edits: add the
        # global metadata to them (finalize wrote the generated document again)
        for pos, ome in self.user_ome.items():
            for namespace, value in self.global_metadata.items():
                fm.set_global_annotation(ome, namespace, value)
            fm.write_tiff_ome(self._paths[pos], ome)

    def _declared_shape(self) -> list[int]:
        return [1 if n is None else n for n in self.outer_shape]

    def read(self, position, index) -> np.ndarray | None:
        page = self._page_of[position].get(index)
        if page is None:
            return None
        if self._appenders[position] is None:
            self._writers[position]._fh.flush()
        with tifffile.TiffFile(self._paths[position]) as tf:
            return tf.pages[page].asarray()

    def finalize(self) -> None:
        if self._finalized:
            return
        shape = list(self.current_shape()[:-2])
        errors = []
        for pos, path in enumerate(self._paths):
            try:
                described = self._fill_missing_planes(pos, shape, errors)
                self._writers[pos].close()  # (already closed where an appender took over)
                if self._appenders[pos] is not None:
                    self._appenders[pos].close()
                if not self._pages[pos]:  # an unbounded stream closed before its first frame
                    path.unlink(missing_ok=True)
                    continue
                if described is None:
                    errors.append(f"{path}: no complete step of the acquisition was written; "
                                  "the OME-XML declared at creation stays")
                    continue
                # in place (room was reserved): works on a full disk too
                tifffile.tiffcomment(path, comment=self._xml(pos, described).encode(),
                                     pageindex=0)
            except Exception as e:  # noqa: BLE001 - every file gets its chance, then we raise
                errors.append(f"{path}: {e}")
        self._finalized = True
        if errors:
            raise BackendError("finalizing OME-TIFF failed: " + "; ".join(errors))

    def _fill_missing_planes(self, pos: int, shape: list[int], errors: list[str]
                             ) -> list[int] | None:
        """Give every plane a page: skipped frames and the unfilled tail of an unbounded or
        early-ended acquisition are stored as zeros (ome-writers' fill value). If pages can
        no longer be written (a full disk), describe only the leading steps of the slowest
        acquisition axis whose planes all have pages; None when there is none."""
        written = self._page_of[pos]
        if not (shape and all(shape)):
            return shape
        zero = np.zeros(self.frame_shape, self.dtype)
        try:
            for idx in np.ndindex(*shape):
                if idx not in written:
                    self._write_page(pos, idx, zero)
            return shape
        except BackendError as e:
            errors.append(str(e))
        ax = self.first_axis if self.first_axis is not None else 0
        steps = 0
        while steps < shape[ax] and all(
                idx in written for idx in np.ndindex(*shape) if idx[ax] == steps):
            steps += 1
        if steps == 0:
            return None
        return [steps if a == ax else n for a, n in enumerate(shape)]


def _why(e: OSError, path: Path) -> str:
    """The reason of a failed write, also when the writer's message hides the errno (a short
    write on a full disk)."""
    if e.errno is not None:
        return e.strerror or str(e)
    try:
        st = os.statvfs(path.parent)
        if st.f_bavail * st.f_frsize < 1 << 20:
            return f"no space left on the device of {path.parent} ({e})"
    except OSError:
        pass
    return str(e)
