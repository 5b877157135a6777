"""Settings from a useq-schema ``MDASequence`` (pymmcore-plus acquisitions). Optional: needs
the ``useq-schema`` package (``pip install ome-writers-service[useq]``).

Follows ``ome_writers.useq_to_acquisition_settings`` of ome-writers 0.3.2: the same dimensions,
positions, plate and the same ``NotImplementedError`` for sequences whose frames do not form a
regular N-dimensional array (ragged sequences). The sequence's ``axis_order`` is the
acquisition order. Stage positions (``p``) and grid positions (``g``) are meta-dimensions:
together they become one position dimension, so they must be adjacent in the axis order (as in
pymmcore-plus' default "tpgcz").

Where this differs from 0.3.2: a time plan with interval 0 gets no time scale (0.3.2 writes a
scale of 0, which OME-Zarr viewers cannot use), and ``units`` also accepts a plain unit string
per axis (the scale then stays as derived from the sequence).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .schema import Channel, Dimension, Plate, Position, PositionDimension, StandardAxis

#: (scale, unit), e.g. ``(1.0, "second")``, as in ome-writers.
UnitTuple = tuple[float, str]


def dims_from_useq(
    seq: Any,
    image_width: int,
    image_height: int,
    *,
    units: Mapping[str, UnitTuple | str | None] | None = None,
    pixel_size_um: float | None = None,
    chunk_shapes: Mapping[str, int] | None = None,
    shard_shapes: Mapping[str, int] | None = None,
) -> list[Dimension]:
    """Dimensions, in acquisition order, of the frames ``seq`` produces."""
    try:
        from useq import Axis, MDASequence
        from useq import Position as UseqPosition
    except ImportError:
        raise ValueError("seq must be a useq.MDASequence (pip install useq-schema)") from None
    if "plate_row" not in UseqPosition.model_fields:  # pragma: no cover
        raise ImportError("useq-schema >= 0.9.2 is required (Position must have 'plate_row'); "
                          "pip install 'useq-schema>=0.9.2'")
    if not isinstance(seq, MDASequence):
        raise ValueError("seq must be a useq.MDASequence")  # noqa: TRY004 - as ome-writers

    _validate_sequence(seq)
    units = units or {}
    chunk_shapes = chunk_shapes or {}
    shard_shapes = shard_shapes or {}

    try:
        sizes: dict[str, int | None] = {str(k): v for k, v in seq.sizes.items()}
        used_axes = [str(a) for a in seq.used_axes]
    except ZeroDivisionError:
        # unbounded time (duration-based plan with interval 0): an unbounded t dimension
        stripped = seq.model_copy(update={"time_plan": None})
        sizes = {str(k): v for k, v in stripped.sizes.items()}
        sizes[str(Axis.TIME)] = None
        used_axes = [*(str(a) for a in stripped.used_axes), str(Axis.TIME)]

    has_positions = str(Axis.POSITION) in used_axes or str(Axis.GRID) in used_axes
    dims: list[Dimension] = []
    position_added = False
    for ax in (str(a) for a in seq.axis_order):
        if ax not in used_axes:
            continue
        if ax in (str(Axis.POSITION), str(Axis.GRID)):
            if not position_added and has_positions:
                positions = _build_positions(seq)
                if positions:
                    dims.append(PositionDimension(name="p", coords=positions))
                    position_added = True
            continue
        std = StandardAxis(ax)
        kw: dict[str, Any] = {"name": ax, "type": std.dimension_type(), "count": sizes[ax],
                              "scale": 1.0, "unit": std.unit(),
                              "chunk_size": chunk_shapes.get(ax),
                              "shard_size_chunks": shard_shapes.get(ax)}
        given = units.get(ax)
        if given:
            if isinstance(given, str):
                kw["unit"] = given
            else:
                kw["scale"], kw["unit"] = given
        elif std is StandardAxis.TIME and seq.time_plan is not None:
            if hasattr(seq.time_plan, "interval"):  # a multi-phase plan has none
                seconds = seq.time_plan.interval.total_seconds()
                kw["scale"] = seconds if seconds > 0 else None
                kw["unit"] = "second"
        elif std is StandardAxis.Z and seq.z_plan is not None:
            kw["unit"] = "micrometer"
            if getattr(seq.z_plan, "step", None):  # absolute/relative position lists have none
                kw["scale"] = seq.z_plan.step
        if std is StandardAxis.CHANNEL and seq.channels:
            kw["coords"] = [Channel(name=c.config) for c in seq.channels]
        dims.append(Dimension(**kw))

    if pixel_size_um is not None and pixel_size_um <= 0:
        warnings.warn(f"Invalid pixel_size_um={pixel_size_um}. Must be positive. Ignoring pixel "
                      "size.", UserWarning, stacklevel=2)
        pixel_size_um = None
    for ax, size in (("y", image_height), ("x", image_width)):
        dims.append(StandardAxis(ax).to_dimension(
            count=size, scale=pixel_size_um or None, chunk_size=chunk_shapes.get(ax),
            shard_size_chunks=shard_shapes.get(ax)))
    return dims


def useq_to_acquisition_settings(
    seq: Any,
    image_width: int,
    image_height: int,
    *,
    units: Mapping[str, UnitTuple | str | None] | None = None,
    pixel_size_um: float | None = None,
    chunk_shapes: Mapping[str, int] | None = None,
    shard_shapes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `AcquisitionSettings` (add ``root_path`` and ``dtype``):
    ``{"dimensions": [...], "plate": Plate | None}``.

    Raises NotImplementedError for sequences that are not a regular N-dimensional array:
    channels with ``do_stack=False`` together with a z plan, channels with
    ``acquire_every > 1``, stage positions whose sub-sequence has more than a grid plan,
    position and grid axes that are not adjacent in ``axis_order``, a ``WellPlatePlan``
    combined with an outer ``grid_plan``.
    """
    dims = dims_from_useq(seq, image_width, image_height, units=units,
                          pixel_size_um=pixel_size_um, chunk_shapes=chunk_shapes,
                          shard_shapes=shard_shapes)
    return {"dimensions": dims, "plate": _plate_from_useq(seq)}


