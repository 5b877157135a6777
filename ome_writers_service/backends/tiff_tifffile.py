"""OME-TIFF through tifffile: one file per position, written page by page.

Each frame becomes one TIFF page the moment it arrives (no contiguous-series mode), so a file
cut short by a crash still holds a readable IFD chain of every page written. The first page
carries the OME-XML declared at creation; ``finalize`` replaces it with the complete document
(true plane counts, per-plane metadata, annotations) through ``tifffile.tiffcomment``. Several
positions make a multi-file dataset whose files are linked by UUID (`TiffLayout`).

With ``levels`` > 1 every page carries its lower resolutions as SubIFDs. They are computed on
the downsampling threads (`pyramid`), and pages are written on a thread of their own
(`_PagePipeline`), in arrival order: each page's own pixels at once, its SubIFDs once its
levels are ready, and the page linked into the file after both.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import uuid
from collections import deque
from typing import Any, Callable
from pathlib import Path

import numpy as np
import tifffile

from .. import format_metadata as fm
from .. import platform
from ..safe_files import create_new_file, write_atomically
from ..schema import COMPANION_SUFFIX, AcquisitionSettings, OmeTiffFormat
from . import pyramid
from .base import ArrayBackend, BackendError, prepare_output
from .blocks import BufferPool
from .ome_xml import SUMMARY_NS, ImageRecord, binary_only, build_ome
from .tiff_pages import PageAppender

#: Classic TIFF addresses 4 GiB; leave room for IFDs and the OME-XML.
CLASSIC_TIFF_LIMIT = 2**32 - 2**26
_COMPRESSION = {None: None, "none": None, "lzw": "lzw", "zstd": "zstd"}
#: Room kept after the first OME-XML (bytes): per plane, and at most; unbounded acquisitions
_RESERVE_PER_PLANE = 256
_RESERVE_MAX = 16 * 2**20
_RESERVE_MIN_CAP = 1 * 2**20
_RESERVE_UNBOUNDED = 1 * 2**20


def _urn() -> str:
    return uuid.uuid4().urn


class TiffLayout:
    """Where an OME-TIFF dataset's files go and which OME-XML document each one holds.

    One position: the file ``settings.output_path``. Several (or ``prefer_single_file=
    "never"``): the directory ``output_path`` holding ``<dir>_p000<suffix>``, ... Each file has
    a UUID; the complete document (every image, its TiffData naming the file that holds its
    pages by name and UUID) goes where ``multi_file_metadata`` says, and the other files get a
    ``BinaryOnly`` reference to it, as the OME-TIFF specification's multi-file datasets do.
    """

    def __init__(self, settings: AcquisitionSettings) -> None:
        fmt = settings.format
        assert isinstance(fmt, OmeTiffFormat)
        out = Path(settings.output_path)
        n = len(settings.positions)
        self.multi_file = fmt.is_multi_file(n)
        self.directory = out if self.multi_file else out.parent
        self.suffix = fmt.suffix
        companion_name = fmt.companion_name(out.name)
        #: companion files an earlier dataset in the directory may have left (ours, and
        #: ome-writers 0.3.2's default name)
        self.companion_names = {companion_name, out.name + COMPANION_SUFFIX, "companion.ome"}
        if self.multi_file:
            width = max(3, len(str(n - 1)))
            self.paths = [out / f"{out.name}_p{i:0{width}d}{fmt.suffix}" for i in range(n)]
        else:
            self.paths = [out]
        self.uuids = [_urn() for _ in self.paths]
        self.mode = fmt.multi_file_metadata if self.multi_file else "redundant"
        self.companion = out / companion_name if self.mode == "companion-file" else None
        self.companion_uuid = _urn() if self.companion is not None else None

    def prepare(self, overwrite: bool) -> None:
        """Make the files ready to be created. In a multi-file dataset's directory, the files
        of an earlier dataset written there (``<dir>_pNNN`` files of any count, companion
        files) are refused, or removed with ``overwrite``; other files are never touched."""
        if self.multi_file and self.directory.is_dir():
            earlier = self.earlier_dataset_files()
            if earlier and not overwrite:
                raise FileExistsError(
                    f"{self.directory} already holds an OME-TIFF dataset ({len(earlier)} files: "
                    f"{earlier[0].name}, ...); pass overwrite=True to replace it")
            for f in earlier:
                f.unlink()
        for path in [*self.paths, *([self.companion] if self.companion else [])]:
            if overwrite and path.is_file() and not path.is_symlink() and not (
                    fm.holds_ome_document(path) if path == self.companion else
                    _starts_with(path, _TIFF_MAGICS)):
                raise FileExistsError(
                    f"{path} exists and is not {'an OME' if path == self.companion else 'a TIFF'} "
                    "file: overwrite=True replaces a dataset, never other data; remove it "
                    "yourself if it must go")
            prepare_output(path, overwrite)

    def earlier_dataset_files(self) -> list[Path]:
        """Files of a dataset written to this directory before: ``<dir>_pNNN`` OME-TIFF files
        (any TIFF suffix) and companion files holding an OME document; nothing else."""
        pattern = re.compile(re.escape(self.directory.name) + r"_p\d+(\.ome)?\.tiff?$",
                             re.IGNORECASE)
        found = []
        for f in self.directory.iterdir():
            if not f.is_file() or f.is_symlink():
                continue
            if pattern.match(f.name):
                if _starts_with(f, _TIFF_MAGICS):
                    found.append(f)
            elif f.name in self.companion_names and fm.holds_ome_document(f):
                found.append(f)
        return sorted(found)

    def holds_full_document(self, pos: int) -> bool:
        return self.mode == "redundant" or (self.mode == "master-tiff" and pos == 0)

    def image_records(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """``records`` with the file of each image named (multi-file datasets only)."""
        if not self.multi_file:
            return records
        for rec in records:
            rec.file_name = self.paths[rec.index].name
            rec.file_uuid = self.uuids[rec.index]
        return records

    def documents(self, full: Any) -> dict[int, Any]:
        """The document of each file (by position; -1: the companion file) given the
        complete one."""
        out = {}
        if self.mode == "companion-file":
            out[-1] = full.model_copy(update={"uuid": self.companion_uuid})
            ref = (self.companion.name, self.companion_uuid)
        else:
            ref = (self.paths[0].name, self.uuids[0])
        for pos, file_uuid in enumerate(self.uuids):
            if self.holds_full_document(pos):
                out[pos] = full.model_copy(update={"uuid": file_uuid})
            else:
                out[pos] = binary_only(file_uuid, *ref)
        return out

    def path_of(self, key: int) -> Path:
        """The file of a `documents` key."""
        return self.companion if key == -1 else self.paths[key]

    def keys(self) -> list[int]:
        """The files that hold an OME document: -1 (the companion), then each position's."""
        return ([-1] if self.companion is not None else []) + list(range(len(self.paths)))

    def adopt_file_uuids(self) -> None:
        """Take the UUIDs of the files as written (by another process: the daemon)."""
        self.uuids = [self.read_document(pos).uuid for pos in range(len(self.paths))]
        if self.companion is not None:
            self.companion_uuid = self.read_document(-1).uuid

    def relink(self, key: int, ome: Any) -> Any:
        """``ome`` (a document the user edited) with the UUIDs of this dataset's files: its
        own, those of the files its TiffData name, and its BinaryOnly reference, so that a
        document taken from get_metadata() at any time keeps the dataset's files linked."""
        ome = ome.model_copy(deep=True)
        by_name = {p.name: u for p, u in zip(self.paths, self.uuids)}
        if self.companion is not None:
            by_name[self.companion.name] = self.companion_uuid
        ome.uuid = self.companion_uuid if key == -1 else self.uuids[key]
        for image in ome.images:
            for td in image.pixels.tiff_data_blocks:
                if td.uuid is not None and td.uuid.file_name in by_name:
                    td.uuid.value = by_name[td.uuid.file_name]
        ref = ome.binary_only
        if ref is not None and Path(ref.metadata_file).name in by_name:
            ref.uuid = by_name[Path(ref.metadata_file).name]
        return ome

    def write_document(self, key: int, ome: Any) -> None:
        """Replace the OME-XML of file ``key`` (the companion file: atomically)."""
        if key == -1:
            write_companion(self.companion, ome)
        else:
            fm.write_tiff_ome(self.paths[key], ome)

    def read_document(self, key: int) -> Any:
        if key == -1:
            from ome_types import from_xml
            return from_xml(self.companion.read_bytes().decode("utf-8"))
        return fm.read_tiff_ome(self.paths[key])


