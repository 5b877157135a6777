"""Declarative description of an acquisition: what to create, and the order frames arrive.

The models and their field names follow the public ``ome_writers`` 0.3.2 API so that a script
written for it runs unchanged. Everything is validated here, once, at construction: nothing
downstream (router, backends, daemon) re-checks the settings on the frame path.
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator
from pydantic_extra_types.color import Color

DimensionType = Literal["space", "time", "channel", "position", "other"]
Compression = Literal["blosc-zstd", "blosc-lz4", "zstd", "lzw", "none"]
BackpressurePolicy = Literal["block", "drop", "raise"]

#: dtypes both formats store natively.
SUPPORTED_DTYPES = (
    "uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64",
)
ZARR_COMPRESSIONS = ("blosc-zstd", "blosc-lz4", "zstd", "none")
TIFF_COMPRESSIONS = ("lzw", "zstd", "none")


class StandardAxis(str, Enum):
    """The axis names ome-writers gives a conventional meaning."""

    X = "x"
    Y = "y"
    Z = "z"
    CHANNEL = "c"
    TIME = "t"
    POSITION = "p"

    def dimension_type(self) -> DimensionType:
        return _TYPE_OF_NAME[self.value]


_TYPE_OF_NAME: dict[str, DimensionType] = {
    "x": "space", "y": "space", "z": "space", "t": "time", "c": "channel", "p": "position",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False, frozen=False)


class Channel(_Model):
    """One channel of the image: name, light path and display color."""

    name: str
    excitation_wavelength_nm: PositiveInt | None = None
    emission_wavelength_nm: PositiveInt | None = None
    fluorophore: str | None = None
    color: Color | None = None


class Position(_Model):
    """A stage position: its own image. Positions sharing a plate well are that well's fields."""

    name: str
    plate_row: str | None = None
    plate_column: str | None = None
    grid_row: int | None = None
    grid_column: int | None = None
    x_coord: float | None = None
    y_coord: float | None = None
    z_coord: float | None = None


class Plate(_Model):
    """An HCS plate: the row and column names its wells are addressed by."""

    row_names: list[str]
    column_names: list[str]
    name: str | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Plate:
        for field in ("row_names", "column_names"):
            names = getattr(self, field)
            if not names:
                raise ValueError(f"Plate.{field} must not be empty")
            if len(set(names)) != len(names):
                raise ValueError(f"Plate.{field} has duplicates: {names}")
        return self


class Objective(_Model):
    """The objective lens (OME Objective / ObjectiveSettings)."""

    model: str | None = None
    manufacturer: str | None = None
    nominal_magnification: float | None = Field(default=None, gt=0)
    lens_na: float | None = Field(default=None, gt=0)
    immersion: Literal["Oil", "Water", "WaterDipping", "Air", "Multi", "Glycerol", "Other"] \
        | None = None
    working_distance_um: float | None = Field(default=None, gt=0)


class Instrument(_Model):
    """The microscope an acquisition ran on (OME Instrument)."""

    microscope_manufacturer: str | None = None
    microscope_model: str | None = None
    objective: Objective | None = None


class Dimension(_Model):
    """One axis of the acquisition. ``count=None`` means unbounded (first dimension only)."""

    name: str
    count: PositiveInt | None = None
    type: DimensionType | None = None
    coords: list[str | float | Channel | Position] | None = None
    chunk_size: PositiveInt | None = None
    shard_size_chunks: PositiveInt | None = None
    unit: str | None = None
    scale: float | None = None
    translation: float | None = None

    @model_validator(mode="after")
    def _infer_and_check(self) -> Dimension:
        if not self.name:
            raise ValueError("Dimension.name must not be empty")
        if self.type is None:
            self.type = _TYPE_OF_NAME.get(self.name.lower(), "other")
        if self.coords is not None:
            if self.count is None:
                self.count = len(self.coords)
            elif self.count != len(self.coords):
                raise ValueError(
                    f"dimension {self.name!r}: count={self.count} but {len(self.coords)} coords given"
                )
            if self.type == "channel":
                self.coords = [Channel(name=c) if isinstance(c, str) else c for c in self.coords]
            elif self.type == "position":
                self.coords = [
                    Position(name=str(c)) if isinstance(c, (str, int, float)) else c
                    for c in self.coords
                ]
        if self.chunk_size is not None and self.count is not None and self.chunk_size > self.count:
            raise ValueError(
                f"dimension {self.name!r}: chunk_size={self.chunk_size} is larger than "
                f"count={self.count}"
            )
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"dimension {self.name!r}: scale must be a positive number")
        return self

    @property
    def is_position(self) -> bool:
        return self.type == "position"

    @property
    def channels(self) -> list[Channel] | None:
        """Channel coords, when this is a channel axis that names them."""
        if self.type == "channel" and self.coords:
            return [c if isinstance(c, Channel) else Channel(name=str(c)) for c in self.coords]
        return None


