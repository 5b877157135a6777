"""OME-XML of a dataset, built with ome-types: one Image per position.

OME-TIFF: pages are written in the order frames arrive; ``TiffData`` elements map each page
(IFD) to its plane (T, C, Z), so any storage order is described exactly. When arrival order
already equals the plane order of ``DimensionOrder``, a single ``TiffData`` covers every page.
OME-Zarr's ``OME/METADATA.ome.xml`` describes its images the same way, with ``MetadataOnly``
pixels (the pixels are in the zarr arrays).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from ome_types import model as m

from .. import __version__
from ..schema import AcquisitionSettings, Dimension, Position
from ..units import ome_unit, unit_kind
from ..user_metadata import KNOWN_FRAME_KEYS, annotation_text, global_annotation_text

# (an OME-Zarr custom axis, which takes the place of the channel axis there, is C)
_LETTER = {"time": "T", "channel": "C", "space": "Z", "other": "C"}
_PIXEL_TYPE = {"float32": "float", "float64": "double"}
FRAME_NS = "ome_writers.frame_metadata"
#: MapAnnotation namespace of the frames expected/written summary
SUMMARY_NS = "ome_writers.acquisition"


def tiff_axes(storage_dims: Sequence[Dimension]) -> list[str]:
    """OME letter (T, C or Z) of each non-frame storage axis, slowest first."""
    return [_LETTER[d.type] for d in storage_dims[:-2]]


def dimension_order(storage_dims: Sequence[Dimension]) -> str:
    """DimensionOrder whose plane raster order equals the storage order of the pages."""
    letters = tiff_axes(storage_dims)[::-1]  # OME lists the fastest-varying first
    # absent axes (size 1) in the first of OME's orders that fits, as ome-writers 0.3.2
    prefix = "XY" + "".join(letters)
    return next(o for o in _OME_ORDERS if o.startswith(prefix))


#: OME's DimensionOrder values, in the schema's order
_OME_ORDERS = ("XYZCT", "XYZTC", "XYCTZ", "XYCZT", "XYTCZ", "XYTZC")


@dataclass
class ImageRecord:
    """What is known of one position's image: its planes' shape and where its pages are."""

    index: int  #: position index
    position: Position
    outer_shape: Sequence[int]  #: T/C/Z extents described, in storage order
    page_indices: Sequence[tuple[int, ...]] = ()  #: page k of its file holds this plane
    frame_metadata: Mapping[tuple[int, ...], Mapping[str, Any]] = field(default_factory=dict)
    file_name: str | None = None  #: set when the image's pages are in another file than
    file_uuid: str | None = None  #: the document's (multi-file OME-TIFF): TiffData UUID
    metadata_only: bool = False  #: pixels stored elsewhere (OME-Zarr): no TiffData
    name: str | None = None  #: the image's name, when not the one the settings give
    channel_names: Sequence[str | None] | None = None  #: likewise, the channels' names


def build_ome(
    settings: AcquisitionSettings,
    images: Sequence[ImageRecord],
    global_metadata: Mapping[str, Mapping[str, Any]],
    *,
    uuid: str | None = None,
) -> m.OME:
    """The complete OME document describing ``images`` (one Image each), the plate their
    positions lie in, the instrument, and the global metadata (one MapAnnotation per
    namespace, referenced by every Image)."""
    annotations: list[Any] = []
    image_refs = []
    for k, (ns, mapping) in enumerate(global_metadata.items()):
        ann = m.MapAnnotation(
            id=f"Annotation:global:{k}", namespace=ns,
            value=m.Map(ms=[m.Map.M(k=str(key), value=global_annotation_text(v))
                            for key, v in mapping.items()]),
        )
        annotations.append(ann)
        image_refs.append(m.AnnotationRef(id=ann.id))
    instruments = [] if settings.instrument is None else [_instrument(settings.instrument)]
    built = []
    for rec in images:
        image = _image(settings, rec, annotations)
        image.annotation_refs = list(image_refs)
        if instruments:
            image.instrument_ref = m.InstrumentRef(id=instruments[0].id)
            if instruments[0].objectives:
                image.objective_settings = m.ObjectiveSettings(id=instruments[0].objectives[0].id)
        built.append(image)
    return m.OME(
        uuid=uuid,
        images=built,
        plates=_plates(settings, images),
        instruments=instruments,
        creator=f"ome-writers-service {__version__}",
        structured_annotations=m.StructuredAnnotations(map_annotations=annotations)
        if annotations else None,
    )


def binary_only(uuid: str, metadata_file: str, metadata_uuid: str) -> m.OME:
    """The OME-XML of a file whose metadata lives in ``metadata_file`` (master or companion)."""
    return m.OME(uuid=uuid, creator=f"ome-writers-service {__version__}",
                 binary_only=m.OME.BinaryOnly(metadata_file=metadata_file, uuid=metadata_uuid))


def _image(settings: AcquisitionSettings, rec: ImageRecord, annotations: list[Any]) -> m.Image:
    """One position's Image; its per-plane annotations are appended to ``annotations``."""
    dims = settings.storage_dimensions
    letters = tiff_axes(dims)
    outer_shape = rec.outer_shape
    sizes = {"T": 1, "C": 1, "Z": 1}
    for letter, n in zip(letters, outer_shape):
        sizes[letter] = int(n)
    by_letter = {_LETTER[d.type]: d for d in dims[:-2]}
    ydim, xdim = dims[-2:]
    pos = rec.index

    def plane_coords(idx: tuple[int, ...]) -> dict[str, int]:
        c = dict(zip(letters, idx))
        return {"first_t": c.get("T", 0), "first_c": c.get("C", 0), "first_z": c.get("Z", 0)}

    def described(idx: tuple[int, ...]) -> bool:  # pages past a cut-short extent are not
        return all(i < n for i, n in zip(idx, outer_shape))

    pages = [(k, i) for k, i in enumerate(rec.page_indices) if described(i)]
    raster = [int(np.ravel_multi_index(i, outer_shape)) if outer_shape else 0 for _, i in pages]
    file_ref = {}
    if rec.file_name is not None:
        file_ref["uuid"] = m.TiffData.UUID(file_name=rec.file_name, value=rec.file_uuid)
    if rec.metadata_only:
        tiff_data = []
    elif len(pages) == len(rec.page_indices) and raster == list(range(len(raster))):
        tiff_data = [m.TiffData(ifd=0, plane_count=len(raster), **file_ref)]
    else:
        tiff_data = [m.TiffData(ifd=k, plane_count=1, **plane_coords(i), **file_ref)
                     for k, i in pages]

    planes = []
    for idx, md in sorted(rec.frame_metadata.items()):
        if not described(idx):
            continue
        pc = plane_coords(idx)
        plane: dict[str, Any] = {"the_t": pc["first_t"], "the_c": pc["first_c"], "the_z": pc["first_z"]}
        if "delta_t" in md:
            plane.update(delta_t=float(md["delta_t"]), delta_t_unit="s")
        if "exposure_time" in md:
            plane.update(exposure_time=float(md["exposure_time"]), exposure_time_unit="s")
        for axis in "xyz":
            key = f"position_{axis}"
            if key in md:
                plane[key] = float(md[key])
                plane[f"{key}_unit"] = "µm"
        extra = {k: v for k, v in md.items() if k not in KNOWN_FRAME_KEYS}
        if extra:
            ann = m.MapAnnotation(
                id=f"Annotation:{pos}:{len(planes)}", namespace=FRAME_NS,
                value=m.Map(ms=[m.Map.M(k=k, value=annotation_text(v)) for k, v in extra.items()]),
            )
            annotations.append(ann)
            plane["annotation_refs"] = [m.AnnotationRef(id=ann.id)]
        planes.append(m.Plane(**plane))

    pixels: dict[str, Any] = dict(
        id=f"Pixels:{pos}",
        dimension_order=dimension_order(dims),
        type=_PIXEL_TYPE.get(settings.dtype, settings.dtype),
        size_x=int(xdim.count), size_y=int(ydim.count),
        size_t=sizes["T"], size_c=sizes["C"], size_z=sizes["Z"],
        big_endian=False, interleaved=False,
        channels=_channels(by_letter.get("C"), sizes["C"], pos, rec.channel_names),
        tiff_data_blocks=tiff_data,
        metadata_only=m.MetadataOnly() if rec.metadata_only else None,
        planes=planes,
    )
    for letter, dim in (("X", xdim), ("Y", ydim), ("Z", by_letter.get("Z"))):
        if dim is not None and dim.scale is not None:
            pixels[f"physical_size_{letter.lower()}"] = dim.scale
            if unit_kind(dim.unit) == "space":
                pixels[f"physical_size_{letter.lower()}_unit"] = ome_unit(dim.unit)
    tdim = by_letter.get("T")
    if tdim is not None and tdim.scale is not None:
        pixels["time_increment"] = tdim.scale
        if unit_kind(tdim.unit) == "time":
            pixels["time_increment_unit"] = ome_unit(tdim.unit)

    image = m.Image(
        id=f"Image:{pos}", name=rec.name if rec.name is not None else
        settings.image_name_of(rec.position),
        pixels=m.Pixels(**pixels), acquisition_date=settings.acquisition_date,
    )
    stage = _stage_coords(rec.position)
    if stage:  # Position coordinates are micrometres; OME's default unit is "reference frame"
        image.stage_label = m.StageLabel(name=rec.position.name, **stage)
    return image


