"""Finalize a dataset whose writer died (daemon SIGKILL, power loss), from its journal.

What is on disk is the truth: OME-TIFF pages that can be read, OME-Zarr chunks that exist,
and the frames the daemon held in chunk buffers in shared memory (written to the store
first). The metadata is rewritten to describe exactly that — the slowest acquisition axis cut
to the steps the frames reached, ``frames_written`` the frames on disk, and the per-frame
metadata the journal kept for them — and records ``complete: false, recovered: true``.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts
import tifffile

from . import platform
from .arena import BufferArena
from .backends.ome_xml import SUMMARY_NS, ImageRecord, build_ome
from .backends.pyramid import level_shapes
from .backends.tiff_tifffile import CLASSIC_TIFF_LIMIT, TiffLayout, write_companion
from .backends.zarr_tensorstore import ATTR_NAMESPACE, TensorstoreZarrBackend, array_driver
from .chunk_buffers import write_unit
from .journal import SUFFIX, JournalContents, journal_path_of, read_journal
from .storage import url_scheme
from .router import FrameRouter
from .schema import AcquisitionSettings, ome_stem


def recover(path: str) -> dict[str, Any]:
    """Recover the dataset at ``path`` (its root path or its journal); returns a summary."""
    if path.endswith(SUFFIX):
        tried = [path]
    elif url_scheme(path) is not None:  # its journal is on this machine's disk
        tried = [str(journal_path_of(path.rstrip("/")))]
    else:  # the output path, or the root_path it came from (a multi-file OME-TIFF's
        # directory is the stem; a root_path without suffix got the format's)
        stem = ome_stem(path.rstrip("/"))
        tried = list(dict.fromkeys(
            [path.rstrip("/") + SUFFIX, stem + SUFFIX,
             *(stem + suffix + SUFFIX for suffix in (".ome.zarr", ".ome.tiff", ".zarr",
                                                     ".ome.tif", ".tiff", ".tif"))]))
    jpath = next((Path(t) for t in tried if Path(t).is_file()), None)
    if jpath is None:
        raise FileNotFoundError(f"{path}: no journal ({', '.join(Path(t).name for t in tried)}) "
                                "— the dataset was finalized, or was not written by "
                                "ome-writers-service")
    journal = read_journal(jpath)
    if journal.settings.format_name == "ome-tiff":
        summary = _recover_tiff(journal)
    else:
        summary = _recover_zarr(journal)
    jpath.unlink()
    if journal.buffers:  # its frames are in the store now
        platform.remove(journal.buffers)  # (Windows: still mapped elsewhere? a daemon's
        # start removes it once its journal is gone)
    return summary


def _first_axis_extent(settings: AcquisitionSettings, frames_done: int, *, whole: bool) -> int:
    """Steps of the slowest acquisition axis reached by ``frames_done`` frames (only the
    complete ones when ``whole``)."""
    outer = settings.dimensions[:-2]
    per_step = int(np.prod([d.count for d in outer[1:]], dtype=int))
    steps = frames_done // per_step if whole else -(-frames_done // per_step)
    declared = outer[0].count
    return steps if declared is None else min(steps, declared)


def _summary(settings: AcquisitionSettings, written: int, done: int) -> dict[str, Any]:
    return {"frames_expected": settings.num_frames, "frames_written": written,
            "frames_without_data": done - written, "complete": False, "recovered": True}


def _recover_tiff(journal: JournalContents) -> dict[str, Any]:
    settings, skipped = journal.settings, journal.skipped
    router = FrameRouter(settings)
    layout = TiffLayout(settings)
    paths = layout.paths
    good: list[int] = []
    for path in paths:
        good.append(_readable_pages(path))
    # page j of position p's file is the j-th frame of position p that was not skipped
    pages: list[list[tuple[int, ...]]] = [[] for _ in paths]
    metadata: list[dict[tuple[int, ...], dict]] = [{} for _ in paths]  # of the frames read
    frame, done = 0, 0
    while any(len(pg) < n for pg, n in zip(pages, good)):
        if router.num_frames is not None and frame >= router.num_frames:
            break
        loc = router.locate(frame)
        if frame not in skipped:
            if len(pages[loc.position]) >= good[loc.position]:
                break  # this position's file ends here: later frames never reached it
            pages[loc.position].append(loc.index)
            if frame in journal.frame_metadata:
                metadata[loc.position][loc.index] = journal.frame_metadata[frame]
        frame += 1
        done = frame
    written = sum(len(p) for p in pages)
    first = _storage_axis_of_first(settings)
    # a file with no readable page is written anew below: only the others' ends matter
    broken = any(_has_broken_tail(p, n) for p, n in zip(paths, good) if n)
    extent = _first_axis_extent(settings, done, whole=broken)
    shape = _outer_shape(settings, first, extent)
    if not all(shape):
        raise ValueError(
            f"{layout.paths[0].parent if layout.multi_file else paths[0]}: no complete step of "
            f"the acquisition can be recovered ({written} readable pages, the last one cut "
            "off): nothing a valid OME-TIFF can describe; the journal is kept")
    zero = np.zeros(settings.frame_shape, settings.dtype)
    for pos, path in enumerate(paths):
        if good[pos]:
            pages[pos] = [i for i in pages[pos] if first is None or i[first] < extent]
            metadata[pos] = {i: md for i, md in metadata[pos].items()
                             if first is None or i[first] < extent}
            if broken:  # only a clean IFD chain can be extended
                continue
            have = set(pages[pos])
            missing = [idx for idx in np.ndindex(*shape) if idx not in have]
            if not missing:
                continue
            # tifffile refuses to append to a file with OME-XML: park a plain description
            # first (the final OME-XML replaces it below)
            tifffile.tiffcomment(path, comment=b"recovering", pageindex=0)
            new, bigtiff = False, _is_bigtiff(path)
        else:  # no readable page (a 0-byte file: its frames never arrived): nothing to keep,
            # so the file is written anew with the fill value, as finalize would have
            missing = list(np.ndindex(*shape))
            new = True
            bigtiff = len(missing) * settings.frame_nbytes > CLASSIC_TIFF_LIMIT
        lower = [np.zeros(shape, settings.dtype) for shape in
                 level_shapes(settings.frame_shape, settings.format.levels)[1:]]
        with tifffile.TiffWriter(path, append=not new, bigtiff=bigtiff) as tw:
            for k, idx in enumerate(missing):  # zero pages for the missing planes
                tw.write(zero, photometric="minisblack", contiguous=False, metadata=None,
                         software=False, description="recovering" if new and k == 0 else None,
                         subifds=len(lower) or None)
                for level in lower:  # and their lower resolutions
                    tw.write(level, photometric="minisblack", contiguous=False, metadata=None,
                             software=False, subfiletype=1)
        pages[pos].extend(missing)
    # every position's file has pages now: one document describes them all
    records = [ImageRecord(pos, settings.positions[pos], shape, pages[pos], metadata[pos])
               for pos in range(len(paths))]
    full = build_ome(settings, layout.image_records(records),
                     {SUMMARY_NS: _summary(settings, written, done)}, uuid=layout.uuids[0])
    for key, ome in layout.documents(full).items():
        if key == -1:
            write_companion(layout.companion, ome)
        else:
            tifffile.tiffcomment(paths[key], comment=ome.to_xml().encode("utf-8"), pageindex=0)
    return {"format": "ome-tiff", "paths": [str(p) for p in paths], "frames_recovered": written,
            "shape": shape, "clean_end": not broken}


def _readable_pages(path: Path) -> int:
    """Pages at the start of the file whose pixels can be read."""
    if not path.is_file():
        return 0
    n = 0
    try:
        with tifffile.TiffFile(path) as tf:
            for page in tf.pages:
                page.asarray()
                n += 1
    except Exception:  # noqa: BLE001 - a page cut off by the crash ends the readable run
        pass
    return n


def _has_broken_tail(path: Path, good: int) -> bool:
    try:
        with tifffile.TiffFile(path) as tf:
            return len(tf.pages) != good
    except Exception:  # noqa: BLE001
        return True


def _is_bigtiff(path: Path) -> bool:
    with tifffile.TiffFile(path) as tf:
        return tf.is_bigtiff


def _storage_axis_of_first(settings: AcquisitionSettings) -> int | None:
    first = settings.dimensions[0].name
    names = [d.name for d in settings.storage_dimensions[:-2]]
    return names.index(first) if first in names else None


def _outer_shape(settings: AcquisitionSettings, first: int | None, extent: int) -> list[int]:
    shape = [d.count for d in settings.storage_dimensions[:-2]]
    if first is not None:
        shape[first] = extent
    return [int(n) for n in shape]  # type: ignore[arg-type]


def _recover_zarr(journal: JournalContents) -> dict[str, Any]:
    """Write the frames the daemon still held in chunk buffers, then describe the frames whose
    chunks (or shards) are stored, on disk or in the bucket (its objects are listed: S3 keeps
    no partial object): the slowest acquisition axis cut to the steps they reach, their count
    and their per-frame metadata in each image's attributes; lower resolution levels missing
    for a stored unit are computed again from level 0."""
    settings = journal.settings
    backend = TensorstoreZarrBackend(settings)  # for its layout and metadata, not to write
    store, layout = backend.store, backend.layout
    unit = write_unit(settings)
    restored = _write_buffered_frames(journal, backend)
    on_disk = [_units_on_disk(backend, img) for img in backend.image_groups]
    first = _storage_axis_of_first(settings)
    router = FrameRouter(settings)
    limit = router.num_frames
    if limit is None:  # unbounded: as far as the units found reach along the first axis
        reach = [(k[first] + 1) * unit[first] for keys in on_disk for k in keys]
        reach += [o[first] + m.shape[first] for (_, o), m in restored.items()]
        per_step = int(np.prod([d.count for d in settings.dimensions[1:-2]], dtype=int))
        limit = max(reach, default=0) * per_step
    frames: list[tuple[int, int, tuple[int, ...]]] = []  # (frame, position, storage index)
    for n in range(limit):
        if n in journal.skipped:
            continue
        loc = router.locate(n)
        key = tuple(i // u for i, u in zip(loc.index, unit))
        origin = tuple(k * u for k, u in zip(key, unit))
        marks = restored.get((loc.position, origin))
        if marks is not None:
            present = bool(marks[tuple(i - o for i, o in zip(loc.index, origin))])
        else:  # a unit is written whole (frames and skipped planes), or not at all
            present = key in on_disk[loc.position]
        if present:
            frames.append((n, loc.position, loc.index))
    if not frames:  # (a daemon killed before its first unit): an array of extent 0 is valid
        # zarr, but no OME-XML (SizeT >= 1) or multiscales reader describes it, as in OME-TIFF
        raise ValueError(
            f"{backend.paths[0] if len(backend.paths) == 1 else store.name}: no complete step "
            "of the acquisition can be recovered (no frame in a stored chunk or a chunk "
            "buffer): nothing a valid OME-Zarr can describe; the journal is kept")
    written = len(frames)
    done = frames[-1][0] + 1
    extent = None
    if first is not None:
        extent = max((idx[first] + 1 for _, _, idx in frames))
    summary = {"frames_expected": settings.num_frames, "frames_written": written,
               "frames_without_data": done - written, "complete": False, "recovered": True}
    for pos, img in enumerate(backend.image_groups):
        for level in range(backend.levels):
            key = layout.array_document(img, level)
            meta = store.read_json(key)
            if extent is not None:
                meta["shape"][first] = extent
            store.write_json(key, meta)
        if backend.levels > 1:
            _complete_lower_levels(backend, img)
        attrs = layout.read_attributes(img)
        ours = attrs.setdefault(ATTR_NAMESPACE, {})
        ours["acquisition"] = summary
        rows = [{**journal.frame_metadata[n], "storage_index": list(idx)}
                for n, p, idx in frames if p == pos and n in journal.frame_metadata]
        if rows:  # ome-writers' layout: one row per frame, in arrival order
            ours["frame_metadata"] = rows
        layout.write_group(img, attrs)
    layout.write_ome_xml()  # the recovered extents, from the metadata just written
    return {"format": "ome-zarr", "paths": backend.paths, "extent": extent,
            "frames_recovered": written,
            "frames_from_buffers": int(sum(m.sum() for m in restored.values()))}


def _open_level(backend: TensorstoreZarrBackend, image: str, level: int = 0,
                erase: bool = False) -> Any:
    """An image's stored array at a resolution level, through the dataset's store
    (``erase``: one that deletes the chunks it writes the fill value to)."""
    store = backend.store
    return ts.open({"driver": array_driver(backend.layout.version),
                    "kvstore": store.kvstore(f"{image}/{level}".lstrip("/")),
                    "store_data_equal_to_fill_value": not erase}, open=True,
                   context=ts.Context(store.context())).result()


def _write_buffered_frames(journal: JournalContents, backend: TensorstoreZarrBackend
                           ) -> dict[tuple[int, tuple], np.ndarray]:
    """Write the planes the daemon held in its shared-memory chunk buffers (frames it had
    released, waiting for their chunk to fill) into the level-0 arrays; returns each such
    unit's marks by (position, origin)."""
    settings = journal.settings
    out: dict[tuple[int, tuple], np.ndarray] = {}
    if not journal.buffers or not Path(journal.buffers).exists():
        return out
    arena = BufferArena.open(journal.buffers)
    opened: dict[int, Any] = {}
    try:
        for pos, origin, marks, pixels in arena.pending():
            arr = opened.get(pos)
            if arr is None:
                arr = opened[pos] = _open_level(backend, backend.image_groups[pos])
            need = [o + n for o, n in zip(origin, marks.shape)]
            if any(n > s for n, s in zip(need, arr.shape[:-2])):  # past the grown extent
                arr = opened[pos] = arr.resize(
                    exclusive_max=[*[max(n, s) for n, s in zip(need, arr.shape[:-2])],
                                   *arr.shape[-2:]], resize_metadata_only=True,
                    expand_only=True).result()
            for k, local in enumerate(np.ndindex(*marks.shape)):
                if marks[local]:
                    plane = pixels[k].view(settings.dtype).reshape(settings.frame_shape)
                    arr[tuple(o + i for o, i in zip(origin, local))].write(plane).result()
            key = (pos, origin)
            out[key] = out[key] | marks if key in out else marks
    finally:
        arena.close()
    return out


