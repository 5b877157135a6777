"""The axes of an acquisition (`Dimension`, `PositionDimension`, `StandardAxis`) and what
their coordinates can be (`Channel`, `Position`, `Plate`), as in ome-writers 0.3.2."""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, ClassVar, Literal

from pydantic import PositiveInt, ValidationInfo, field_validator, model_validator
from pydantic_extra_types.color import Color

from .schema_base import _TYPE_OF_NAME, DimensionType, XmlName, XmlStr, _Model, _strict
from .units import accepted_units, ngff_unit, unit_kind


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

    def unit(self) -> str | None:
        """The unit ome-writers gives this axis: micrometer for x, y, z; second for t."""
        return {"x": "micrometer", "y": "micrometer", "z": "micrometer",
                "t": "second"}.get(self.value)

    def to_dimension(
        self,
        *,
        count: int | None = None,
        coords: list[str | Position] | None = None,
        chunk_size: int | None = None,
        shard_size_chunks: int | None = None,
        scale: float | None = None,
    ) -> Dimension:
        """A `Dimension` of this axis (a `PositionDimension` for ``p``)."""
        if self is StandardAxis.POSITION:
            return PositionDimension(name=self.value, count=count, coords=coords)
        return Dimension(
            name=self.value, count=count, coords=coords, type=self.dimension_type(),
            unit=self.unit(), chunk_size=chunk_size, shard_size_chunks=shard_size_chunks,
            scale=scale,
        )


class Channel(_Model):
    """One channel of the image: name, light path and display color.

    A plain string validates as ``Channel(name=string)``, as in ome-writers.
    """

    name: XmlName
    excitation_wavelength_nm: PositiveInt | None = None
    emission_wavelength_nm: PositiveInt | None = None
    fluorophore: XmlStr | None = None
    color: Color | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class Position(_Model):
    """A stage position: its own image. Positions sharing a plate well are that well's fields.

    A plain string validates as ``Position(name=string)``, as in ome-writers.
    """

    name: XmlName
    plate_row: XmlStr | None = None
    plate_column: XmlStr | None = None
    grid_row: int | None = None
    grid_column: int | None = None
    x_coord: float | None = None
    y_coord: float | None = None
    z_coord: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _pairs(self) -> Position:
        if (self.plate_row is None) != (self.plate_column is None):
            raise ValueError(
                f"position {self.name!r}: plate_row and plate_column must both be set or both "
                f"be None (plate_row={self.plate_row!r}, plate_column={self.plate_column!r})"
            )
        if (self.grid_row is None) != (self.grid_column is None):
            raise ValueError(
                f"position {self.name!r}: grid_row and grid_column must both be set or both be "
                f"None (grid_row={self.grid_row!r}, grid_column={self.grid_column!r})"
            )
        return self


#: Plate row and column names become zarr paths; OME-Zarr allows only these.
_WELL_NAME = re.compile(r"^[A-Za-z0-9]+$")


