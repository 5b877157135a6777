"""The metadata of an OME-Zarr store, in NGFF 0.5 (zarr v3) or 0.4 (zarr v2).

`ZarrLayout` says where each image's group goes (named as ome-writers 0.3.2 names them:
`schema.zarr_image_groups`) and what the groups above it hold:

* one position, no plate: the root group is the image;
* several positions: a bioformats2raw layout, one image group per position (``Pos0``, ...),
  and an ``OME`` group whose ``series`` lists them;
* a plate: an HCS plate, ``<row>/<column>/<position name>`` per position, marked as a
  bioformats2raw layout too, with a matching ``series`` (NGFF: for readers unaware of plates).

A store of several images carries ``OME/METADATA.ome.xml``: one OME-XML document describing
every image (names, channels, physical sizes, stage positions, plate, instrument), with
``MetadataOnly`` pixels, as bioformats2raw writes it. ome-zarr-py's ``find_multiscales``
(``ome_zarr view``, napari-ome-zarr) lists the images from it. `write_ome_xml` builds it from
the settings and what the store's zarr metadata says now (array shapes, image names, channel
labels, per-frame metadata, acquisition summary, global metadata), so that it agrees with
them whenever it is written: at creation, at close, after update_metadata() and by recover.

Each image holds its resolution levels as arrays ``0`` .. ``levels-1`` (``OmeZarrFormat(levels=,
downsampling=)``); `image_attributes` is the one place their multiscales datasets are stated,
for both NGFF versions. Every document goes through a `storage.Store`: a local directory or an
S3 bucket.

NGFF 0.5 keeps its metadata under ``attributes["ome"]`` of ``zarr.json``; 0.4 at the top of
``.zattrs`` (beside ``.zgroup``), with ``version`` inside ``multiscales``, ``plate`` and
``well``. Our own keys (``ome_writers``, global metadata namespaces) sit at the top of the
attributes in both.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..schema import ZARR_ONLY_DTYPES, AcquisitionSettings, Dimension, zarr_image_groups
from ..storage import Store, open_store
from ..units import ngff_unit
from . import pyramid

#: the full-resolution array of each image group
DATASET = "0"
#: Custom attribute (outside NGFF's keys) holding what OME-Zarr has no field for.
ATTR_NAMESPACE = "ome_writers"
#: the OME-XML document of a multi-image store, in its OME group
OME_XML = "OME/METADATA.ome.xml"
#: attribute keys NGFF 0.4 puts at the top of .zattrs (global metadata may not use them)
NGFF_04_KEYS = ("multiscales", "omero", "plate", "well", "labels", "image-label",
                "bioformats2raw.layout", "series")

def check_global_namespace(settings: AcquisitionSettings, namespace: str) -> None:
    """Refuse a global metadata namespace that would overwrite NGFF 0.4's own keys (0.4
    keeps its metadata at the top of the attributes, where global metadata goes too)."""
    fmt = settings.format
    if getattr(fmt, "version", None) == "0.4" and namespace in NGFF_04_KEYS:
        raise ValueError(f"global metadata namespace {namespace!r} is an OME-Zarr 0.4 "
                         "metadata key (0.4 keeps its metadata at the top of the "
                         "attributes); choose another")


_DEFAULT_COLORS = ["00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF", "FFFFFF"]


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def join(*parts: str) -> str:
    """A key within the store ("" is its root)."""
    return "/".join(p for p in parts if p)


def multiscale_transforms(dims: list[Dimension], levels: int, method: str
                          ) -> list[tuple[list[float], list[float] | None]]:
    """(scale, translation or None) of each resolution level of an image with storage axes
    ``dims`` (y, x last): the coordinate transformations of its multiscales datasets."""
    scale = [float(d.scale) if d.scale is not None else 1.0 for d in dims]
    translation = [float(d.translation or 0) for d in dims] \
        if any(d.translation for d in dims) else None
    return [pyramid.level_transforms(scale, translation, k, method) for k in range(levels)]


class ZarrLayout:
    """Where the images of an OME-Zarr store go, and the NGFF documents of its groups."""

    def __init__(self, settings: AcquisitionSettings, store: Store | None = None) -> None:
        self.settings = settings
        self.version: str = settings.format.version
        #: where the documents go: a local directory or an S3 bucket
        self.store = store if store is not None else open_store(settings.output_path)
        self.levels: int = settings.format.levels
        self.downsampling: str = settings.format.downsampling
        self.positions = settings.positions
        #: each position's image group, relative to the store ("" when the root is it)
        self.image_paths = zarr_image_groups(settings)
        if self.version == "0.5":
            from yaozarrs import v05 as ngff
        else:
            from yaozarrs import v04 as ngff
        self._ngff = ngff

    @property
    def is_collection(self) -> bool:
        """Several images (or a plate): a bioformats2raw layout with an OME group."""
        return self.image_paths != [""]

    @property
    def zarr_format(self) -> int:
        return 3 if self.version == "0.5" else 2

    # ---- groups on disk ----

    def write_group(self, rel: str, attributes: Mapping[str, Any], *, reserve: int = 0) -> None:
        """Create (or replace) the group ``rel`` with these attributes: each document whole
        (locally renamed over the old one, on S3 one PUT), so a reader never sees half
        (``reserve``: bytes of room after them for the final attributes, on a local disk that
        may be full by then)."""
        if self.zarr_format == 3:
            self.store.write_json(join(rel, "zarr.json"), {
                "zarr_format": 3, "node_type": "group", "attributes": dict(attributes)},
                reserve=reserve)
        else:
            self.store.write_json(join(rel, ".zgroup"), {"zarr_format": 2})
            self.store.write_json(join(rel, ".zattrs"), dict(attributes), reserve=reserve)

    def read_attributes(self, rel: str) -> dict[str, Any]:
        """The attributes of the group ``rel`` (a v2 group without ``.zattrs``: none)."""
        if self.zarr_format == 3:
            return self.store.read_json(join(rel, "zarr.json")).get("attributes") or {}
        key = join(rel, ".zattrs")
        return self.store.read_json(key) if self.store.exists(key) else {}

    def array_document(self, rel: str, level: int = 0) -> str:
        """The key of the metadata document of an image's resolution level array."""
        return join(rel, str(level), "zarr.json" if self.zarr_format == 3 else ".zarray")

    def chunk_indices(self, rel: str, level: int = 0) -> list[list[int]]:
        """Grid index of every chunk (or shard) object stored for an image's level: zarr v3
        keys ``c/<i0>/<i1>/...``, v2 (NGFF 0.4's "/" separator) ``<i0>/<i1>/...``."""
        array = join(rel, str(level))
        prefix = join(array, "c") + "/" if self.zarr_format == 3 else array + "/"
        out = []
        for key in self.store.keys(prefix):
            parts = key[len(prefix):].split("/")
            if all(p.isdigit() for p in parts):
                out.append([int(p) for p in parts])
        return out

    def ngff(self, attributes: Mapping[str, Any]) -> Mapping[str, Any]:
        """The NGFF part of a group's attributes."""
        return (attributes.get("ome") or {}) if self.version == "0.5" else attributes

    def _wrap(self, ngff: Mapping[str, Any]) -> dict[str, Any]:
        """NGFF metadata as a group's attributes hold it."""
        if self.version == "0.5":
            return {"ome": {"version": "0.5", **{k: v for k, v in ngff.items()
                                                 if k != "version"}}}
        return dict(ngff)

    # ---- the documents ----

    def image_attributes(self, position: int, storage_dims: list[Dimension],
                         dtype: np.dtype) -> dict[str, Any]:
        """The NGFF attributes of a position's image group (multiscales, omero)."""
        ngff = self._ngff
        dims = storage_dims
        datasets = []
        for level, (scale, translation) in enumerate(multiscale_transforms(
                dims, self.levels, self.downsampling)):
            transforms: list[Any] = [ngff.ScaleTransformation(scale=scale)]
            if translation is not None:
                transforms.append(ngff.TranslationTransformation(translation=translation))
            datasets.append(ngff.Dataset(path=str(level), coordinateTransformations=transforms))
        multiscale = ngff.Multiscale(
            name=self.settings.image_name_of(self.positions[position]),
            axes=[self._axis(d) for d in dims],
            datasets=datasets,
            type=self.downsampling if self.levels > 1 else None,
        )
        image = ngff.Image(multiscales=[multiscale], omero=self._omero(dims, dtype))
        return self._wrap(_dump(image))

    def _axis(self, d: Dimension) -> Any:
        ngff = self._ngff
        unit = ngff_unit(d.unit)
        if d.type == "time":
            return ngff.TimeAxis(name=d.name, type="time", unit=unit)
        if d.type == "space":
            return ngff.SpaceAxis(name=d.name, type="space", unit=unit)
        if d.type == "channel":
            return ngff.ChannelAxis(name=d.name, type="channel")
        return ngff.CustomAxis(name=d.name, type=d.type, unit=d.unit)  # "other", as 0.3.2

    def _omero(self, dims: list[Dimension], dtype: np.dtype) -> Any:
        ngff = self._ngff
        cdim = next((d for d in dims if d.type == "channel"), None)
        if cdim is None:
            return None
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            lo, hi = float(info.min), float(info.max)
        else:
            lo, hi = 0.0, 1.0
        names = cdim.channels or []
        chans = []
        for i in range(int(cdim.count or len(names))):
            ch = names[i] if i < len(names) else None
            color = ch.color.as_hex(format="long").lstrip("#").upper()[:6] \
                if ch and ch.color else _DEFAULT_COLORS[i % len(_DEFAULT_COLORS)]
            chans.append(ngff.OmeroChannel(
                label=ch.name if ch else f"Channel {i}", color=color, active=True,
                window=ngff.OmeroWindow(start=lo, end=hi, min=lo, max=hi),
            ))
        return ngff.Omero(channels=chans)

    def write_hierarchy(self, global_metadata: Mapping[str, Any]) -> None:
        """The groups above the images: plate and wells, or the bioformats2raw root; and the
        OME group listing the images (``series``)."""
        if not self.is_collection:
            return
        ngff = self._ngff
        bf2raw = {"bioformats2raw.layout": 3}
        s = self.settings
        if s.plate is not None:
            rows, cols = s.plate.row_names, s.plate.column_names
            wells: dict[tuple[str, str], list[str]] = {}
            for path in self.image_paths:
                r, c, f = path.split("/")
                wells.setdefault((r, c), []).append(f)
            plate = ngff.PlateDef(
                name=s.plate.name,
                rows=[ngff.Row(name=r) for r in rows],
                columns=[ngff.Column(name=c) for c in cols],
                wells=[ngff.PlateWell(path=f"{r}/{c}", rowIndex=rows.index(r),
                                      columnIndex=cols.index(c)) for (r, c) in wells],
                field_count=max(len(f) for f in wells.values()),
            )
            self.write_group("", {**self._wrap({"plate": _dump(plate), **bf2raw}),
                                  **global_metadata})
            for (r, c), fields in wells.items():
                self.write_group(r, {})
                well = ngff.WellDef(images=[ngff.FieldOfView(path=f) for f in fields])
                self.write_group(f"{r}/{c}", self._wrap({"well": _dump(well)}))
        else:
            self.write_group("", {**self._wrap(bf2raw), **global_metadata})
        self.write_group("OME", self._wrap({"series": list(self.image_paths)}))

    def rewrite_root(self, global_metadata: Mapping[str, Any]) -> None:
        """The root of a multi-image store: its NGFF metadata and the global metadata."""
        attrs = self.read_attributes("")
        ngff = {"ome": attrs["ome"]} if self.version == "0.5" else \
            {k: v for k, v in attrs.items() if k in NGFF_04_KEYS}
        self.write_group("", {**ngff, **global_metadata})

    def global_metadata_of(self, root_attributes: Mapping[str, Any]) -> dict[str, Any]:
        """The global metadata namespaces in a root group's attributes."""
        return {k: v for k, v in root_attributes.items()
                if k not in ("ome", ATTR_NAMESPACE, *NGFF_04_KEYS) and isinstance(v, Mapping)}

    def array_shape(self, position: int) -> list[int]:
        """The full-resolution array's shape as its zarr metadata states it now."""
        doc = self.store.read_json(self.array_document(self.image_paths[position]))
        return list(doc["shape"])

    # ---- OME/METADATA.ome.xml ----

    def ome_xml_impossible(self) -> str | None:
        """Why OME-XML cannot describe these images, if it cannot: 64-bit integer pixels
        (no PixelType), or a channel and a custom axis together (one C axis for both)."""
        if self.settings.dtype in ZARR_ONLY_DTYPES:
            return f"OME-XML has no PixelType for {self.settings.dtype}"
        types = [d.type for d in self.settings.storage_dimensions]
        if "channel" in types and "other" in types:
            return "OME-XML has one C axis for both a channel and a custom axis"
        return None

    def write_ome_xml(self) -> None:
        """Write ``OME/METADATA.ome.xml`` of a multi-image store from the settings and the
        store's zarr metadata as it is now (nothing for a single image, nor for images
        OME-XML cannot describe: `ome_xml_impossible`)."""
        if not self.is_collection or self.ome_xml_impossible():
            return
        self.store.write_bytes(OME_XML, self.ome_document().to_xml().encode("utf-8"))

    def ome_document(self) -> Any:
        from .ome_xml import SUMMARY_NS, ImageRecord, build_ome

        records = []
        summary = None
        for pos, rel in enumerate(self.image_paths):
            attrs = self.read_attributes(rel)
            ours = attrs.get(ATTR_NAMESPACE) or {}
            summary = summary or ours.get("acquisition")
            name, channels = _names(self.ngff(attrs))
            # (an unbounded array is empty until its first frames: described as one step)
            shape = [max(1, n) for n in self.array_shape(pos)[:-2]]
            records.append(ImageRecord(
                pos, self.positions[pos], shape,
                frame_metadata=_frame_table(ours.get("frame_metadata")),
                metadata_only=True, name=name, channel_names=channels))
        annotations = self.global_metadata_of(self.read_attributes(""))
        if summary:
            annotations[SUMMARY_NS] = summary
        return build_ome(self.settings, records, annotations)


def _names(ngff: Mapping[str, Any]) -> tuple[str | None, list[str | None] | None]:
    """(image name, channel labels) as an image group's NGFF metadata give them."""
    try:
        name = ngff["multiscales"][0].get("name")
    except (KeyError, IndexError, TypeError, AttributeError):
        name = None
    try:
        labels = [c.get("label") for c in ngff["omero"]["channels"]]
    except (KeyError, TypeError, AttributeError):
        labels = None
    return (name if isinstance(name, str) and name else None), labels


def _frame_table(rows: Any) -> dict[tuple[int, ...], dict[str, Any]]:
    """Per-frame metadata rows (ome-writers' layout, ``storage_index`` in each) by index."""
    out = {}
    for row in rows or ():
        if isinstance(row, Mapping) and isinstance(row.get("storage_index"), list):
            out[tuple(int(i) for i in row["storage_index"])] = {
                k: v for k, v in row.items() if k != "storage_index"}
    return out


__all__ = ["ATTR_NAMESPACE", "DATASET", "OME_XML", "ZarrLayout", "join", "multiscale_transforms"]