_TIFF_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # TIFF and BigTIFF headers


def _starts_with(path: Path, magics: tuple[bytes, ...]) -> bool:
    """Whether the file begins with one of ``magics`` (TIFF and BigTIFF headers)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in magics
    except OSError:
        return False


def write_companion(path: Path, ome: Any) -> None:
    write_companion_bytes(path, ome.to_xml().encode("utf-8"))


def write_companion_bytes(path: Path, xml: bytes) -> None:
    """Write a companion OME-XML file: a new file renamed over the old one, so a reader
    never sees half of it."""
    write_atomically(path, xml, durable=True)


class TifffileBackend(ArrayBackend):
    """Writes one OME-TIFF file per position with tifffile."""

    def __init__(self, settings: AcquisitionSettings) -> None:
        super().__init__(settings)
        self.layout = TiffLayout(settings)
        self._paths = self.layout.paths
        self._writers: list[tifffile.TiffWriter] = []
        self._files: list[Any] = []  # the files the writers write to (created exclusively)
        #: per position, once tifffile wrote the first two pages of an uncompressed file:
        #: the cheaper writer of every later page (see tiff_pages.py)
        self._appenders: list[PageAppender | None] = [None for _ in self._paths]
        #: OME documents the user gave update_metadata(), by position
        self.user_ome: dict[int, Any] = {}
        #: per position: storage index of each page, in page order
        self._pages: list[list[tuple[int, ...]]] = [[] for _ in self._paths]
        self._page_of: list[dict[tuple[int, ...], int]] = [{} for _ in self._paths]
        self._compression = _COMPRESSION[settings.compression]
        level = settings.codec_level
        self._codec_args = None if level is None else {"level": level}  # zstd's level
        fmt = settings.format
        self.levels: int = fmt.levels
        self.downsampling: str = fmt.downsampling
        #: (y, x) of each resolution, level 0 first
        self.level_shapes = pyramid.level_shapes(self.frame_shape, self.levels)
        page_bytes = sum(y * x for y, x in self.level_shapes) * self.dtype.itemsize
        planes = (settings.num_frames or 0) // max(1, len(self._paths))
        described = (settings.num_frames or 0) if self.layout.multi_file else planes
        self._bigtiff = settings.is_unbounded or planes * page_bytes > CLASSIC_TIFF_LIMIT
        #: with levels: the thread writing pages once their lower levels are computed
        self._pipeline = _PagePipeline(self) if self.levels > 1 else None
        #: spaces after the first OME-XML, so that the final one (plane counts, one TiffData
        #: per page when pages arrive out of plane order, per-plane metadata) fits in place,
        #: also on a full disk; never more than ~1% of the file's pixels (a "redundant" plate
        #: of small frames would otherwise reserve more than it stores; its final XML is
        #: then appended at the end of the file)
        cap = min(_RESERVE_MAX, max(_RESERVE_MIN_CAP, planes * settings.frame_nbytes // 100))
        self._reserve = _RESERVE_UNBOUNDED if settings.is_unbounded else \
            min(cap, 4096 + _RESERVE_PER_PLANE * described)
        #: the OME-XML each file gets with its first page (built once: see _initial_xml)
        self._initial: dict[int, bytes] | None = None

    @property
    def paths(self) -> list[str]:
        return [str(p) for p in self._paths]

    def _full_document(self, shapes: list[list[int]], pages: bool = True) -> Any:
        """The complete OME document: every position's image with the given T/C/Z extents
        (and, with ``pages``, its pages and per-frame metadata so far)."""
        annotations = dict(self.global_metadata)
        if self.acquisition_summary:
            annotations[SUMMARY_NS] = self.acquisition_summary
        records = [ImageRecord(pos, self.positions[pos], shapes[pos],
                               self._pages[pos] if pages else (),
                               self.frame_metadata[pos] if pages else {})
                   for pos in range(len(self._paths))]
        return build_ome(self.settings, self.layout.image_records(records), annotations,
                         uuid=self.layout.uuids[0])

    def _documents_xml(self, full: Any) -> dict[int, bytes]:
        """Each file's OME-XML (-1: the companion's). A complete document is serialized once
        and only its root UUID differs between files (a plate of 384 positions would
        otherwise cost 384 serializations of 384 images)."""
        xml = full.to_xml().encode("utf-8")
        own = f'UUID="{full.uuid}"'.encode()
        once = xml.count(own) == 1
        out = {}
        for key, doc in self.layout.documents(full).items():
            if doc.binary_only is None and once:
                out[key] = xml.replace(own, f'UUID="{doc.uuid}"'.encode(), 1)
            else:
                out[key] = doc.to_xml().encode("utf-8")
        return out

    def _initial_xml(self, pos: int) -> bytes:
        """What the first page of a file carries until finalize: the declared dataset."""
        if self._initial is None:
            declared = self._declared_shape()
            full = self._full_document([declared] * len(self._paths), pages=False)
            self._initial = self._documents_xml(full)
        return self._initial[pos]

    def create(self) -> None:
        if self._compression is not None:
            try:
                import imagecodecs  # noqa: F401  (tifffile encodes LZW/zstd through it)
            except ImportError as e:
                raise BackendError(
                    f"compression {self.settings.compression!r} for OME-TIFF needs the "
                    "'imagecodecs' package: pip install imagecodecs"
                ) from e
        self.layout.prepare(self.settings.overwrite)
        try:
            for path in self._paths:  # new files: never a name planted meanwhile (a symlink)
                self._files.append(open(path, "w+b", opener=lambda p, _: create_new_file(p)))
                self._writers.append(tifffile.TiffWriter(self._files[-1], bigtiff=self._bigtiff,
                                                         ome=False))
        except OSError as e:
            raise BackendError(f"cannot create {e.filename or self._paths[0]}: {e.strerror}") from e

    def write(self, position, index, frame, metadata=None) -> None:
        self._accept(position, index, metadata)
        if self._pipeline is not None:  # the levels are computed from a copy of the frame
            self._pipeline.put_copy(position, index, frame)
        else:
            self._write_page(position, index, frame)
        self.frames_written += 1

    def write_borrowed(self, position, index, frame, metadata, done) -> None:
        if self._pipeline is None:
            super().write_borrowed(position, index, frame, metadata, done)
            return
        self._accept(position, index, metadata)
        self._pipeline.put(position, index, frame, done)  # written from the lent frame
        self.frames_written += 1

    def _accept(self, position: int, index: tuple[int, ...], metadata) -> None:
        if self._pipeline is not None:
            self._raise_pipeline_errors()
        if index in self._page_of[position] or (
                self._pipeline is not None and index in self._pipeline.queued[position]):
            raise BackendError(f"{self._paths[position]}: plane {index} written twice")
        self._note_index(index)
        self._note_metadata(position, index, metadata)

    def _raise_pipeline_errors(self) -> None:
        failed = self._pipeline.take_failures()  # type: ignore[union-attr]
        if failed:
            self.frames_written -= len(failed)  # accepted, but not on disk: say so
            raise BackendError(failed[0])

    def _write_page(self, position: int, index: tuple[int, ...], frame: np.ndarray,
                    lower: list[np.ndarray] | None = None,
                    ready: Callable[[], object] | None = None) -> None:
        """Write plane ``index`` as the file's next page (with its lower levels: SubIFDs;
        ``ready()`` returns once they hold their pixels, which the page need not wait for)."""
        pages = self._pages[position]
        appender = self._appenders[position]
        lower = lower or []
        try:
            if appender is not None:
                appender.append(np.ascontiguousarray(frame), *lower, ready=ready)
            else:
                if ready is not None:
                    ready()
                self._write_with_tifffile(position, frame, lower)
        except OSError as e:
            raise BackendError(f"writing page {len(pages)} (plane {index}) of "
                               f"{self._paths[position]} failed: "
                               f"{_why(e, self._paths[position])}") from e
        self._page_of[position][index] = len(pages)
        pages.append(index)

    def _write_with_tifffile(self, position: int, frame: np.ndarray,
                             lower: list[np.ndarray]) -> None:
        pages = self._pages[position]
        writer = self._writers[position]
        description = None
        if not pages:  # the first page carries the OME-XML, with room for the final one
            full = self.layout.holds_full_document(position)
            description = self._initial_xml(position) + b" " * (self._reserve if full else 64)
        writer.write(frame, photometric="minisblack", compression=self._compression,
                     compressionargs=self._codec_args,
                     contiguous=False, metadata=None, description=description, software=False,
                     subifds=len(lower) or None)
        for level in lower:  # the SubIFDs follow their page at once
            writer.write(level, photometric="minisblack", compression=self._compression,
                         compressionargs=self._codec_args, contiguous=False,
                         metadata=None, software=False, subfiletype=1)
        writer._fh.flush()  # nothing of an acknowledged page waits in a Python buffer
        if len(pages) == 1 and self._compression is None:  # page 1 written: the template
            self._close_writer(position)
            self._appenders[position] = PageAppender(self._paths[position], template=1)

    def _close_writer(self, position: int) -> None:
        """Close tifffile's writer of a file (again: a no-op) and the file it wrote to."""
        self._writers[position].close()
        self._files[position].close()

    def get_metadata(self) -> dict[int, Any]:
        """Each file's OME document by position; -1 is the companion file's (as ome-writers)."""
        if self._finalized:
            out = {key: self.layout.read_document(key) for key in self.layout.keys()}
        else:
            declared = self._declared_shape()
            out = self.layout.documents(self._full_document([declared] * len(self._paths)))
        for key, ome in self.user_ome.items():
            out[key] = ome
        return {key: ome.model_copy(deep=True) for key, ome in out.items()}

    def update_metadata(self, metadata) -> None:
        """After finalize only (as ome-writers): each given file's OME-XML is replaced."""
        if not self._finalized:
            raise RuntimeError("update_metadata() must be called after the stream context "
                               "exits. TIFF files must be closed before metadata can be updated.")
        for key, ome in fm.check_tiff_update(metadata, self.layout.keys()).items():
            ome = self.layout.relink(key, ome)
            self.layout.write_document(key, ome)
            self.user_ome[key] = ome

    def rewrite_metadata(self) -> None:
        super().rewrite_metadata()
        # documents the user replaced with update_metadata() keep their edits: add the
        # global metadata to those that describe images (finalize wrote the generated
        # documents again)
        for key, ome in self.user_ome.items():
            if ome.binary_only is None:
                for namespace, value in self.global_metadata.items():
                    fm.set_global_annotation(ome, namespace, value)
            self.layout.write_document(key, ome)

    def _declared_shape(self) -> list[int]:
        return [1 if n is None else n for n in self.outer_shape]

    def read(self, position, index) -> np.ndarray | None:
        if self._pipeline is not None:
            self._pipeline.wait()  # the plane may still wait for its levels
        page = self._page_of[position].get(index)
        if page is None:
            return None
        if not self._finalized and self._appenders[position] is None:
            self._writers[position]._fh.flush()  # (after finalize the writer is closed)
        with tifffile.TiffFile(self._paths[position], is_ome=False) as tf:
            return tf.pages[page].asarray()

    def finalize(self) -> None:
        if self._finalized:
            return
        shape = list(self.current_shape()[:-2])
        errors = []
        if self._pipeline is not None:  # every accepted page written (or failed) first
            self._pipeline.close()
            failed = self._pipeline.take_failures()
            self.frames_written -= len(failed)
            self.recount_summary()  # their frames are not on disk
            errors += failed
        shapes: list[list[int]] = []
        for pos, path in enumerate(self._paths):
            described = None
            try:
                described = self._fill_missing_planes(pos, shape, errors)
                self._close_writer(pos)  # (already closed where an appender took over)
                if self._appenders[pos] is not None:
                    self._appenders[pos].close()
            except Exception as e:  # noqa: BLE001 - every file gets its chance, then we raise
                errors.append(f"{path}: {e}")
            if described is None and self._pages[pos]:
                errors.append(f"{path}: no complete step of the acquisition was written; its "
                              "image is described as declared")
            shapes.append(described if described is not None else self._declared_shape())
        if not any(self._pages):  # an unbounded stream closed before its first frame
            for path in self._paths:
                path.unlink(missing_ok=True)
        else:
            try:
                docs = self._documents_xml(self._full_document(shapes))
            except Exception as e:  # noqa: BLE001
                docs = {}
                errors.append(f"building the OME-XML failed: {e}")
            for key, xml in docs.items():
                path = self.layout.path_of(key)
                try:
                    if key == -1:
                        write_companion_bytes(path, xml)
                    else:  # in place (room was reserved): works on a full disk too
                        tifffile.tiffcomment(path, comment=xml, pageindex=0)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{path}: writing its OME-XML failed: {_why_any(e, path)}")
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
        zero_levels = [np.zeros(s, self.dtype) for s in self.level_shapes[1:]]
        try:
            for idx in np.ndindex(*shape):
                if idx not in written:
                    self._write_page(pos, idx, zero, zero_levels)
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