class Plate(_Model):
    """An HCS plate: the row and column names its wells are addressed by."""

    row_names: list[str]
    column_names: list[str]
    name: XmlStr | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Plate:
        for field in ("row_names", "column_names"):
            names = getattr(self, field)
            if not names:
                raise ValueError(f"Plate.{field} must not be empty")
            if len(set(names)) != len(names):
                raise ValueError(f"Plate.{field} has duplicates: {names}")
            bad = [n for n in names if not _WELL_NAME.match(n)]
            if bad:
                raise ValueError(
                    f"Plate.{field}: {bad} are not valid row/column names; OME-Zarr allows "
                    "only letters and digits (^[A-Za-z0-9]+$)"
                )
        return self

    @classmethod
    def from_standard_wells(cls, num_wells_or_shape: int | tuple[int, int]) -> Plate:
        """A plate of a standard well count (6, 12, 24, 48, 96, 384, 1536) or of a
        ``(rows, columns)`` shape: rows A, B, ..., Z, AA, BB, ...; columns 1, 2, ..."""
        if not isinstance(num_wells_or_shape, tuple):
            standard = {6: (2, 3), 12: (3, 4), 24: (4, 6), 48: (6, 8), 96: (8, 12),
                        384: (16, 24), 1536: (32, 48)}
            if num_wells_or_shape not in standard:
                raise ValueError(
                    f"Unrecognized standard plate size: {num_wells_or_shape}. "
                    f"Supported sizes: {list(standard)}"
                )
            n_rows, n_cols = standard[num_wells_or_shape]
        else:
            if len(num_wells_or_shape) != 2 or not all(int(x) > 0 for x in num_wells_or_shape):
                raise ValueError(
                    "If providing a tuple for plate shape, it must be (n_rows, n_columns) with "
                    "positive integers."
                )
            n_rows, n_cols = (int(x) for x in num_wells_or_shape)

        def row_name(i: int) -> str:
            return chr(ord("A") + i % 26) * (i // 26 + 1)

        return cls(row_names=[row_name(i) for i in range(n_rows)],
                   column_names=[str(i + 1) for i in range(n_cols)])


def _infer_dim_type(name: str, coords: Sequence[Any] | None,
                    unit: str | None) -> DimensionType | None:
    """The type ome-writers 0.3.2 infers (coords first, then unit), then from a standard name;
    None when nothing says."""
    from_coords: DimensionType | None = None
    if coords:
        if any(isinstance(c, Channel) for c in coords):
            from_coords = "channel"
        elif any(isinstance(c, Position) for c in coords):
            from_coords = "position"
    from_unit: DimensionType | None = unit_kind(unit)  # type: ignore[assignment]
    if from_coords and from_unit and from_coords != from_unit:
        raise ValueError(
            f"dimension {name!r}: conflicting dimension type inference: coords suggests "
            f"type='{from_coords}' but unit suggests type='{from_unit}' ({unit!r}). Please specify "
            "an explicit `type` or remove the conflicting field."
        )
    from_name = _TYPE_OF_NAME.get(name.lower())
    if from_unit and from_name and from_name != from_unit and not from_coords:
        warnings.warn(
            f"dimension {name!r}: unit {unit!r} makes it a {from_unit} axis, although its name "
            f"is the standard name of a {from_name} axis; set `type` to silence this",
            UserWarning, stacklevel=4,
        )
    return from_coords or from_unit or from_name


def _coerce_coords(name: str, coords: list[Any], dim_type: str) -> list[Any]:
    """Coords checked against the dimension type, and cast to Channel / Position models."""
    has_channel = any(isinstance(c, Channel) for c in coords)
    has_position = any(isinstance(c, Position) for c in coords)
    if has_channel and has_position:
        raise ValueError(f"dimension {name!r}: May not mix Channel objects with Position "
                         "objects in coords")
    if has_channel:
        if not all(isinstance(c, (str, Channel)) for c in coords):
            raise ValueError(f"dimension {name!r}: May not mix Channel objects with other "
                             "coord types")
        if dim_type != "channel":
            raise ValueError(f"dimension {name!r}: Channel objects in coords require "
                             f"type='channel', got type='{dim_type}'")
    if has_position:
        if not all(isinstance(c, (str, int, Position)) for c in coords):
            raise ValueError(f"dimension {name!r}: May not mix Position objects with other "
                             "coord types")
        if dim_type != "position":
            raise ValueError(f"dimension {name!r}: Position objects in coords require "
                             f"type='position', got type='{dim_type}'")
    if dim_type == "channel":
        out = [c if isinstance(c, Channel) else Channel(name=_coord_name(c)) for c in coords]
        dupes = sorted(n for n, k in Counter(c.name for c in out).items() if k > 1)
        if dupes:
            raise ValueError(f"dimension {name!r}: Channel names must be unique; duplicates: "
                             f"{dupes}")
        return out
    if dim_type == "position":
        out = [c if isinstance(c, Position) else Position(name=_coord_name(c)) for c in coords]
        _check_position_names(name, out)
        return out
    return coords


def _coord_name(c: Any) -> str:
    if isinstance(c, float) and c.is_integer():
        return str(int(c))
    return str(c)


def _check_position_names(dim_name: str, positions: Sequence[Position]) -> None:
    """Names unique within each well / grid cell (globally for positions with neither), as
    ome-writers requires."""
    groups: dict[tuple, Counter] = defaultdict(Counter)
    for p in positions:
        groups[(p.plate_row, p.plate_column, p.grid_row, p.grid_column)][p.name] += 1
    for key, counts in groups.items():
        dupes = sorted(n for n, k in counts.items() if k > 1)
        if not dupes:
            continue
        if all(v is None for v in key):
            raise ValueError(f"dimension {dim_name!r}: positions without row/column must have "
                             f"unique names; duplicates: {dupes} (no plate or grid "
                             "coordinates tell them apart)")
        plate_row, plate_column, grid_row, grid_column = key
        where = []
        if plate_row is not None:
            where.append(f"well ({plate_row!r}, {plate_column!r})")
        if grid_row is not None:
            where.append(f"grid position ({grid_row}, {grid_column})")
        raise ValueError(f"dimension {dim_name!r}: Position names must be unique within each "
                         f"group; duplicates in {', '.join(where)}: {dupes}")


class Dimension(_Model):
    """One axis of the acquisition. ``count=None`` means unbounded (first dimension only).

    When ``type`` is not given it is inferred as ome-writers 0.3.2 does — from ``coords``
    (Channel objects: channel, Position objects: position), then from ``unit`` (a unit of
    length: space, of time: time) — and then from a standard name (x, y, z, t, c, p); it is
    "other" when nothing says. Units of space and time axes are stored as their OME-Zarr
    (UDUNITS-2) names: ``unit="um"`` reads back as "micrometer".
    """

    #: A subclass whose type is fixed (PositionDimension).
    _FIXED_TYPE: ClassVar[DimensionType | None] = None

    name: str
    count: PositiveInt | None = None
    type: DimensionType | None = None
    coords: list[str | float | Channel | Position] | None = None
    chunk_size: PositiveInt | None = None
    shard_size_chunks: PositiveInt | None = None
    unit: str | None = None
    scale: float | None = None
    translation: float | None = None

    @field_validator("coords", mode="before")
    @classmethod
    def _coord_mappings(cls, v: Any, info: ValidationInfo) -> Any:
        # {"name": ...} fits both Channel and Position: decide by the other keys, else by the
        # dimension's type or standard name
        if not isinstance(v, (list, tuple)) or not any(isinstance(c, Mapping) for c in v):
            return v
        position_keys = set(Position.model_fields) - {"name"}
        channel_keys = set(Channel.model_fields) - {"name"}
        kinds = set()
        for c in v:
            if isinstance(c, Mapping):
                if position_keys & set(c):
                    kinds.add("position")
                elif channel_keys & set(c):
                    kinds.add("channel")
            elif isinstance(c, (Channel, Position)):
                kinds.add("channel" if isinstance(c, Channel) else "position")
        if len(kinds) == 1:
            kind = kinds.pop()
        else:
            kind = info.data.get("type") or _TYPE_OF_NAME.get(str(info.data.get("name", "")).lower())
        model = Position if kind == "position" else Channel
        return [model.model_validate(c, strict=_strict(info), context=info.context)
                if isinstance(c, Mapping) else c for c in v]

    @model_validator(mode="after")
    def _infer_and_check(self) -> Dimension:
        name = self.name
        if not name:
            raise ValueError("Dimension.name must not be empty")
        fields_set = self.model_fields_set
        for field in ("type", "count", "coords"):
            if getattr(self, field) is None:
                fields_set.discard(field)  # None given explicitly: derived, like not given
        derived: dict[str, Any] = {}
        if self.type == "position" or self._FIXED_TYPE == "position":
            # as ome-writers 0.3.2 (its words and type): positions are listed up front
            if self.coords is not None and len(self.coords) == 0:
                raise NotImplementedError(f"dimension {name!r}: Empty coords for position "
                                          "dimensions are not yet implemented")
            if self._FIXED_TYPE is None and self.coords is None and self.count is None:
                raise NotImplementedError(f"dimension {name!r}: Unbounded position dimensions "
                                          "(count=None) are not yet implemented")
        if self.coords is not None and len(self.coords) == 0:
            raise ValueError(f"dimension {name!r}: coords is empty; give at least one coord "
                             "(or a count instead of coords)")
        user_coords = self.coords if self._given("coords") else None

        if self._FIXED_TYPE is not None:
            dim_type: str = self._FIXED_TYPE
        elif self._given("type"):
            dim_type = self.type  # type: ignore[assignment]
        else:
            dim_type = _infer_dim_type(name, user_coords, self.unit) or "other"
        derived["type"] = dim_type

        coords = None
        if user_coords is not None:
            coords = _coerce_coords(name, user_coords, dim_type)
            if self._given("count") and self.count != len(coords):
                raise ValueError(
                    f"dimension {name!r}: count={self.count} but {len(coords)} coords given"
                )
            derived["count"] = len(coords)
        elif dim_type == "position" and self.count is not None:
            coords = [Position(name=str(i)) for i in range(self.count)]
        derived["coords"] = coords

        unit = self.unit
        if unit is not None and dim_type in ("space", "time"):
            kind = unit_kind(unit)
            if kind is None:
                what = "length" if dim_type == "space" else "time"
                raise ValueError(
                    f"dimension {name!r}: Unrecognized unit of {what} {unit!r} for a "
                    f"{dim_type} axis; accepted: {accepted_units(dim_type)} (or their "
                    "symbols, e.g. 'um', 'nm', 'ms', 's')"
                )
            if kind != dim_type:
                raise ValueError(
                    f"dimension {name!r}: unit {unit!r} is a unit of "
                    f"{'length' if kind == 'space' else 'time'}, but {name!r} is a "
                    f"{dim_type} axis (type={dim_type!r})"
                )
            derived["unit"] = ngff_unit(unit)

        count = derived.get("count", self.count)
        if self.chunk_size is not None and count is not None and self.chunk_size > count:
            raise ValueError(
                f"dimension {name!r}: chunk_size={self.chunk_size} is larger than count={count}"
            )
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"dimension {name!r}: scale must be a positive finite number, "
                             f"not {self.scale}")
        if self.translation is not None and not math.isfinite(self.translation):
            raise ValueError(f"dimension {name!r}: translation must be a finite number, "
                             f"not {self.translation}")
        self.__dict__.update(derived)
        return self

    @property
    def type_guessed(self) -> bool:
        """True when nothing (type, coords, unit, standard name) said what this axis is."""
        return (self._FIXED_TYPE is None and "type" not in self.model_fields_set
                and _infer_dim_type_quiet(self) is None)

    @property
    def is_position(self) -> bool:
        return self.type == "position"

    @property
    def channels(self) -> list[Channel] | None:
        """Channel coords, when this is a channel axis that names them."""
        if self.type == "channel" and self.coords:
            return [c if isinstance(c, Channel) else Channel(name=str(c)) for c in self.coords]
        return None


def _infer_dim_type_quiet(d: Dimension) -> DimensionType | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coords = d.coords if "coords" in d.model_fields_set else None
        return _infer_dim_type(d.name, coords, d.unit)


class PositionDimension(Dimension):
    """The stage-position meta-dimension: each coord is a `Position`, each one its own image.

    ``positions=[...]`` is accepted for ``coords=[...]``, as in ome-writers.
    """

    _FIXED_TYPE: ClassVar[DimensionType | None] = "position"

    name: str = "p"
    type: Literal["position"] = "position"
    coords: list[Position] | None = None

    @model_validator(mode="before")
    @classmethod
    def _positions_keyword(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "positions" in data:
            data = dict(data)
            positions = data.pop("positions")
            if data.get("coords") is not None:
                raise ValueError("PositionDimension: give positions or coords, not both")
            data["coords"] = positions
        return data

    @field_validator("coords", mode="before")
    @classmethod
    def _names_to_positions(cls, v: Any) -> Any:
        if v is None:
            return v
        return [Position(name=_coord_name(p)) if isinstance(p, (str, int, float)) else p
                for p in v]