def _stage_coords(position: Position) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for axis in "xyz":
        value = getattr(position, f"{axis}_coord")
        if value is not None:
            out[axis] = float(value)
            out[f"{axis}_unit"] = "µm"
    return out


def _naming(names: Sequence[str]) -> Any:
    if all(n.isalpha() for n in names):
        return m.NamingConvention.LETTER
    if all(n.isdigit() for n in names):
        return m.NamingConvention.NUMBER
    return None


def _plates(settings: AcquisitionSettings, images: Sequence[ImageRecord]) -> list[m.Plate]:
    """The plate, as ome-writers writes it (Plate:0, Well:{row}_{column}, WellSample:{pos}
    indexed by position), with a well sample for each of ``images`` (an ImageRef must name an
    Image of the same document); stage positions in micrometres."""
    plate = settings.plate
    if plate is None:
        return []
    wells: dict[tuple[int, int], m.Well] = {}
    for rec in images:
        position = rec.position
        if position.plate_row not in plate.row_names or \
                position.plate_column not in plate.column_names:
            continue
        row = plate.row_names.index(position.plate_row)
        col = plate.column_names.index(position.plate_column)
        sample: dict[str, Any] = {"id": f"WellSample:{rec.index}", "index": rec.index,
                                  "image_ref": m.ImageRef(id=f"Image:{rec.index}")}
        for axis in "xy":
            value = getattr(position, f"{axis}_coord")
            if value is not None:
                sample[f"position_{axis}"] = float(value)
                sample[f"position_{axis}_unit"] = "µm"
        well = wells.setdefault((row, col), m.Well(id=f"Well:{row}_{col}", row=row, column=col))
        well.well_samples.append(m.WellSample(**sample))
    if not wells:
        return []
    return [m.Plate(id="Plate:0", name=plate.name, rows=len(plate.row_names),
                    columns=len(plate.column_names),
                    row_naming_convention=_naming(plate.row_names),
                    column_naming_convention=_naming(plate.column_names),
                    wells=[wells[k] for k in sorted(wells)])]


