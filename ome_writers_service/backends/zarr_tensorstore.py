"""OME-Zarr through tensorstore (arrays) and yaozarrs (metadata models): NGFF 0.5 on zarr v3,
or 0.4 on zarr v2, in a local directory or an S3 bucket (`storage`).

Where the images go and what the groups hold is `ZarrLayout`'s (zarr_metadata.py): one image
at the root, a bioformats2raw layout of several, or an HCS plate, with
``OME/METADATA.ome.xml`` describing a store of several images.

Frames are assembled into whole write units (a shard, or a chunk when unsharded) before they go
to tensorstore, so a chunk that spans several frames is encoded once, not rewritten per frame.

With ``levels`` > 1, each image holds arrays ``0`` .. ``levels-1``: every frame's lower levels
are computed from it on the downsampling threads (`pyramid`) into units of their own, which
are written as soon as their last plane is computed (partial ones at finalize).
"""

from __future__ import annotations

import os
import time
from collections import deque
from operator import floordiv, mul, sub
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorstore as ts

from .. import __version__
from .. import format_metadata as fm
from ..chunk_buffers import MAX_PENDING_BYTES, MAX_PENDING_WRITES, write_unit
from ..router import FrameRouter
from ..safe_files import NO_SPACE
from ..storage import LocalStore, open_store, storage_error
from . import pyramid
from .base import ArrayBackend, BackendError, prepare_output
from .blocks import Block, BufferPool
from .zarr_levels import LowerLevels
from .zarr_metadata import (ATTR_NAMESPACE, DATASET, ZarrLayout, check_global_namespace, join,
                            multiscale_transforms)

__all__ = ["ATTR_NAMESPACE", "DATASET", "TensorstoreZarrBackend", "array_driver",
           "multiscale_transforms"]

#: bytes kept free after each image group's first attributes: the final ones (acquisition
#: summary) are written in place when the disk is full by then
GROUP_RESERVE = 4096


def array_driver(version: str) -> str:
    """tensorstore's driver for the arrays of an OME-Zarr store of NGFF ``version``."""
    return "zarr3" if version == "0.5" else "zarr"


