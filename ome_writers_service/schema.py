"""Declarative description of an acquisition: what to create, and the order frames arrive.

The models and their field names follow the public ``ome_writers`` 0.3.2 API so that a script
written for it runs unchanged. Everything is validated here, at construction and at every
assignment to a field (``validate_assignment``, as in ome-writers): nothing downstream (router,
backends, daemon) re-checks the settings on the frame path.

Values the validators derive (a dimension's type, its count from its coords, the format from
the root path) are written straight into the model's ``__dict__``, never through ``setattr``,
so validation never recurses. A field counts as given by the user only when it is in
``model_fields_set`` with a value that is not None; derived values are derived again when a
field they depend on is assigned.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import (
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .dimensions import (  # noqa: F401 - re-exported: the settings' public names
    Channel, Dimension, Plate, Position, PositionDimension, StandardAxis,
)
from .formats import (  # noqa: F401 - re-exported
    COMPANION_SUFFIX, Format, OmeTiffFormat, OmeZarrFormat, ScratchFormat, _FORMAT_NAMES,
    _format_from_path, _path_suffix, ome_stem,
)
from .schema_base import (  # noqa: F401 - re-exported
    DEFAULT_LEVELS, LEVEL_RANGES, SUPPORTED_DTYPES, TIFF_COMPRESSIONS, ZARR_COMPRESSIONS,
    ZARR_ONLY_DTYPES, BackpressurePolicy, Compression, DimensionType, Downsampling, XmlStr,
    _Model, _strict,
)
from .storage import check_root_path_scheme, url_scheme


class Objective(_Model):
    """The objective lens (OME Objective / ObjectiveSettings)."""

    model: XmlStr | None = None
    manufacturer: XmlStr | None = None
    nominal_magnification: float | None = Field(default=None, gt=0)
    lens_na: float | None = Field(default=None, gt=0)
    immersion: Literal["Oil", "Water", "WaterDipping", "Air", "Multi", "Glycerol", "Other"] \
        | None = None
    working_distance_um: float | None = Field(default=None, gt=0)


class Instrument(_Model):
    """The microscope an acquisition ran on (OME Instrument)."""

    microscope_manufacturer: XmlStr | None = None
    microscope_model: XmlStr | None = None
    objective: Objective | None = None

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
    image_name: XmlStr | None = None
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
    compression_level: int | None = None
    """The codec's level: 1-9 for blosc-zstd/blosc-lz4, -7..22 for zstd (1 is the fastest
    positive level; more compresses harder, slower). None: ome-writers 0.3.2's levels
    (blosc-zstd 3, blosc-lz4 5, zstd 3)."""

    @property
    def codec_level(self) -> int | None:
        """The level ``compression`` encodes at (None: a codec without levels, or none)."""
        if self.compression not in DEFAULT_LEVELS:
            return None
        if self.compression_level is None:
            return DEFAULT_LEVELS[self.compression]
        return self.compression_level

    @field_validator("root_path", mode="before")
    @classmethod
    def _path_to_str(cls, v: Any) -> Any:
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        if isinstance(v, bytes):
            v = os.fsdecode(v)
        if isinstance(v, str):
            check_root_path_scheme(v)
        return v

    @field_validator("format", mode="before")
    @classmethod
    def _format_names(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, str) and v != "auto":
            key = v.lower().replace("_", "-")
            if key in _FORMAT_NAMES:
                model, kw = _FORMAT_NAMES[key]
                # a format named by a string takes its suffix from root_path (as ome-writers)
                # (a contradicting one is refused once the model is built)
                found = _path_suffix(str(info.data.get("root_path") or ""))
                if found is not None and found[0] == model.model_fields["name"].default:
                    kw = {**kw, "suffix": found[1]}
                return model(**kw)
            if key in ("scratch", "memory"):
                return ScratchFormat()
            raise ValueError(f"format must be 'auto', 'ome-zarr', 'ome-tiff' or a backend name "
                             f"({', '.join(k for k in _FORMAT_NAMES if '-' in k or k.endswith('file'))}), "
                             f"not {v!r}")
        if isinstance(v, Mapping) and "suffix" not in v and v.get("name") in ("ome-zarr",
                                                                               "ome-tiff"):
            # a format given as a mapping takes its suffix from root_path, as ome-writers
            found = _path_suffix(str(info.data.get("root_path") or ""))
            if found is not None and found[0] == v["name"]:
                v = {**v, "suffix": found[1]}
        return v

    @field_validator("dimensions", mode="before")
    @classmethod
    def _position_dims(cls, v: Any, info: ValidationInfo) -> Any:
        # A plain Dimension of type "position" is promoted so positions are always Position models.
        out = []
        for i, d in enumerate(v or ()):
            if isinstance(d, Dimension) and d.type == "position" and not isinstance(d, PositionDimension):
                d = PositionDimension(**d.model_dump(exclude={"type"}, exclude_unset=True))
            elif isinstance(d, Mapping) and d.get("type") == "position":
                try:
                    d = PositionDimension.model_validate(
                        {k: v for k, v in d.items() if k != "type"}, strict=_strict(info),
                        context=info.context)
                except ValidationError as e:  # located at its index, as the other dimensions
                    raise ValidationError.from_exception_data(e.title, [
                        {"type": err["type"], "loc": (i, *err["loc"]), "input": err["input"],
                         **({"ctx": err["ctx"]} if "ctx" in err else {})}
                        for err in e.errors()]) from None
            out.append(d)
        return tuple(out)

    @field_validator("dimensions", mode="after")
    @classmethod
    def _inferred_position_dims(cls, v: tuple[Dimension, ...]) -> tuple[Dimension, ...]:
        # a dimension whose position type was inferred (from its name "p" or its coords)
        return tuple(
            PositionDimension(**d.model_dump(exclude={"type"}, exclude_unset=True))
            if d.type == "position" and not isinstance(d, PositionDimension) else d
            for d in v
        )

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v: Any) -> str:
        if v in ("", None):
            return ""
        try:
            name = np.dtype(v).name
        except TypeError as e:
            raise ValueError(f"Invalid dtype {v!r}: not a numpy dtype") from e
        if name not in SUPPORTED_DTYPES + ZARR_ONLY_DTYPES:
            raise ValueError(f"dtype {name!r} is not supported; use one of "
                             f"{SUPPORTED_DTYPES + ZARR_ONLY_DTYPES}")
        return name

    def _before_assign(self, name: str, value: Any) -> None:
        # A root_path whose suffix names another format than the current one: the format
        # follows the new path (ome-writers 0.3.2 accepts the assignment too), unless it is
        # a scratch format the user chose (a scratch dataset may live at any path). A format
        # derived from the old path's suffix follows the new suffix.
        if name != "root_path" or self.format == "auto":
            return
        found = _path_suffix(os.fspath(value)) if isinstance(value, (str, os.PathLike)) else None
        if found is None:
            return
        if self._given("format") and (found[0] == self.format.name
                                      or isinstance(self.format, ScratchFormat)):
            return
        self.__dict__["format"] = "auto"
        self.__pydantic_fields_set__.discard("format")

    @model_validator(mode="after")
    def _check(self) -> AcquisitionSettings:
        if self.format == "auto" and self.root_path:
            fmt = _format_from_path(self.root_path)
            if fmt is not None:
                self.__dict__["format"] = fmt
        elif self.format == "auto":
            # as ome-writers 0.3.2: without a root_path the only possible format is scratch
            self.__dict__["format"] = ScratchFormat()
        if self.format == "auto" and self.root_path:
            # as ome-writers 0.3.2 (its text, so filters written for it match): a warning,
            # then OME-Zarr at root_path + ".ome.zarr"
            warnings.warn(
                f"Output format could not be inferred from root_path {self.root_path!r}: "
                "writing OME-Zarr (to root_path + '.ome.zarr'). End root_path in .ome.zarr or "
                ".ome.tiff, or set format='ome-zarr'/'ome-tiff'.", UserWarning, stacklevel=2)
            self.__dict__["format"] = OmeZarrFormat()
        dims = self.dimensions
        if not dims:
            return self  # an empty model, as ome-writers allows; create_stream() refuses it
        scratch = isinstance(self.format, ScratchFormat)
        found = _path_suffix(self.root_path) if self.root_path and not scratch else None
        if found is not None and found[0] != self.format.name:
            raise ValueError(f"format {self.format.name!r} contradicts root_path "
                             f"{self.root_path!r}, whose suffix {found[1]!r} says {found[0]}: "
                             "change one of them")
        if url_scheme(self.root_path) is not None and not isinstance(self.format,
                                                                     OmeZarrFormat):
            raise ValueError(
                f"root_path {self.root_path!r}: only OME-Zarr can be written to object storage "
                f"(format {self.format.name!r} writes files in place, which S3 cannot update); "
                "end root_path in .ome.zarr, or write to a local or mounted path")
        if self.root_path and not scratch and \
                not os.path.basename(ome_stem(self.root_path.rstrip("/\\"))):
            raise ValueError(f"root_path {self.root_path!r} has no name before its suffix: "
                             "the dataset (and a multi-file OME-TIFF's directory) is named "
                             "after it")
        dims = _frame_axes_are_space(dims)
        self.__dict__["dimensions"] = dims
        _check_dimensions(dims)
        if self.storage_order not in ("acquisition", "ome"):
            _check_storage_list(self.storage_order, dims)
        if isinstance(self.format, OmeZarrFormat):
            _check_zarr(self)
        elif isinstance(self.format, OmeTiffFormat):
            _check_tiff(self)
            self.__dict__["format"] = _with_companion_name(self.format, self.root_path)
        if isinstance(self.format, (OmeZarrFormat, OmeTiffFormat)):
            _check_levels(self.format.levels, self.frame_shape)
        _check_compression_level(self)
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
        self._require_dimensions("positions")
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
        if self.storage_order == "acquisition" or (self.storage_order == "ome" and isinstance(
                self.format, (OmeTiffFormat, ScratchFormat))):
            # OME-TIFF's DimensionOrder takes T, C, Z in any order: its "ome" order is the
            # acquisition order (as ome-writers 0.3.2), so pages arrive in plane order;
            # scratch arrays are in acquisition order too (as ome-writers)
            order = outer
        elif self.storage_order == "ome":
            order = sorted(outer, key=lambda d: _OME_RANK[d.type])  # stable: ties keep acq order
        else:
            by_name = {d.name: d for d in outer}
            order = [by_name[n] for n in self.storage_order if n in by_name]
        return [*order, *frame]

    # ---- the helper properties of ome-writers 0.3.2, same names and meaning ----

    def _require_dimensions(self, prop: str) -> tuple[Dimension, ...]:
        if not self.dimensions:
            raise ValueError(f"Cannot access '{prop}': dimensions has not been set yet.")
        return self.dimensions

    @property
    def shape(self) -> tuple[int | None, ...]:
        """Count of every dimension, in acquisition order (the position dimension included)."""
        return tuple(d.count for d in self._require_dimensions("shape"))

    @property
    def frame_dimensions(self) -> tuple[Dimension, ...]:
        """The two in-frame dimensions (usually y, x)."""
        return self._require_dimensions("frame_dimensions")[-2:]

    @property
    def index_dimensions(self) -> tuple[Dimension, ...]:
        """The non-frame dimensions, position excluded, in acquisition order."""
        dims = self._require_dimensions("index_dimensions")
        return tuple(d for d in dims[:-2] if not d.is_position)

    @property
    def storage_index_dimensions(self) -> tuple[Dimension, ...]:
        """The non-frame dimensions, position excluded, in storage order."""
        self._require_dimensions("storage_index_dimensions")
        return tuple(self.storage_dimensions[:-2])

    @property
    def storage_index_permutation(self) -> tuple[int, ...] | None:
        """Storage position of each index dimension as an index into `index_dimensions`;
        None when storage order equals acquisition order."""
        names = [d.name for d in self.index_dimensions]
        perm = tuple(names.index(d.name) for d in self.storage_index_dimensions)
        return perm if perm != tuple(range(len(perm))) else None

    @property
    def array_storage_dimensions(self) -> tuple[Dimension, ...]:
        """All dimensions but the position one, in storage order (frame last)."""
        self._require_dimensions("array_storage_dimensions")
        return tuple(self.storage_dimensions)

    @property
    def position_dimension_index(self) -> int | None:
        """Index of the position dimension in `dimensions`, or None."""
        dims = self._require_dimensions("position_dimension_index")
        return next((i for i, d in enumerate(dims[:-2]) if d.is_position), None)

    def validate_stream_ready(self) -> Literal[True]:
        """Raise ValueError unless create_stream() can use these settings; True otherwise."""
        self.validate_for_writing()
        return True

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
    def max_buffer_bytes(self) -> int:
        """The most memory the writer can hold in chunk buffers for this acquisition, in
        bytes (as acquire-zarr's ``get_maximum_memory_usage()``): OME-Zarr frames wait in
        them until their chunk (or shard) is complete, so it grows with the chunks open at
        once; OME-TIFF holds none. A daemon refuses a stream whose buffers would not fit its
        memory budget (`chunk_buffers` explains the estimate)."""
        from .chunk_buffers import estimate

        return estimate(self).total

    @property
    def is_unbounded(self) -> bool:
        return self._require_dimensions("is_unbounded")[0].count is None

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
        if not self.root_path and not isinstance(self.format, ScratchFormat):
            raise ValueError(f"root_path is required for {self.format.name} format "
                             "(AcquisitionSettings.root_path is empty)")
        if not self.dimensions:
            raise ValueError("settings.dimensions must be set before creating a stream "
                             "(AcquisitionSettings.dimensions is empty)")
        if not self.dtype:
            raise ValueError("settings.dtype must be set before creating a stream "
                             "(AcquisitionSettings.dtype is empty)")
        if self.format == "auto":
            raise ValueError("AcquisitionSettings.format could not be inferred")

    @property
    def output_path(self) -> str:
        """Where the dataset goes, absolute: the OME-Zarr store, the OME-TIFF file, or the
        directory of a multi-file OME-TIFF (see `OmeTiffFormat`)."""
        self._require_dimensions("output_path")
        if isinstance(self.format, ScratchFormat) and not self.root_path:
            return ""  # in memory
        url = url_scheme(self.root_path) is not None
        root = self.root_path if url else os.path.expanduser(self.root_path)
        if self.format != "auto" and self.dimensions:
            root = self.format.output_path(root, len(self.positions))
        return root.rstrip("/") if url else os.path.abspath(root)


_OME_RANK = {"time": 0, "channel": 1, "other": 1, "space": 2, "position": -1}


def _frame_axes_are_space(dims: tuple[Dimension, ...]) -> tuple[Dimension, ...]:
    """The last two dimensions are the frame: one whose type nothing said (a non-standard name
    such as "row") becomes a space axis, with a warning, as in ome-writers 0.3.2."""
    out = list(dims)
    for i in range(max(0, len(out) - 2), len(out)):
        d = out[i]
        if d.type != "space" and d.type_guessed:
            warnings.warn(
                "The last two dimensions are expected to have type='space'. Setting "
                f"type='space' for non-standard dimension name {d.name!r}.",
                UserWarning, stacklevel=4,
            )
            data = d.model_dump(exclude_unset=True)
            data["type"] = "space"
            out[i] = type(d).model_validate(data)
    return tuple(out)


def _check_dimensions(dims: Sequence[Dimension]) -> None:
    names = [d.name for d in dims]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"dimensions: duplicate names {dupes} (dimension names must be unique)")
    n_array = sum(not d.is_position for d in dims)
    if n_array < 2:
        raise ValueError("dimensions: At least 2 non-position dimensions are required (the "
                         "frame axes y, x)")
    if n_array > 5:
        raise ValueError(f"dimensions: At most 5 non-position dimensions are allowed; "
                         f"{[d.name for d in dims if not d.is_position]} are {n_array}")
    for d in dims[-2:]:
        if d.is_position or d.count is None or d.type != "space":
            raise ValueError(
                f"dimensions: The last two dimensions must be spatial dimensions: they are the "
                f"frame, bounded spatial axes (y, x); {d.name!r} is type={d.type!r}, "
                f"count={d.count}"
            )
    for i, d in enumerate(dims):
        if d.count is None and i != 0:
            raise ValueError(
                f"dimensions: {d.name!r} is unbounded (count=None). Only the first "
                "dimension may be unbounded"
            )
    if dims[0].count is None and dims[0].is_position:
        raise ValueError(f"dimensions: the position dimension {dims[0].name!r} cannot be unbounded")
    npos = sum(d.is_position for d in dims)
    if npos > 1:
        raise ValueError("dimensions: Only one position dimension is allowed")
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
    elif set(frame) & set(given):
        raise ValueError(f"storage_order {order}: storage_order may not (yet) permute the last "
                         f"two dimensions (the frame axes {frame} come last, in that order)")
    if sorted(given) != sorted(outer) or len(given) != len(set(given)):
        raise ValueError(
            f"storage_order names {order} don't match the acquisition dimensions: not a "
            f"permutation of the non-frame dimensions {outer} (optionally followed by the "
            f"frame axes {frame})"
        )


def _check_compression_level(s: AcquisitionSettings) -> None:
    level = s.compression_level
    if level is None:
        return
    if s.compression not in LEVEL_RANGES:
        raise ValueError(f"compression_level={level}: compression {s.compression!r} has no "
                         f"levels (levels apply to {tuple(LEVEL_RANGES)})")
    low, high = LEVEL_RANGES[s.compression]
    if not low <= level <= high or (s.compression == "zstd" and level == 0):
        raise ValueError(f"compression_level={level} is out of range for {s.compression!r}: "
                         f"use {low}..{high}" + (" (not 0)" if s.compression == "zstd" else ""))


def _check_zarr(s: AcquisitionSettings) -> None:
    if s.compression not in (None, *ZARR_COMPRESSIONS):
        raise ValueError(
            f"compression {s.compression!r} is not available for OME-Zarr; use one of {ZARR_COMPRESSIONS}"
        )
    version = s.format.version
    sharded = [d.name for d in s.dimensions if d.shard_size_chunks]
    if version == "0.4" and sharded:
        raise ValueError(
            f"dimensions {sharded}: shard_size_chunks asks for sharding, which OME-Zarr 0.4 "
            "cannot store (zarr v2 has no shards); drop shard_size_chunks or write OME-Zarr "
            "0.5 (format=OmeZarrFormat(version='0.5'))")
    axes = s.storage_dimensions
    types = [d.type for d in axes]
    n_space = types.count("space")
    if len(axes) > 5 or types.count("time") > 1 or types.count("channel") > 1 \
            or types.count("other") > 1 or n_space > 3:
        raise ValueError(
            f"storage axes {[d.name for d in axes]} cannot be OME-Zarr v{version} axes: at most one "
            "time, one channel, one custom and three space axes (five in all)"
        )
    if "channel" in types and "other" in types:
        # what pymmcore-plus asks for with several cameras (t, c, cam, y, x); ome-writers
        # 0.3.2 writes it and yaozarrs accepts it, but NGFF v0.5 reads "a channel *or* a
        # custom axis": say so rather than refuse the acquisition
        custom = next(d.name for d in axes if d.type == "other")
        warnings.warn(
            f"storage axes {[d.name for d in axes]}: a channel axis and a custom axis "
            f"({custom!r}) together go beyond NGFF v0.5's 'channel or custom' axis; "
            "yaozarrs and ome-writers accept it, strict OME-Zarr readers may not",
            UserWarning, stacklevel=5)
    ranks = [_OME_RANK[t] for t in types]
    if ranks != sorted(ranks):
        raise ValueError(
            f"storage_order gives axes {[d.name for d in axes]}, which OME-Zarr v{version} forbids: "
            "time must come first, then channel/custom, then space; use storage_order='ome'"
        )
    zarr_image_groups(s)


#: what an HCS field's path may hold (yaozarrs' FieldOfView; the NGFF spec wants [A-Za-z0-9])
_FIELD_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def zarr_image_groups(s: AcquisitionSettings) -> list[str]:
    """Each position's image group in an OME-Zarr store, named as ome-writers 0.3.2 names
    them: a plate's ``<row>/<column>/<position name>``; else, with one position, the root
    (``""``); else, bioformats2raw series named after the positions (``<name>``, or
    ``<name>_<grid_row>_<grid_column>`` for a grid position). Raises ValueError naming the
    position whose name cannot be a group, or two positions that would share one."""
    positions = s.positions
    if s.plate is not None:
        for p in positions:
            if not _FIELD_NAME.match(p.name) or p.name in (".", ".."):
                raise ValueError(
                    f"position {p.name!r}: a plate field's name is its OME-Zarr group "
                    f"({p.plate_row}/{p.plate_column}/<name>) and may hold only letters, digits, "
                    "'.', '_' and '-'")
        paths = [f"{p.plate_row}/{p.plate_column}/{p.name}" for p in positions]
    elif len(positions) == 1:
        return [""]
    else:
        paths = []
        for p in positions:
            name = p.name if p.grid_row is None else f"{p.name}_{p.grid_row}_{p.grid_column}"
            if "/" in name or "\\" in name or name in (".", "..") or name.startswith("__") \
                    or name == "OME":
                raise ValueError(
                    f"position {p.name!r}: its OME-Zarr series group would be {name!r}, which "
                    "zarr forbids (no '/' or '\\', not '.', '..', 'OME' or starting with "
                    "'__'); rename the position")
            paths.append(name)
    seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        if path in seen:
            raise ValueError(f"positions {positions[seen[path]].name!r} and "
                             f"{positions[i].name!r} would share the OME-Zarr group {path!r}")
        seen[path] = i
    return paths


def _with_companion_name(fmt: OmeTiffFormat, root_path: str) -> OmeTiffFormat:
    """The format with its companion file named after the dataset (``<stem>.companion.ome``)
    where the user named none, so that ``settings.format.companion_file`` is the file's name
    as in ome-writers 0.3.2. A copy: the user's format object may serve other settings."""
    if fmt._given("companion_file") or not root_path:
        return fmt
    name = fmt.companion_name(os.path.basename(ome_stem(root_path.rstrip("/\\"))))
    if fmt.companion_file == name:
        return fmt
    out = fmt.model_copy()
    out.__dict__["companion_file"] = name  # derived: not in model_fields_set
    return out


def _check_tiff(s: AcquisitionSettings) -> None:
    n = len(s.positions)
    if s.format.prefer_single_file == "always" and n > 1:
        raise ValueError(
            f"format.prefer_single_file='always': {n} positions in one OME-TIFF file is not "
            "supported (neither in ome-writers 0.3.2); use 'auto' or 'never' (one file per "
            "position in a directory)")
    if s.compression not in (None, *TIFF_COMPRESSIONS):
        raise ValueError(
            f"compression {s.compression!r} is not available for OME-TIFF; use one of {TIFF_COMPRESSIONS}"
        )
    if s.dtype in ZARR_ONLY_DTYPES:
        raise ValueError(
            f"dtype {s.dtype!r} cannot be written to OME-TIFF: OME-XML has no 64-bit integer "
            f"PixelType; use one of {SUPPORTED_DTYPES}, or OME-Zarr"
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


def max_pyramid_levels(frame_shape: tuple[int, int]) -> int:
    """Most resolution levels a frame has while each one still halves both y and x (sizes
    round up; a level one pixel high or wide is the last)."""
    n, (y, x) = 1, frame_shape
    while y > 1 and x > 1:
        y, x = -(-y // 2), -(-x // 2)
        n += 1
    return n


def _check_levels(levels: int, frame_shape: tuple[int, int]) -> None:
    most = max_pyramid_levels(frame_shape)
    if levels > most:
        raise ValueError(
            f"format.levels={levels}: a {frame_shape[0]}x{frame_shape[1]} frame halves only "
            f"{most - 1} times before y or x is one pixel, so at most levels={most}")


def _check_plate(plate: Plate, pd: PositionDimension | None) -> None:
    if pd is None or not pd.coords:
        raise ValueError("plate: Plate mode requires a position dimension in dimensions (whose "
                         "coords are Positions)")
    missing = [p.name for p in pd.coords if p.plate_row is None or p.plate_column is None]
    if missing:
        raise ValueError(f"plate: All positions must have row and column for plate mode. "
                         f"Missing row/column for positions: {missing} (no plate_row/plate_column)")
    outside = [p.name for p in pd.coords
               if p.plate_row not in plate.row_names or p.plate_column not in plate.column_names]
    if outside:
        # a warning, as ome-writers 0.3.2 (its words): OME-TIFF leaves them out of the Plate;
        # OME-Zarr, whose plate must list every well, refuses them when the stream is created
        warnings.warn(
            f"Some positions have row/column values not in the plate definition: {outside}. "
            "These may be omitted from the plate metadata on disk.", UserWarning, stacklevel=5)


def dims_from_standard_axes(
    sizes: Mapping[str, int | Sequence[str | Position] | None],
    chunk_shapes: Mapping[str | StandardAxis, int] | None = None,
    shard_shapes: Mapping[str | StandardAxis, int] | None = None,
) -> list[Dimension]:
    """Dimensions from ``{"t": 10, "c": ["DAPI", "GFP"], "y": 512, "x": 512}``, in that order.

    As in ome-writers 0.3.2: x, y and z get the unit micrometer, t the unit second; chunks
    default to the whole frame for x and y and to one plane for the other axes.
    ``shard_shapes`` gives the shard size in chunks, as ``Dimension.shard_size_chunks``.
    """

    def key(m: Mapping | None, name: str) -> int | None:
        if not m:
            return None
        for k, v in m.items():
            if (k.value if isinstance(k, StandardAxis) else k) == name:
                return v
        return None

    allowed = [a.value for a in StandardAxis]
    out: list[Dimension] = []
    for raw_name, size in sizes.items():
        name = raw_name.value if isinstance(raw_name, StandardAxis) else str(raw_name)
        try:
            axis = StandardAxis(name)
        except ValueError as e:
            raise ValueError(f"dims_from_standard_axes: {name!r} is not one of x,y,z,c,t,p "
                             f"(Standard axes names must be one of {allowed})") from e
        count, coords = (size, None) if size is None or isinstance(size, int) else (None, list(size))
        if axis is StandardAxis.POSITION:
            out.append(axis.to_dimension(count=count, coords=coords))
            continue
        chunk = key(chunk_shapes, name)
        if chunk is None:
            chunk = size if axis in (StandardAxis.X, StandardAxis.Y) and isinstance(size, int) \
                else 1
        out.append(axis.to_dimension(count=count, coords=coords, chunk_size=chunk,
                                     shard_size_chunks=key(shard_shapes, name)))
    return out