class _PagePipeline(threading.Thread):
    """Pages of a pyramid OME-TIFF, written on a thread of their own in arrival order: a
    page's own pixels at once, its SubIFDs once the downsampling threads computed its lower
    levels (they were the writes' critical path before: ~14% of this thread's time in a
    py-spy profile of W1 waited for them); the frame (lent, or a copy)
    is handed back right after its page is written. At most ``depth`` pages wait: `put`
    blocks beyond, so a slow disk holds the frames back in the ring, as without levels."""

    def __init__(self, backend: TifffileBackend) -> None:
        super().__init__(name="ows-tiff-pages", daemon=True)
        self.b = backend
        frame_bytes = backend.settings.frame_nbytes
        self.depth = 8
        self._pools = [BufferPool(shape, backend.dtype, keep_bytes=self.depth * frame_bytes)
                       for shape in backend.level_shapes[1:]]
        self._copies = BufferPool(backend.frame_shape, backend.dtype,
                                  keep_bytes=self.depth * frame_bytes)
        self._queue: queue.Queue = queue.Queue()
        self._room = threading.Semaphore(self.depth)
        #: per position: planes accepted and not yet written
        self.queued: list[set[tuple[int, ...]]] = [set() for _ in backend.paths]
        self._failures: deque[str] = deque()

    def put_copy(self, position: int, index: tuple[int, ...], frame: np.ndarray) -> None:
        src, _ = self._copies.take(self.b.frame_shape)
        np.copyto(src, frame)
        self.put(position, index, src, lambda: self._copies.give(src))

    def put(self, position: int, index: tuple[int, ...], frame: np.ndarray,
            done: Callable[[], None]) -> None:
        """Queue plane ``index`` (``frame`` valid until ``done()``)."""
        if not self.is_alive():
            self.start()
        self._room.acquire()
        lower = [pool.take(shape)[0] for pool, shape in zip(self._pools, self.b.level_shapes[1:])]
        levels = pyramid.submit(pyramid.cascade, frame, lower, self.b.downsampling)
        self.queued[position].add(index)
        self._queue.put((position, index, frame, lower, levels, done))

    def take_failures(self) -> list[str]:
        """What could not be written since the last call, one message per page."""
        out = []
        while self._failures:
            out.append(self._failures.popleft())
        return out

    def wait(self) -> None:
        """Until every page queued so far is written (or failed)."""
        if self.is_alive():
            self._queue.join()

    def close(self) -> None:
        if self.is_alive():
            self._queue.put(None)
            self.join()

    def run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            position, index, frame, lower, levels, done = item
            try:
                if self._failures:  # nothing more is written after a failure
                    raise BackendError(f"{self.b.paths[position]}: plane {index} not written "
                                       "after an earlier failure")
                # the page's own pixels go to disk while its levels may still be computed
                self.b._write_page(position, index, frame, lower, ready=levels.result)
            except Exception as e:  # noqa: BLE001 - reported by the writer thread
                self._failures.append(str(e) if isinstance(e, BackendError) else
                                      f"{self.b.paths[position]}: plane {index}: {e!r}")
            finally:
                for pool, buf in zip(self._pools, lower):
                    pool.give(buf)
                self.queued[position].discard(index)
                done()
                self._room.release()
                self._queue.task_done()


def _why_any(e: Exception, path: Path) -> str:
    return _why(e, path) if isinstance(e, OSError) else str(e)


def _why(e: OSError, path: Path) -> str:
    """The reason of a failed write, also when the writer's message hides the errno (a short
    write on a full disk)."""
    if e.errno is not None:
        return e.strerror or str(e)
    try:
        if platform.disk_free(path.parent) < 1 << 20:
            return f"no space left on the device of {path.parent} ({e})"
    except OSError:
        pass
    return str(e)