def _instrument(inst) -> m.Instrument:
    microscope = None
    if inst.microscope_manufacturer or inst.microscope_model:
        microscope = m.Microscope(manufacturer=inst.microscope_manufacturer,
                                  model=inst.microscope_model)
    objectives = []
    o = inst.objective
    if o is not None:
        kw: dict[str, Any] = {"id": "Objective:0:0", "model": o.model,
                              "manufacturer": o.manufacturer,
                              "nominal_magnification": o.nominal_magnification,
                              "lens_na": o.lens_na, "immersion": o.immersion}
        if o.working_distance_um is not None:
            kw.update(working_distance=o.working_distance_um, working_distance_unit="µm")
        objectives.append(m.Objective(**kw))
    return m.Instrument(id="Instrument:0", microscope=microscope, objectives=objectives)


def _channels(cdim: Dimension | None, size_c: int, pos: int,
              names: Sequence[str | None] | None = None) -> list[m.Channel]:
    named = (cdim.channels if cdim is not None else None) or []
    out = []
    for i in range(size_c):
        kw: dict[str, Any] = {"id": f"Channel:{pos}:{i}", "samples_per_pixel": 1}
        if names is not None and i < len(names) and names[i] is not None:
            kw["name"] = names[i]
        if i < len(named):
            ch = named[i]
            kw.setdefault("name", ch.name)
            if ch.excitation_wavelength_nm:
                kw.update(excitation_wavelength=ch.excitation_wavelength_nm,
                          excitation_wavelength_unit="nm")
            if ch.emission_wavelength_nm:
                kw.update(emission_wavelength=ch.emission_wavelength_nm,
                          emission_wavelength_unit="nm")
            if ch.fluorophore:
                kw["fluor"] = ch.fluorophore
            if ch.color is not None:
                kw["color"] = ch.color.as_rgb_tuple(alpha=True)
        out.append(m.Channel(**kw))
    return out