def _units_on_disk(backend: TensorstoreZarrBackend, image: str) -> set[tuple[int, ...]]:
    """Keys (index // unit along the outer axes) of an image's level-0 write units whose
    every chunk (or shard) object along the frame axes is stored (a write's temporary file,
    "<i>.__lock", is no chunk: `ZarrLayout.chunk_indices` keeps numbers only)."""
    grid = backend.level_grid(0)
    need = math.prod(-(-n // g) for n, g in zip(backend.frame_shape, grid[-2:]))
    found: Counter[tuple[int, ...]] = Counter(
        tuple(idx[:-2]) for idx in backend.layout.chunk_indices(image, 0))
    return {k for k, n in found.items() if n == need}


def _complete_lower_levels(backend: TensorstoreZarrBackend, image: str) -> None:
    """The writer computes lower levels beside level 0 and may die between the two: every
    write unit whose level-0 chunks are stored but whose lower-level chunks are not all
    there is computed again from level 0 (reading level 0 back: here, unlike in the writer,
    that is the only source left); lower-level units whose level-0 unit is not stored at all
    are deleted (they would show frames that are not on disk)."""
    from .backends import pyramid

    layout, unit = backend.layout, backend._unit
    n_outer = len(unit)
    grid = backend.level_grid

    def unit_files(level: int) -> dict[tuple[int, ...], int]:
        """Outer write-unit key -> chunk (or shard) objects stored at a level."""
        found: dict[tuple[int, ...], int] = {}
        for idx in layout.chunk_indices(image, level):
            key = tuple(i * g // u for i, g, u in zip(idx[:n_outer], grid(level), unit))
            found[key] = found.get(key, 0) + 1
        return found

    def files_per_unit(level: int) -> int:
        g = grid(level)
        per = 1
        for u, c in zip(unit, g[:n_outer]):
            per *= max(1, u // c)
        y, x = backend.level_shapes[level]
        return per * -(-y // g[-2]) * -(-x // g[-1])

    arrays = [_open_level(backend, image, k) for k in range(backend.levels)]
    incomplete: set[tuple[int, ...]] = set()
    have0 = unit_files(0)
    orphans: dict[int, list[tuple[int, ...]]] = {}
    for k in range(1, backend.levels):
        want, have = files_per_unit(k), unit_files(k)
        incomplete.update(u for u in have0 if have.get(u, 0) < want)
        orphans[k] = sorted(set(have) - set(have0))
    for k, keys in orphans.items():
        if not keys:
            continue
        erasing = _open_level(backend, image, k, erase=True)
        for key in keys:
            erasing[tuple(slice(i * u, min((i + 1) * u, n))
                          for i, u, n in zip(key, unit, erasing.shape[:n_outer]))].write(0).result()
    for key in sorted(incomplete):
        region = tuple(slice(i * u, min((i + 1) * u, n))
                       for i, u, n in zip(key, unit, arrays[0].shape[:n_outer]))
        src = arrays[0][region].read().result()
        outs = [np.empty((*src.shape[:n_outer], *shape), src.dtype)
                for shape in backend.level_shapes[1:]]
        for plane in np.ndindex(*src.shape[:n_outer]):
            pyramid.cascade(src[plane], [o[plane] for o in outs], backend.downsampling)
        for arr, out in zip(arrays[1:], outs):
            arr[region].write(out).result()