class TensorstoreZarrBackend(ArrayBackend):
    """Writes an OME-Zarr store with tensorstore's zarr3 (NGFF 0.5) or zarr (0.4) driver."""

    def __init__(self, settings, *, s3_endpoint: str | None = None) -> None:
        super().__init__(settings)
        #: where the objects go: a local directory or an S3 bucket (`storage`)
        self.store = open_store(settings.output_path, s3_endpoint)
        self._local = isinstance(self.store, LocalStore)
        self.root = Path(settings.output_path) if self._local else None
        self.layout = ZarrLayout(settings, self.store)
        self._image_paths = self.layout.image_paths
        self._sharded = any(d.shard_size_chunks for d in self.storage_dims)
        # a write unit never exceeds the axis, so a complete unit can always fill up
        self._unit = list(write_unit(settings))
        self.levels: int = self.layout.levels
        self.downsampling: str = self.layout.downsampling
        #: (y, x) of each level's planes, level 0 first
        self.level_shapes = pyramid.level_shapes(self.frame_shape, self.levels)
        self._pool = BufferPool((*self._unit, *self.frame_shape), self.dtype,
                                keep_bytes=MAX_PENDING_BYTES)
        self._held = 0  # lent frames held in units still being assembled
        self._copied = 0  # frames copied into chunk buffers, not lent (`timings`)
        self._waited_s = 0.0  # time spent waiting for writes in flight (`timings`)
        self._arrays: list[ts.TensorStore] = []  # level 0 of each position
        self._blocks: list[dict[tuple[int, ...], Block]] = [{} for _ in self.positions]
        self._lower = LowerLevels(self, MAX_PENDING_BYTES) if self.levels > 1 else None
        self._pending: deque[_PendingWrite] = deque()
        self._pending_bytes = 0
        self._capacity = 0  # allocated extent of the grow axis (all positions alike)
        self._root_id: tuple[int, int] | None = None  # (device, inode) of the store we made
        #: attributes the user set with update_metadata(), by position
        self.user_attributes: dict[int, dict[str, Any]] = {}
        self._context = ts.Context(self.store.context())
        self._router: FrameRouter | None = None  # frame numbers, for the errors that name them

    def use_arena(self, arena: Any) -> None:
        """Keep the chunk buffers in ``arena`` (shared memory that outlives this process)."""
        self._pool.arena = arena

    # ---- layout and metadata ----

    @property
    def paths(self) -> list[str]:
        return [self.store.url_of(p) for p in self._image_paths]

    @property
    def image_groups(self) -> list[str]:
        """Each position's image group, relative to the store ("" when the root is it)."""
        return list(self._image_paths)

    def _image_attributes(self, pos: int) -> dict[str, Any]:
        attrs = self.layout.image_attributes(pos, self.storage_dims, self.dtype)
        # "version", as ome-writers writes its own there (readers look for the key)
        extra: dict[str, Any] = {"version": __version__,
                                 "writer": f"ome-writers-service {__version__}"}
        p = self.positions[pos]
        stage = {k: v for k, v in p.model_dump().items() if v is not None and k != "name"}
        if stage:
            extra["position"] = {"name": p.name, **stage}
        table = self.frame_metadata[pos]
        if table:  # ome-writers' layout: rows in arrival order, storage-order index list
            extra["frame_metadata"] = [
                {**md, "storage_index": list(idx)} for idx, md in table.items()
            ]
        if self.acquisition_summary:
            extra["acquisition"] = dict(self.acquisition_summary)
        s = self.settings
        if s.instrument is not None:  # NGFF has no instrument fields: kept alongside
            extra["instrument"] = s.instrument.model_dump(mode="json", exclude_none=True)
        if s.acquisition_date is not None:
            extra["acquisition_date"] = s.acquisition_date.isoformat()
        attrs[ATTR_NAMESPACE] = extra
        root_image = pos == 0 and not self._image_paths[0]
        if root_image:  # the image is the root: global metadata here
            attrs.update(self.global_metadata)
        user = self.user_attributes.get(pos)
        if user is not None:  # set by update_metadata(): the user's, with what we keep current
            attrs = fm.merge_zarr_attributes(user, attrs,
                                             self.global_metadata if root_image else ())
        return attrs

    def get_metadata(self) -> dict[str, dict[str, Any]]:
        keys = fm.zarr_keys(self._image_paths)
        return {k: self._image_attributes(i) for i, k in enumerate(keys)}

    def set_global_metadata(self, namespace: str, metadata) -> None:
        """Also written into the root group's attributes at once (as ome-writers), so a
        reader sees it during the acquisition; finalize writes it again."""
        check_global_namespace(self.settings, namespace)
        super().set_global_metadata(namespace, metadata)
        if self._arrays and not self._finalized:  # created, not yet finalized
            try:
                attrs = self.layout.read_attributes("")
                attrs[namespace] = self.global_metadata[namespace]
                self.layout.write_group("", attrs)
            except (OSError, ValueError) as e:
                raise BackendError(f"{self.store.name}: cannot write global metadata "
                                   f"{namespace!r}: {storage_error(e)}") from e

    def update_metadata(self, metadata) -> None:
        """Each group's attributes are replaced at once and kept at finalize (the per-frame
        table and acquisition summary under ``ome_writers``, and global metadata, stay
        ours); METADATA.ome.xml follows the names they give."""
        for pos, attrs in fm.check_zarr_update(metadata, fm.zarr_keys(self._image_paths)).items():
            self.user_attributes[pos] = attrs
            self.layout.write_group(self._image_paths[pos], self._image_attributes(pos))
        self.layout.write_ome_xml()

    def wait_for_writes(self) -> None:
        for pending in tuple(self._pending):
            pending.future.exception()  # waits; a failed write stays queued for write()

    def _write_hierarchy(self) -> None:
        self.layout.write_hierarchy(self.global_metadata)
        for i, path in enumerate(self._image_paths):
            # room for the acquisition summary finalize adds, also on a disk full by then
            self.layout.write_group(path, self._image_attributes(i), reserve=GROUP_RESERVE)

    # ---- arrays ----

    def _level_chunks(self, level: int) -> list[int]:
        """The chunk shape of a resolution level's array (its planes ``level_shapes``)."""
        dims = self.storage_dims
        counts = [*(d.count for d in dims[:-2]), *self.level_shapes[level]]
        chunk = [d.chunk_size or (n if j >= len(dims) - 2 else 1)
                 for j, (d, n) in enumerate(zip(dims, counts))]
        return [min(c, n) if n else c for c, n in zip(chunk, counts)]

    def level_grid(self, level: int) -> list[int]:
        """The shape of the stored objects of a level's array: a shard, or a chunk."""
        chunk = self._level_chunks(level)
        if not self._sharded:
            return chunk
        return [c * (d.shard_size_chunks or 1) for c, d in zip(chunk, self.storage_dims)]

    def _array_spec(self, image: str, level: int = 0) -> dict[str, Any]:
        """The zarr array of an image group's resolution level."""
        dims = self.storage_dims
        chunk = self._level_chunks(level)
        comp = self.settings.compression
        shape = [0 if n is None else n for n in self.outer_shape] + list(self.level_shapes[level])
        kvstore = self.store.kvstore(join(image, str(level)))
        if self.layout.zarr_format == 2:
            return self._array_spec_v2(kvstore, shape, chunk, comp)
        clevel = self.settings.codec_level
        inner: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
        if comp in ("blosc-zstd", "blosc-lz4"):
            inner.append({"name": "blosc", "configuration": {
                "cname": comp.split("-")[1], "clevel": clevel, "shuffle": "shuffle",
                "typesize": self.dtype.itemsize, "blocksize": 0}})
        elif comp == "zstd":
            inner.append({"name": "zstd", "configuration": {"level": clevel, "checksum": False}})
        grid = self.level_grid(level)
        if self._sharded:
            codecs = [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": chunk, "codecs": inner,
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                 {"name": "crc32c"}],
                "index_location": "end"}}]
        else:
            codecs = inner
        return {
            "driver": "zarr3",
            "kvstore": kvstore,
            "metadata": {
                "shape": shape,
                "data_type": self.dtype.name,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": grid}},
                "chunk_key_encoding": {"name": "default"},
                "fill_value": 0,
                "codecs": codecs,
                "dimension_names": [d.name for d in dims],
            },
            "create": True,
            # a unit is on disk as a file even when all its pixels are 0: `recover` counts the
            # frames written by the units it finds
            "store_data_equal_to_fill_value": True,
        }

    def _array_spec_v2(self, kvstore: dict[str, Any], shape: list[int], chunk: list[int],
                       comp: str | None) -> dict[str, Any]:
        """A zarr v2 array (NGFF 0.4): "/" between chunk indices, as NGFF 0.4 requires."""
        compressor = None
        level = self.settings.codec_level
        if comp in ("blosc-zstd", "blosc-lz4"):
            compressor = {"id": "blosc", "cname": comp.split("-")[1], "clevel": level,
                          "shuffle": 1, "blocksize": 0}
        elif comp == "zstd":
            compressor = {"id": "zstd", "level": level}
        return {
            "driver": "zarr",
            "kvstore": kvstore,
            "metadata": {
                "zarr_format": 2, "shape": shape, "chunks": chunk,
                "dtype": self.dtype.newbyteorder("<").str, "compressor": compressor,
                "fill_value": 0, "order": "C", "filters": None, "dimension_separator": "/",
            },
            "create": True,
            "store_data_equal_to_fill_value": True,  # (see the zarr v3 spec)
        }

    def create(self) -> None:
        plate = self.settings.plate
        if plate is not None:
            outside = [p.name for p in self.positions if p.plate_row not in plate.row_names
                       or p.plate_column not in plate.column_names]
            if outside:
                raise ValueError(
                    f"{self.store.name}: positions {outside} lie outside the plate's rows "
                    f"{plate.row_names} / columns {plate.column_names}; an OME-Zarr plate "
                    "lists every well it holds: add their rows/columns to the Plate")
        if self._local:
            prepare_output(self.root, self.settings.overwrite, directory=True)
        else:
            try:
                self.store.prepare(self.settings.overwrite)  # type: ignore[attr-defined]
            except ValueError as e:
                raise BackendError(f"cannot create {self.store.name}: {storage_error(e)}") from e
        try:
            if self._local:  # ours: never an existing name (a symlink planted meanwhile)
                os.mkdir(self.root)
            self._write_hierarchy()
            for path in self._image_paths:
                spec = self._array_spec(path)
                self._arrays.append(ts.open(spec, context=self._context).result())
            if self._lower is not None:
                self._lower.create()
            self.layout.write_ome_xml()
            if self._local:
                st = self.root.stat()
                self._root_id = (st.st_dev, st.st_ino)
        except OSError as e:
            raise BackendError(f"cannot create {self.store.name}: {e}") from e
        except ValueError as e:  # tensorstore reports bad specs and I/O failures as ValueError
            raise BackendError(f"cannot create the arrays of {self.store.name}: "
                               f"{storage_error(e)}") from e

    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self._capacity:
            return
        unit = self._unit[self.grow_axis]  # type: ignore[index]
        new = max(needed, self._capacity + self._capacity // 8)
        new = -(-new // unit) * unit
        self._resize_all(self.grow_axis, new, expand=True)  # type: ignore[arg-type]
        self._capacity = new

    def _resize_all(self, ax: int, extent: int, *, expand: bool) -> None:
        for arrays in [self._arrays, *(self._lower.arrays if self._lower else ())]:
            for i, arr in enumerate(arrays):
                shape = list(arr.shape)
                shape[ax] = extent  # type: ignore[index]
                arrays[i] = arr.resize(
                    exclusive_max=shape, resize_metadata_only=True,
                    expand_only=expand, shrink_only=not expand,
                ).result()

    def write(self, position, index, frame, metadata=None) -> None:
        self._admit(position, index, metadata)
        if self._lower is not None:  # the levels are computed from a copy of the frame
            self._lower.add_copy(position, index, frame)
        key, block, local = self._block_for(position, index)
        block.put(local, frame)  # copied: the caller may reuse its buffer
        # counted once in its unit, before the unit may go to tensorstore: a write that fails
        # later takes it off again (`_lost`), even when an older one's failure is raised here
        self.frames_written += 1
        self._after_put(position, key, block)

    def write_borrowed(self, position, index, frame, metadata, done) -> None:
        self._admit(position, index, metadata)
        if self._lower is not None:  # the levels are computed from the lent frame too
            done = pyramid.joined(done, 2)
            self._lower.add(position, index, frame, done)
        key, block, local = self._block_for(position, index)
        held = len(block.lent)
        # hold lent frames within half the lender's budget, so that the client always has
        # slots left to send the rest of the units being assembled
        if not (self._held < self.lend_limit // 2 and block.lend(local, frame, done)):
            block.put(local, frame)
            done()
            self._copied += 1
        self._held += len(block.lent) - held
        self.frames_written += 1  # (see write)
        self._after_put(position, key, block)

    def timings(self) -> dict[str, float]:
        """Frames copied into a chunk buffer as they came, not lent (the lend budget spent,
        or the frame not where a write straight from the ring needs it; lent frames copied
        later are not counted), and the time spent waiting for tensorstore's writes in
        flight (the disk, or its threads, behind)."""
        return {"frames_copied": self._copied, "write_wait_s": round(self._waited_s, 4)}

    def give_back_held(self) -> None:
        if not self._held:
            return
        for blocks in self._blocks:
            for block in blocks.values():
                if block.lent:  # into its chunk buffer: in the arena, when there is one
                    self._held -= block.copy_lent()

    def _admit(self, position: int, index: tuple[int, ...], metadata) -> None:
        """What every frame does before its pixels move: surface failed writes, note it."""
        self._raise_failed_writes()
        self._note_index(index)
        self._note_metadata(position, index, metadata)
        if self.grow_axis is not None:
            self._ensure_capacity(index[self.grow_axis] + 1)

    def skip(self, position, index) -> None:
        super().skip(position, index)
        if self.grow_axis is not None:
            self._ensure_capacity(index[self.grow_axis] + 1)
        key, block, local = self._block_for(position, index)
        held = len(block.lent)
        block.skip(local)
        self._held += len(block.lent) - held
        self._after_put(position, key, block)
        if self._lower is not None:
            self._lower.skip(position, index)

    def _block_for(self, position: int, index: tuple[int, ...], level: int = 0
                   ) -> tuple[tuple[int, ...], Block, tuple[int, ...]]:
        """The unit ``index`` belongs to (created on its first plane) at a resolution level:
        its key, the unit, and the plane in it. (map() with operators: this runs for every
        frame.)"""
        key = tuple(map(floordiv, index, self._unit))
        blocks = self._blocks[position] if level == 0 else \
            self._lower.blocks[level - 1][position]  # type: ignore[union-attr]
        block = blocks.get(key)
        if block is None:
            origin = tuple(map(mul, key, self._unit))
            shape = tuple(
                u if n is None else min(u, n - o)
                for u, n, o in zip(self._unit, self.outer_shape, origin)
            )
            pool = self._pool if level == 0 else \
                self._lower.pools[level - 1]  # type: ignore[union-attr]
            block = blocks[key] = Block(origin, shape, pool, position)
        return key, block, tuple(map(sub, index, block.origin))

    def _after_put(self, position: int, key: tuple[int, ...], block: Block) -> None:
        if block.complete:
            del self._blocks[position][key]
            self._submit_block(position, block)

    def _submit_block(self, position: int, block: Block) -> None:
        self._held -= len(block.lent)
        frames = block.frames
        written = self._write_unit(self._arrays[position], block)
        if written is not None:
            fut, nbytes, calls = written
            self._track(_PendingWrite(fut, position, block.origin, block.mask, nbytes, frames,
                                      calls))

    def _write_unit(self, arr: ts.TensorStore, block: Block
                    ) -> tuple[Any, int, list] | None:
        """Start writing a complete (or, at finalize, partial) unit into ``arr`` (from any
        thread): the write's future, its bytes and what hands its pixels back (each runs
        once, when the write is done: by the future's callback or by whoever waits for it
        first), or None when no plane holds a frame (the fill value stands for the unit)."""
        data, on_written = block.materialize()
        if data is None:
            return None
        region = tuple(slice(o, o + n) for o, n in zip(block.origin, block.shape))
        if self.grow_axis is not None:  # a partial last block at finalize may overhang the extent
            ax = self.grow_axis
            stop = min(region[ax].stop, arr.shape[ax])
            region = (*region[:ax], slice(region[ax].start, stop), *region[ax + 1:])
            data = data[(slice(None),) * ax + (slice(0, stop - block.origin[ax]),)]
        # tensorstore encodes straight from the buffer or the lent frames; both are handed
        # back once the write is done (by its callback, or at the latest when the write
        # leaves the pending queue: so the buffers in use stay within chunk_buffers' bound)
        fut = arr[region].write(data, can_reference_source_data_indefinitely=True)
        calls = [_once(callback) for callback in on_written]
        for call in calls:
            fut.add_done_callback(lambda f, c=call: c(f.exception() is None))
        return fut, data.nbytes, calls

    def track_level_write(self, level: int, position: int, origin: tuple[int, ...], fut: Any,
                          nbytes: int, calls: list) -> None:
        """A lower resolution level's unit write (`zarr_levels`), waited for as level 0's
        are (its frames count at level 0)."""
        self._track(_PendingWrite(fut, position, origin, np.zeros(0, bool), nbytes, 0, calls,
                                  level))

    def _track(self, write: _PendingWrite) -> None:
        self._pending.append(write)
        self._pending_bytes += write.nbytes
        while len(self._pending) > MAX_PENDING_WRITES or (
                len(self._pending) > 1 and self._pending_bytes > MAX_PENDING_BYTES) or (
                self._pending and self._pending[0].future.done()):
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        write = self._pending.popleft()
        self._pending_bytes -= write.nbytes
        try:
            if not write.future.done():
                started = time.perf_counter()
                write.future.exception()  # waits (a failure is raised just below)
                self._waited_s += time.perf_counter() - started
            write.future.result()
        except Exception as e:  # noqa: BLE001 - tensorstore raises ValueError/OSError variants
            for call in write.calls:
                call(False)
            raise self._lost(write, e) from e
        for call in write.calls:
            call(True)

    def _lost(self, write: _PendingWrite, e: Exception) -> BackendError:
        """A unit that could not be written: its frames no longer count as written, their
        per-frame metadata is dropped (it would describe frames not on disk), and the error
        names them. (A lower resolution level's unit: the frames are at level 0; the error
        says which level lacks them.)"""
        if write.level:
            return BackendError(f"writing resolution level {write.level} of "
                                f"{self.paths[write.position]} at index {write.origin} failed: "
                                f"{_reason(e)} (the frames are at full resolution)")
        self.frames_written -= write.frames  # accepted, but not on disk
        if self._lower is not None:  # nor may its lower levels show them (finalize)
            self._lower.lost.append((write.position, write.origin))
        planes = [tuple(o + i for o, i in zip(write.origin, local))
                  for local in np.argwhere(write.mask)]
        for index in planes:
            self.frame_metadata[write.position].pop(index, None)
        if self._router is None:
            self._router = FrameRouter(self.settings)
        numbers = sorted(self._router.frame_number(write.position, idx) for idx in planes)
        err = BackendError(f"writing {self.paths[write.position]} at index {write.origin} "
                           f"failed: {_reason(e)}; frame{'s' if len(numbers) > 1 else ''} "
                           f"{_runs(numbers)} {'are' if len(numbers) > 1 else 'is'} not on disk")
        err.names_frames = True  # type: ignore[attr-defined]  # (not the frame being handled)
        return err

    def _raise_failed_writes(self) -> None:
        if self._lower is not None:
            self._lower.collect()
        while self._pending and self._pending[0].future.done():
            self._wait_oldest()

    def read(self, position, index) -> np.ndarray | None:
        key = tuple(i // u for i, u in zip(index, self._unit))
        block = self._blocks[position].get(key)
        if block is not None:  # still being assembled
            plane = block.plane(tuple(i - o for i, o in zip(index, block.origin)))
            if plane is not None:
                return plane
        arr = self._arrays[position]
        if any(i >= n for i, n in zip(index, arr.shape)):
            return None
        return arr[index].read().result()

    def finalize(self) -> None:
        if self._finalized:
            return
        failed: list[BackendError] = []  # the metadata is written even so, then we raise
        for pos, blocks in enumerate(self._blocks):
            for key in sorted(blocks):  # partial units: the rest keeps the fill value
                try:
                    self._submit_block(pos, blocks.pop(key))
                except BackendError as e:
                    failed.append(e)
        if self._lower is not None:
            try:
                self._lower.flush()
            except BackendError as e:
                failed.append(e)
        while self._pending:
            try:
                self._wait_oldest()
            except BackendError as e:
                failed.append(e)
        self.recount_summary()  # writes that failed just now: their frames are not on disk
        if self._lower is not None and self._lower.lost:
            failed += [BackendError(e) for e in self._lower.erase_lost()]
        try:
            self._check_still_there()
            final = self.current_shape()
            for ax in {self.grow_axis, self.first_axis if self.final_extent is not None else None}:
                if ax is not None and final[ax] != self._arrays[0].shape[ax]:
                    self._shrink_all(ax, final[ax])
            for i, path in enumerate(self._image_paths):
                self._write_final_group(i, path, failed)
            if self.layout.is_collection:
                self.layout.rewrite_root(self.global_metadata)
            self.layout.write_ome_xml()  # from the final shapes and attributes
        except (OSError, ValueError) as e:
            raise BackendError(f"finalizing {self.store.name} failed: {storage_error(e)}") from e
        self._finalized = True
        if failed:
            raise failed[0]

    def _shrink_all(self, ax: int, extent: int) -> None:
        """The arrays cut to their final extent; on a full disk (tensorstore cannot write a
        new metadata file) by rewriting each array's metadata document in place."""
        try:
            self._resize_all(ax, extent, expand=False)
            return
        except (ValueError, OSError):
            pass
        for path in self._image_paths:
            for level in range(self.levels):
                key = self.layout.array_document(path, level)
                meta = self.store.read_json(key)
                meta["shape"][ax] = extent
                self.store.write_json(key, meta)

    def _write_final_group(self, i: int, path: str, failed: list[BackendError]) -> None:
        """An image group's final attributes. When the disk is full and they do not fit the
        room kept for them, the per-frame table is left out (the journal, kept, still has it
        for `recover`) so that the acquisition summary is there."""
        attrs = self._image_attributes(i)
        try:
            self.layout.write_group(path, attrs)
        except OSError as e:
            rows = attrs.get(ATTR_NAMESPACE, {}).pop("frame_metadata", None)
            if e.errno not in NO_SPACE or rows is None:
                raise
            self.layout.write_group(path, attrs)
            failed.append(BackendError(
                f"{self.paths[i]}: the per-frame metadata of {len(rows)} frames could not be "
                f"written ({_reason(e)}); the journal keeps it: free space and run "
                f"'ome-writers-service recover {self.store.name}'"))

    def _check_still_there(self) -> None:
        """A store deleted or replaced under us would take chunks with it, while every write
        into the recreated directories succeeds: say so instead of reporting success."""
        try:
            if self._local:
                st = self.root.stat()
                intact = (st.st_dev, st.st_ino) == self._root_id
            else:
                intact = True
            intact = intact and all(self.store.exists(self.layout.array_document(path))
                                    for path in self._image_paths)
        except (OSError, ValueError):
            intact = False
        if not intact:
            raise BackendError(f"{self.store.name} was removed or replaced while it was being "
                               "written: frames written before that are lost")


class _PendingWrite(NamedTuple):
    """A unit handed to tensorstore and not yet known to be written."""

    future: Any
    position: int
    origin: tuple[int, ...]
    mask: np.ndarray  #: planes holding a frame
    nbytes: int
    frames: int
    calls: list  #: hand the buffer / lent frames back (each runs once: `_once`)
    level: int = 0  #: the resolution level written (lower ones: `zarr_levels`)


def _once(callback):
    """``callback(ok)`` that runs once, whichever thread calls it first."""
    pending = [callback]

    def run(ok: bool) -> None:
        try:
            fn = pending.pop()  # atomic: one caller gets it
        except IndexError:
            return
        fn(ok)
    return run


def _runs(numbers: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    out: list[str] = []
    for n in numbers:
        if out and int(out[-1].split("-")[-1]) == n - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def _reason(e: BaseException) -> str:
    """A write's failure in words; 'no space left' said plainly when that is the cause."""
    text = str(e)
    if getattr(e, "errno", None) in NO_SPACE or "No space left" in text or "ENOSPC" in text:
        return f"no space left on the device ({text})"
    return text