class PositionDimension(Dimension):
    """The stage-position meta-dimension: each coord is a `Position`, each one its own image."""

    name: str = "p"
    type: Literal["position"] = "position"
    coords: list[Position] | None = None

    @field_validator("coords", mode="before")
    @classmethod
    def _names_to_positions(cls, v: Any) -> Any:
        if v is None:
            return v
        return [Position(name=str(p)) if isinstance(p, (str, int)) else p for p in v]


class OmeZarrFormat(_Model):
    """OME-Zarr v0.5 (zarr v3), written with tensorstore.

    ``backend`` accepts every name ome-writers 0.3.2 does, so its scripts run unchanged; the
    service always writes with tensorstore (the arrays are the same zarr v3 either way).
    """

    name: Literal["ome-zarr"] = "ome-zarr"
    backend: Literal["auto", "tensorstore", "acquire-zarr", "zarr-python", "zarrs-python"] = "auto"
    suffix: str = ".ome.zarr"


class OmeTiffFormat(_Model):
    """OME-TIFF, written with tifffile; one file per position."""

    name: Literal["ome-tiff"] = "ome-tiff"
    backend: Literal["auto", "tifffile"] = "auto"
    suffix: str = ".ome.tiff"
    prefer_single_file: Literal["auto", "always", "never"] = "auto"
    multi_file_metadata: Literal["redundant", "master-tiff", "companion-file"] = "redundant"
    companion_file: str = "companion.ome"


Format = Annotated[OmeZarrFormat | OmeTiffFormat, Field(discriminator="name")]


def _format_from_path(root_path: str) -> OmeZarrFormat | OmeTiffFormat | None:
    lower = root_path.lower().rstrip("/\\")
    if lower.endswith(".zarr"):
        return OmeZarrFormat()
    if lower.endswith((".tif", ".tiff")):
        return OmeTiffFormat()
    return None