def _validate_sequence(seq: Any) -> None:
    """Reject sequences that give ragged data, without iterating their events."""
    from useq import Axis, WellPlatePlan

    order = [str(a) for a in seq.axis_order]
    p_axis, g_axis = str(Axis.POSITION), str(Axis.GRID)
    if p_axis in order and g_axis in order and abs(order.index(p_axis) - order.index(g_axis)) != 1:
        raise NotImplementedError(
            f"Cannot handle axis_order={tuple(order)} with non-adjacent position and grid "
            "axes. We flatten (p,g) into a single position dimension, which requires them "
            "to be adjacent in iteration order."
        )
    if seq.z_plan and seq.channels and any(c.do_stack is False for c in seq.channels):
        raise NotImplementedError(
            "Sequences with Channel.do_stack=False values are not supported. This creates "
            "ragged dimensions where different channels have different z-stack sizes."
        )
    if seq.channels and {c.acquire_every for c in seq.channels} != {1}:
        raise NotImplementedError(
            "Sequences with Channel.acquire_every > 1 are not supported. This creates ragged "
            "dimensions where different channels have different numbers of timepoints."
        )
    is_plate = isinstance(seq.stage_positions, WellPlatePlan)
    if is_plate and seq.grid_plan:
        raise NotImplementedError("WellPlatePlan with grid_plan is not supported. Use "
                                  "well_points_plan on the WellPlatePlan instead.")
    if not is_plate:
        for i, pos in enumerate(seq.stage_positions):
            sub = pos.sequence
            if sub and (sub.time_plan or sub.channels or sub.z_plan):
                raise NotImplementedError(
                    "Ragged dimensions detected: different positions have different "
                    f"dimensionality (position {pos.name or i!r} has its own time, channel or z "
                    "plan). Position subsequences may only contain grid_plan."
                )


def _build_positions(seq: Any) -> list[Position]:
    from useq import WellPlatePlan

    if isinstance(seq.stage_positions, WellPlatePlan):
        return _well_plate_positions(seq.stage_positions)
    if seq.stage_positions:
        return _stage_positions(seq)
    if seq.grid_plan is not None:
        return [Position(name=f"{i:04d}", grid_row=gp.grid_row, grid_column=gp.grid_col,
                         x_coord=gp.x, y_coord=gp.y, z_coord=gp.z)
                for i, gp in enumerate(seq.grid_plan)]
    return []


def _well_plate_positions(plan: Any) -> list[Position]:
    """The plan's fields in the order they are visited, named fov0, fov1, ... within a well."""
    from useq import RelativePosition

    wpp = plan.well_points_plan
    fovs = [wpp] if isinstance(wpp, RelativePosition) else list(wpp)
    out = []
    for i, pos in enumerate(plan):
        k = i % len(fovs)
        out.append(Position(
            name=f"fov{k}", plate_row=_row_letter(pos.plate_row),
            plate_column=str((pos.plate_col or 0) + 1), grid_row=fovs[k].grid_row,
            grid_column=fovs[k].grid_col, x_coord=pos.x, y_coord=pos.y,
        ))
    return out


def _row_letter(index: int) -> str:
    """0 -> A, 1 -> B, ..., 25 -> Z, 26 -> AA."""
    name = ""
    while index >= 0:
        name = chr(index % 26 + 65) + name
        index = index // 26 - 1
    return name


