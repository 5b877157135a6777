"""Finalize a dataset whose writer died (daemon SIGKILL, power loss), from its journal.

What is on disk is the truth: OME-TIFF pages that can be read, OME-Zarr chunks that exist.
The metadata is rewritten to describe exactly that — the slowest acquisition axis cut to the
steps the frames reached — and records ``complete: false, recovered: true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .backends.ome_xml import SUMMARY_NS, ImageRecord, build_ome
from .backends.pyramid import level_shapes
from .backends.tiff_tifffile import CLASSIC_TIFF_LIMIT, TiffLayout, write_companion
from .backends.zarr_tensorstore import ATTR_NAMESPACE, TensorstoreZarrBackend
from .journal import SUFFIX, journal_path_of, read_journal
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
    settings, skipped, _ = read_journal(jpath)
    if settings.format_name == "ome-tiff":
        summary = _recover_tiff(settings, skipped)
    else:
        summary = _recover_zarr(settings)
    jpath.unlink()
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


def _recover_tiff(settings: AcquisitionSettings, skipped: set[int]) -> dict[str, Any]:
    router = FrameRouter(settings)
    layout = TiffLayout(settings)
    paths = layout.paths
    good: list[int] = []
    for path in paths:
        good.append(_readable_pages(path))
    # page j of position p's file is the j-th frame of position p that was not skipped
    pages: list[list[tuple[int, ...]]] = [[] for _ in paths]
    frame, done = 0, 0
    while any(len(pg) < n for pg, n in zip(pages, good)):
        if router.num_frames is not None and frame >= router.num_frames:
            break
        loc = router.locate(frame)
        if frame not in skipped:
            if len(pages[loc.position]) >= good[loc.position]:
                break  # this position's file ends here: later frames never reached it
            pages[loc.position].append(loc.index)
        frame += 1
        done = frame
    written = sum(len(p) for p in pages)
    first = _storage_axis_of_first(settings)
    broken = any(_has_broken_tail(p, n) for p, n in zip(paths, good))
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
    records = [ImageRecord(pos, settings.positions[pos], shape, pages[pos])
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


def _recover_zarr(settings: AcquisitionSettings) -> dict[str, Any]:
    """Cut each array's slowest acquisition axis to the last chunk (or shard) stored, on disk
    or in the bucket (the store's objects are listed: S3 keeps no partial object)."""
    backend = TensorstoreZarrBackend(settings)  # for its layout and metadata, not to write
    store, layout = backend.store, backend.layout
    first = _storage_axis_of_first(settings)
    storage = settings.storage_dimensions
    extent = None
    if first is not None:
        d = storage[first]
        per_key = (d.chunk_size or 1) * (d.shard_size_chunks or 1)
        extent = 0
        for img in backend.image_groups:
            for idx in layout.chunk_indices(img):
                extent = max(extent, (idx[first] + 1) * per_key)
        if d.count is not None:
            extent = min(extent, d.count)
    for img in backend.image_groups:
        for level in range(backend.levels):
            key = layout.array_document(img, level)
            meta = store.read_json(key)
            if extent is not None:
                meta["shape"][first] = extent
            store.write_json(key, meta)
        if backend.levels > 1:
            _complete_lower_levels(backend, img)
        attrs = layout.read_attributes(img)
        attrs.setdefault(ATTR_NAMESPACE, {})["acquisition"] = {
            "frames_expected": settings.num_frames, "complete": False, "recovered": True}
        layout.write_group(img, attrs)
    layout.write_ome_xml()  # the recovered extents, from the metadata just written
    return {"format": "ome-zarr", "paths": backend.paths, "extent": extent}


def _complete_lower_levels(backend: TensorstoreZarrBackend, image: str) -> None:
    """The writer computes lower levels beside level 0 and may die between the two: every
    write unit whose level-0 chunks are stored but whose lower-level chunks are not all
    there is computed again from level 0 (reading level 0 back: here, unlike in the writer,
    that is the only source left)."""
    import tensorstore as ts

    from .backends import pyramid
    from .backends.zarr_tensorstore import array_driver

    store, layout, unit = backend.store, backend.layout, backend._unit
    n_outer = len(unit)
    specs = [backend._array_spec(image, k) for k in range(backend.levels)]
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

    ctx = ts.Context(store.context())
    driver = array_driver(layout.version)
    arrays = [ts.open({"driver": driver, "kvstore": spec["kvstore"]}, context=ctx).result()
              for spec in specs]
    incomplete: set[tuple[int, ...]] = set()
    have0 = unit_files(0)
    for k in range(1, backend.levels):
        want, have = files_per_unit(k), unit_files(k)
        incomplete.update(u for u in have0 if have.get(u, 0) < want)
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