class AcquisitionSettings(_Model):
    """Everything about a dataset, declared before the first frame arrives.

    ``dimensions`` are in acquisition order (slowest first); the last two are the frame (y, x).
    ``storage_order`` says how the non-frame axes are laid out on disk.
    """

    root_path: str = ""
    dimensions: tuple[Dimension, ...] = ()
    dtype: str = ""
    format: Literal["auto"] | Format = "auto"
    compression: Compression | None = None
    storage_order: Literal["acquisition", "ome"] | list[str] = "ome"
    plate: Plate | None = None
    overwrite: bool = False
    # --- additions of the service (not in ome-writers 0.3.2) ---
    image_name: str | None = None
    """Name of the image (with several positions: prefixed to each position's name)."""
    acquisition_date: datetime | None = None
    instrument: Instrument | None = None
    backpressure: BackpressurePolicy = "block"
    """What append() does when every ring slot is in use: wait, drop the newest frame, or raise."""
    backpressure_timeout: float = Field(default=10.0, gt=0)
    """Seconds append() waits for a free slot under the "block" policy before it raises."""
    ring_slots: PositiveInt | None = None
    """Slots in the shared-memory ring; None picks ~256 MiB of frames (less when /dev/shm is
    small; at least 8)."""

    @field_validator("format", mode="before")
    @classmethod
    def _format_names(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "auto":
            key = v.lower().replace("_", "-")
            if key in ("ome-zarr", "zarr"):
                return OmeZarrFormat()
            if key in ("ome-tiff", "tiff", "tif"):
                return OmeTiffFormat()
            raise ValueError(f"format must be 'auto', 'ome-zarr' or 'ome-tiff', not {v!r}")
        return v

    @field_validator("dimensions", mode="before")
    @classmethod
    def _position_dims(cls, v: Any) -> Any:
        # A plain Dimension of type "position" is promoted so positions are always Position models.
        out = []
        for d in v or ():
            if isinstance(d, Dimension) and d.type == "position" and not isinstance(d, PositionDimension):
                d = PositionDimension(**d.model_dump(exclude={"type"}))
            elif isinstance(d, Mapping) and d.get("type") == "position":
                d = PositionDimension(**{k: v for k, v in d.items() if k != "type"})
            out.append(d)
        return tuple(out)

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v: Any) -> str:
        if v in ("", None):
            return ""
        try:
            name = np.dtype(v).name
        except TypeError as e:
            raise ValueError(f"dtype {v!r} is not a numpy dtype") from e
        if name not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype {name!r} is not supported; use one of {SUPPORTED_DTYPES}")
        return name

    @model_validator(mode="after")
    def _check(self) -> AcquisitionSettings:
        dims = self.dimensions
        if not dims:
            return self  # an empty model, as ome-writers allows; create_stream() refuses it
        _check_dimensions(dims)
        if self.format == "auto" and self.root_path:
            fmt = _format_from_path(self.root_path)
            if fmt is None:
                raise ValueError(
                    f"root_path {self.root_path!r}: cannot infer the format from its suffix; "
                    "end it in .ome.zarr or .ome.tiff, or set format='ome-zarr'/'ome-tiff'"
                )
            self.format = fmt
        if self.storage_order not in ("acquisition", "ome"):
            _check_storage_list(self.storage_order, dims)
        if isinstance(self.format, OmeZarrFormat):
            _check_zarr(self)
        elif isinstance(self.format, OmeTiffFormat):
            _check_tiff(self)
        if self.plate is not None:
            _check_plate(self.plate, self.position_dimension)
        return self

    # ---- derived views of the settings, computed once, used by router and backends ----

    @property
    def position_dimension(self) -> PositionDimension | None:
        return next((d for d in self.dimensions if isinstance(d, PositionDimension)), None)

    @property
    def positions(self) -> list[Position]:
        """Every image the dataset holds; a dataset without a position axis has one."""
        pd = self.position_dimension
        if pd is None:
            return [Position(name="0")]
        if pd.coords:
            return list(pd.coords)
        return [Position(name=str(i)) for i in range(pd.count or 0)]

    @property
    def array_dimensions(self) -> list[Dimension]:
        """Axes of each image, in acquisition order (the position meta-dimension removed)."""
        return [d for d in self.dimensions if not d.is_position]

    @property
    def storage_dimensions(self) -> list[Dimension]:
        """Axes of each image as laid out on disk (frame axes y, x last)."""
        arr = self.array_dimensions
        frame = arr[-2:]
        outer = arr[:-2]
        if self.storage_order == "acquisition":
            order = outer
        elif self.storage_order == "ome":
            order = sorted(outer, key=lambda d: _OME_RANK[d.type])  # stable: ties keep acq order
        else:
            by_name = {d.name: d for d in outer}
            order = [by_name[n] for n in self.storage_order if n in by_name]
        return [*order, *frame]

    def image_name_of(self, position: Position) -> str:
        """The name each position's image gets in the metadata."""
        if self.image_name is None:
            return position.name
        if self.position_dimension is None:
            return self.image_name
        return f"{self.image_name} {position.name}"

    @property
    def frame_shape(self) -> tuple[int, int]:
        y, x = self.dimensions[-2:]
        return (int(y.count), int(x.count))  # type: ignore[arg-type]

    @property
    def frame_nbytes(self) -> int:
        return int(np.prod(self.frame_shape)) * np.dtype(self.dtype).itemsize

    @property
    def is_unbounded(self) -> bool:
        return bool(self.dimensions) and self.dimensions[0].count is None

    @property
    def num_frames(self) -> int | None:
        """Frames the acquisition declares (over all positions); None when unbounded."""
        if self.is_unbounded:
            return None
        return math.prod(int(d.count) for d in self.dimensions[:-2])  # type: ignore[arg-type]

    @property
    def format_name(self) -> str:
        if self.format == "auto":
            raise ValueError("settings have no format: give a root_path with a known suffix")
        return self.format.name

    def validate_for_writing(self) -> None:
        """Checks only create_stream() needs (ome-writers allows empty models to be built)."""
        if not self.root_path:
            raise ValueError("AcquisitionSettings.root_path is empty")
        if not self.dimensions:
            raise ValueError("AcquisitionSettings.dimensions is empty")
        if not self.dtype:
            raise ValueError("AcquisitionSettings.dtype is empty")
        if self.format == "auto":
            raise ValueError("AcquisitionSettings.format could not be inferred")

    @property
    def output_path(self) -> str:
        return os.path.abspath(os.path.expanduser(self.root_path))


_OME_RANK = {"time": 0, "channel": 1, "other": 1, "space": 2, "position": -1}


def _check_dimensions(dims: Sequence[Dimension]) -> None:
    names = [d.name for d in dims]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"dimensions: duplicate names {dupes}")
    if len(dims) < 2:
        raise ValueError("dimensions: need at least the two frame axes (y, x)")
    for d in dims[-2:]:
        if d.is_position or d.count is None or d.type != "space":
            raise ValueError(
                f"dimensions: the last two dimensions are the frame and must be bounded spatial "
                f"axes (y, x); {d.name!r} is type={d.type!r}, count={d.count}"
            )
    for i, d in enumerate(dims):
        if d.count is None and i != 0:
            raise ValueError(
                f"dimensions: {d.name!r} is unbounded (count=None) but only the first "
                "dimension may be unbounded"
            )
    if dims[0].count is None and dims[0].is_position:
        raise ValueError(f"dimensions: the position dimension {dims[0].name!r} cannot be unbounded")
    npos = sum(d.is_position for d in dims)
    if npos > 1:
        raise ValueError("dimensions: at most one position dimension")
    for d in dims:
        if d.is_position and (d.chunk_size or d.shard_size_chunks):
            raise ValueError(f"dimension {d.name!r}: a position dimension has no chunks or shards")