def _plate_strs(pos: Any) -> tuple[str | None, str | None]:
    """useq's 0-based plate_row / plate_col as well names ("A", "1")."""
    if pos.plate_row is not None and pos.plate_col is not None:
        return _row_letter(pos.plate_row), str(pos.plate_col + 1)
    if (pos.plate_row is None) != (pos.plate_col is None):
        warnings.warn(f"Position {pos.name!r} has plate_row={pos.plate_row} but plate_col="
                      f"{pos.plate_col}. Both must be set. Ignoring plate info.",
                      UserWarning, stacklevel=3)
    return None, None


def _with_grid_point(name: str, pos: Any, gp: Any, gp_idx: int = 0,
                     pos_idx: int | None = None) -> Position:
    if not gp.is_relative:  # an absolute grid gives the coordinates itself
        x, y = gp.x, gp.y
    else:
        x, y = (pos.x or 0) + (gp.x or 0), (pos.y or 0) + (gp.y or 0)
    if gp.grid_row is None and gp.grid_col is None:  # e.g. random points: index the name
        if pos_idx is not None:
            suffix = f"p{pos_idx:04d}_g{gp_idx:04d}"
            name = f"{name}_{suffix}" if name else suffix
        else:
            name = f"{name}_g{gp_idx:04d}" if name else f"{gp_idx:04d}"
    row, col = _plate_strs(pos)
    return Position(name=name, grid_row=gp.grid_row, grid_column=gp.grid_col, plate_row=row,
                    plate_column=col, x_coord=x, y_coord=y, z_coord=pos.z)


def _stage_positions(seq: Any) -> list[Position]:
    from useq import Axis

    global_grid = list(seq.grid_plan) if seq.grid_plan else None
    order = [str(a) for a in seq.axis_order]
    grid_first = (global_grid is not None and str(Axis.GRID) in order
                  and str(Axis.POSITION) in order
                  and order.index(str(Axis.GRID)) < order.index(str(Axis.POSITION)))
    if grid_first and global_grid:
        return [_with_grid_point(pos.name or str(p), pos, gp)
                for gp in global_grid for p, pos in enumerate(seq.stage_positions)]
    out: list[Position] = []
    n = len(seq.stage_positions)
    for p, pos in enumerate(seq.stage_positions):
        name = pos.name or str(p)
        grid = pos.sequence.grid_plan if pos.sequence and pos.sequence.grid_plan else global_grid
        if grid:
            out.extend(_with_grid_point(name, pos, gp, g, p if n > 1 else None)
                       for g, gp in enumerate(grid))
        else:
            row, col = _plate_strs(pos)
            out.append(Position(name=name, x_coord=pos.x, y_coord=pos.y, z_coord=pos.z,
                                grid_row=pos.grid_row, grid_column=pos.grid_col,
                                plate_row=row, plate_column=col))
    return out


def position_index_of(seq: Any) -> Callable[[Mapping[str, int]], int]:
    """The position dimension's index of an event index {axis: i}: stage position ``p`` and
    grid point ``g`` flattened in the order `_build_positions` lists them."""
    from useq import Axis, WellPlatePlan

    p_ax, g_ax = str(Axis.POSITION), str(Axis.GRID)
    plan = seq.stage_positions
    if isinstance(plan, WellPlatePlan) or not plan:
        if not plan and seq.grid_plan is not None:
            return lambda index: index.get(g_ax, 0)
        return lambda index: index.get(p_ax, 0)
    order = [str(a) for a in seq.axis_order]
    global_grid = list(seq.grid_plan) if seq.grid_plan else None
    if global_grid and p_ax in order and g_ax in order and order.index(g_ax) < order.index(p_ax):
        n = len(plan)
        return lambda index: index.get(g_ax, 0) * n + index.get(p_ax, 0)
    offsets, k = [], 0
    for pos in plan:
        offsets.append(k)
        grid = pos.sequence.grid_plan if pos.sequence and pos.sequence.grid_plan else global_grid
        k += len(list(grid)) if grid else 1
    return lambda index: offsets[index.get(p_ax, 0)] + index.get(g_ax, 0)


def _plate_from_useq(seq: Any) -> Plate | None:
    """The plate of a WellPlatePlan, or one inferred from positions' plate_row/plate_col."""
    import useq

    plan = seq.stage_positions
    if isinstance(plan, useq.WellPlatePlan):
        return Plate(row_names=[_row_letter(i) for i in range(plan.plate.rows)],
                     column_names=[str(i + 1) for i in range(plan.plate.columns)],
                     name=plan.plate.name or None)
    rows = {p.plate_row for p in plan if p.plate_row is not None and p.plate_col is not None}
    cols = {p.plate_col for p in plan if p.plate_row is not None and p.plate_col is not None}
    if rows and cols:
        return Plate(row_names=[_row_letter(i) for i in range(max(rows) + 1)],
                     column_names=[str(i + 1) for i in range(max(cols) + 1)])
    return None
