"""Settings from a useq-schema ``MDASequence`` (pymmcore-plus acquisitions). Optional: needs
the ``useq-schema`` package (``pip install ome-writers-service[useq]``).

The sequence's ``axis_order`` is the acquisition order. Stage positions (``p``) and grid
positions (``g``) are meta-dimensions: together they become one position dimension, so they
must be adjacent in the axis order (as in pymmcore-plus' default "tpgcz").
"""

from __future__ import annotations

from typing import Any, Mapping

from .schema import Channel, Dimension, Position, PositionDimension

_UNIT_DEFAULTS = {"t": "s", "z": "um", "y": "um", "x": "um"}


def dims_from_useq(
    seq: Any,
    image_width: int,
    image_height: int,
    *,
    units: Mapping[str, str] | None = None,
    pixel_size_um: float | None = None,
    chunk_shapes: Mapping[str, int] | None = None,
    shard_shapes: Mapping[str, int] | None = None,
) -> list[Dimension]:
    """Dimensions, in acquisition order, of the frames ``seq`` produces."""
    units = {**_UNIT_DEFAULTS, **(units or {})}
    chunks, shards = dict(chunk_shapes or {}), dict(shard_shapes or {})
    if any(getattr(p, "sequence", None) for p in seq.stage_positions):
        raise NotImplementedError("stage positions with their own sub-sequence give jagged "
                                  "data; write them as separate streams")
    sizes = {str(k): v for k, v in seq.sizes.items() if v > 0}
    order = [str(a) for a in seq.axis_order if sizes.get(str(a), 0) > 0]
    if "p" in order and "g" in order and abs(order.index("p") - order.index("g")) != 1:
        raise NotImplementedError(f"axis_order {''.join(order)!r}: p and g must be adjacent to "
                                  "form one position dimension")
    dims: list[Dimension] = []
    positions_done = False
    for axis in order:
        n = sizes[axis]
        if axis in ("p", "g"):
            if not positions_done:
                dims.append(PositionDimension(coords=_positions(seq, order, image_width,
                                                                image_height, pixel_size_um)))
                positions_done = True
            continue
        kw: dict[str, Any] = {"name": axis, "count": n, "chunk_size": chunks.get(axis),
                              "shard_size_chunks": shards.get(axis)}
        if axis == "t":
            interval = getattr(seq.time_plan, "interval", None)
            seconds = interval.total_seconds() if interval is not None else None
            kw.update(type="time", unit=units["t"], scale=seconds or None)
        elif axis == "z":
            kw.update(type="space", unit=units["z"], scale=getattr(seq.z_plan, "step", None))
        elif axis == "c":
            kw.update(type="channel",
                      coords=[Channel(name=c.config) for c in seq.channels])
            kw.pop("count")
        else:
            kw["type"] = "other"
        dims.append(Dimension(**kw))
    for axis, size in (("y", image_height), ("x", image_width)):
        dims.append(Dimension(name=axis, count=size, type="space", unit=units[axis],
                              scale=pixel_size_um, chunk_size=chunks.get(axis),
                              shard_size_chunks=shards.get(axis)))
    return dims


def _positions(seq: Any, order: list[str], width: int, height: int,
               pixel_size_um: float | None) -> list[Position]:
    stage = list(seq.stage_positions) or [None]
    grid: list[Any] = [None]
    if seq.grid_plan is not None and "g" in order:
        px = pixel_size_um or 1.0
        grid = list(seq.grid_plan.iter_grid_positions(fov_width=width * px,
                                                      fov_height=height * px))
    p_first = "g" not in order or "p" not in order or order.index("p") < order.index("g")
    pairs = [(p, g) for p in range(len(stage)) for g in range(len(grid))] if p_first else \
        [(p, g) for g in range(len(grid)) for p in range(len(stage))]
    out = []
    for p, g in pairs:
        sp, gp = stage[p], grid[g]
        name = (getattr(sp, "name", None) or f"p{p:03d}") if sp is not None else "p000"
        kw: dict[str, Any] = {"name": name}
        if sp is not None:
            kw.update(x_coord=sp.x, y_coord=sp.y, z_coord=sp.z)
            if getattr(sp, "plate_row", None) is not None:  # a well of a useq plate plan
                kw.update(plate_row=str(sp.plate_row), plate_column=str(sp.plate_col))
        if gp is not None:
            kw["name"] = f"{name}_g{g:03d}" if len(grid) > 1 else name
            kw.update(grid_row=getattr(gp, "grid_row", None),
                      grid_column=getattr(gp, "grid_col", None))
            if getattr(gp, "is_relative", True) and sp is not None and sp.x is not None:
                kw["x_coord"] = sp.x + (gp.x or 0.0)
                kw["y_coord"] = (sp.y or 0.0) + (gp.y or 0.0)
            elif not getattr(gp, "is_relative", True):
                kw.update(x_coord=gp.x, y_coord=gp.y)
        out.append(Position(**kw))
    return out


def useq_to_acquisition_settings(
    seq: Any,
    image_width: int,
    image_height: int,
    *,
    units: Mapping[str, str] | None = None,
    pixel_size_um: float | None = None,
    chunk_shapes: Mapping[str, int] | None = None,
    shard_shapes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `AcquisitionSettings` (add ``root_path`` and ``dtype``)."""
    return {"dimensions": dims_from_useq(seq, image_width, image_height, units=units,
                                         pixel_size_um=pixel_size_um, chunk_shapes=chunk_shapes,
                                         shard_shapes=shard_shapes)}