def _check_storage_list(order: list[str], dims: Sequence[Dimension]) -> None:
    outer = [d.name for d in dims[:-2] if not d.is_position]
    frame = [d.name for d in dims[-2:]]
    pos = [d.name for d in dims if d.is_position]
    given = [n for n in order if n not in pos]
    if given[-2:] == frame:
        given = given[:-2]
    if sorted(given) != sorted(outer) or len(given) != len(set(given)):
        raise ValueError(
            f"storage_order {order} is not a permutation of the non-frame dimensions {outer} "
            f"(optionally followed by the frame axes {frame})"
        )


def _check_zarr(s: AcquisitionSettings) -> None:
    if s.compression not in (None, *ZARR_COMPRESSIONS):
        raise ValueError(
            f"compression {s.compression!r} is not available for OME-Zarr; use one of {ZARR_COMPRESSIONS}"
        )
    axes = s.storage_dimensions
    types = [d.type for d in axes]
    n_space = types.count("space")
    if len(axes) > 5 or types.count("time") > 1 or types.count("channel") + types.count("other") > 1 \
            or n_space > 3:
        raise ValueError(
            f"storage axes {[d.name for d in axes]} cannot be OME-Zarr v0.5 axes: at most one "
            "time, one channel-or-custom and three space axes (five in all)"
        )
    ranks = [_OME_RANK[t] for t in types]
    if ranks != sorted(ranks):
        raise ValueError(
            f"storage_order gives axes {[d.name for d in axes]}, which OME-Zarr v0.5 forbids: "
            "time must come first, then channel/custom, then space; use storage_order='ome'"
        )


def _check_tiff(s: AcquisitionSettings) -> None:
    if s.compression not in (None, *TIFF_COMPRESSIONS):
        raise ValueError(
            f"compression {s.compression!r} is not available for OME-TIFF; use one of {TIFF_COMPRESSIONS}"
        )
    outer = s.storage_dimensions[:-2]
    kinds = {"time": [], "channel": [], "space": [], "other": []}
    for d in outer:
        kinds[d.type].append(d.name)
    bad = kinds["other"] or [v for k, v in kinds.items() if k != "other" and len(v) > 1]
    if bad:
        raise ValueError(
            f"dimensions {[d.name for d in outer]}: OME-TIFF stores at most one time (T), one "
            "channel (C) and one space (Z) axis besides the frame; "
            f"{bad} cannot be represented"
        )


def _check_plate(plate: Plate, pd: PositionDimension | None) -> None:
    if pd is None or not pd.coords:
        raise ValueError("plate: a plate needs a position dimension whose coords are Positions")
    for p in pd.coords:
        if p.plate_row is None or p.plate_column is None:
            raise ValueError(f"plate: position {p.name!r} has no plate_row/plate_column")
        if p.plate_row not in plate.row_names:
            raise ValueError(f"plate: position {p.name!r} plate_row {p.plate_row!r} not in row_names")
        if p.plate_column not in plate.column_names:
            raise ValueError(
                f"plate: position {p.name!r} plate_column {p.plate_column!r} not in column_names"
            )


def dims_from_standard_axes(
    sizes: Mapping[str, int | Sequence[str | Position] | None],
    chunk_shapes: Mapping[str | StandardAxis, int] | None = None,
    shard_shapes: Mapping[str | StandardAxis, int] | None = None,
) -> list[Dimension]:
    """Dimensions from ``{"t": 10, "c": ["DAPI", "GFP"], "y": 512, "x": 512}``, in that order.

    Frame axes default to one chunk per frame, other axes to one plane per chunk.
    ``shard_shapes`` gives the shard size in chunks, as ``Dimension.shard_size_chunks``.
    """

    def key(m: Mapping | None, name: str) -> int | None:
        if not m:
            return None
        for k, v in m.items():
            if (k.value if isinstance(k, StandardAxis) else k) == name:
                return v
        return None

    out: list[Dimension] = []
    for raw_name, size in sizes.items():
        name = raw_name.value if isinstance(raw_name, StandardAxis) else str(raw_name)
        try:
            kind = StandardAxis(name).dimension_type()
        except ValueError as e:
            raise ValueError(f"dims_from_standard_axes: {name!r} is not one of x,y,z,c,t,p") from e
        count, coords = (size, None) if size is None or isinstance(size, int) else (None, list(size))
        if kind == "position":
            out.append(PositionDimension(name=name, count=count, coords=coords))
            continue
        out.append(
            Dimension(
                name=name, type=kind, count=count, coords=coords,
                chunk_size=key(chunk_shapes, name), shard_size_chunks=key(shard_shapes, name),
            )
        )
    return out
