"""How much memory an acquisition's chunk buffers can take, known before the first frame.

OME-Zarr frames are assembled into whole write units (a chunk, or a shard) before they are
encoded: a frame waits in a buffer until its unit is complete. How many units are open at
once follows from the acquisition order: take the slowest acquisition axis whose unit spans
several of its steps (the *band* axis); while the acquisition crosses one unit's worth of its
steps, every unit of every faster axis (and of every position) has been opened and none can
be completed, so all of them are open together. Written units wait for their write to finish
(at most `MAX_PENDING_WRITES` of them, `MAX_PENDING_BYTES` together) before their buffers come
back. That worst case is what a stream is admitted with: the daemon refuses a stream whose
buffers could outgrow its memory budget instead of letting the OOM killer end every stream.

Resolution levels (``levels`` > 1) assemble their own units beside level 0's, each a quarter
of the one above: they count too (`BufferEstimate.level_bytes`).

OME-TIFF writes each frame as a page when it arrives: no buffers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .schema import AcquisitionSettings

#: How many written-but-uncommitted write units may be in flight before the writer waits,
#: and how many bytes of them (at least one unit is always in flight).
MAX_PENDING_WRITES = 16
MAX_PENDING_BYTES = 256 * 2**20


def write_unit(settings: AcquisitionSettings) -> tuple[int, ...]:
    """Extent of one write unit along each storage axis but the frame's: a chunk, or a shard
    when the array is sharded; never more than the axis."""
    dims = settings.storage_dimensions
    outer = dims[:-2]
    sharded = any(d.shard_size_chunks for d in dims)
    unit = [(d.chunk_size or 1) * ((d.shard_size_chunks or 1) if sharded else 1)
            for d in outer]
    return tuple(u if d.count is None else min(u, d.count) for u, d in zip(unit, outer))


@dataclass(frozen=True)
class BufferEstimate:
    """The worst case of an acquisition's chunk buffers, and why."""

    unit_bytes: int  #: bytes of one write unit's buffer
    open_units: int  #: units that can be open (waiting for frames) at once
    pending_units: int  #: units that can be waiting for their write to finish
    band_axis: str | None  #: the slowest acquisition axis whose unit spans several steps
    band_unit: int  #: that axis's unit (chunk, or chunk x shard) in steps
    inside: tuple[tuple[str, int], ...]  #: (axis, units along it) faster than the band axis
    #: bytes of the lower resolution levels' units beside each unit (0: one level)
    level_bytes: int = 0

    @property
    def total(self) -> int:
        return (self.open_units + self.pending_units) * (self.unit_bytes + self.level_bytes)

    def explain(self) -> str:
        """What holds the memory and what to change, for an error message."""
        mib = f"{self.unit_bytes / 2**20:.1f} MiB"
        writing = f"up to {self.pending_units} chunks of {mib} wait for their write"
        if self.band_axis is None:
            return f"no chunk spans several frames; {writing}"
        along = [(a, n) for a, n in self.inside if n > 1]
        if self.open_units == 1:
            held = f"one chunk of {mib} fills at a time"
        else:
            held = (f"{self.open_units} chunks ({' x '.join(f'{n} along {a!r}' for a, n in along)})"
                    f" of {mib} each stay open while they fill")
        advice = f"lower the chunk_size (or shard_size_chunks) of {self.band_axis!r}"
        if along:
            advice += (f", or acquire {', '.join(repr(a) for a, _ in along)} before "
                       f"{self.band_axis!r}")
        return (f"the chunks of axis {self.band_axis!r} span {self.band_unit} of its steps, so "
                f"{held}, and {writing}: {advice}")


def estimate(settings: AcquisitionSettings) -> BufferEstimate:
    """The worst case of ``settings``' chunk buffers (OME-Zarr; nothing for other formats)."""
    if getattr(settings.format, "name", None) != "ome-zarr":
        return BufferEstimate(0, 0, 0, None, 1, ())
    storage = [d.name for d in settings.storage_dimensions[:-2]]
    unit = dict(zip(storage, write_unit(settings)))
    unit_bytes = int(math.prod(unit.values())) * settings.frame_nbytes
    acquisition = settings.dimensions[:-2]  # slowest first, the position axis in place
    band = next((i for i, d in enumerate(acquisition) if unit.get(d.name, 1) > 1), None)
    if band is None:
        open_units, inside, band_name, band_unit = 0, (), None, 1
    else:
        inside = tuple((d.name, _positions(settings) if d.name not in unit else
                        -(-int(d.count) // unit[d.name])) for d in acquisition[band + 1:])
        open_units = int(math.prod(n for _, n in inside))
        band_name, band_unit = acquisition[band].name, unit[acquisition[band].name]
    pending = min(MAX_PENDING_WRITES, max(1, MAX_PENDING_BYTES // max(1, unit_bytes))) + 1
    planes = int(math.prod(unit.values()))
    y, x = settings.frame_shape
    level_pixels = 0
    for _ in range(getattr(settings.format, "levels", 1) - 1):  # each halves y and x
        y, x = -(-y // 2), -(-x // 2)
        level_pixels += y * x
    itemsize = settings.frame_nbytes // max(1, math.prod(settings.frame_shape))
    level_bytes = planes * level_pixels * itemsize
    return BufferEstimate(unit_bytes, open_units, pending, band_name, band_unit, inside,
                          level_bytes)


def _positions(settings: AcquisitionSettings) -> int:
    return max(1, len(settings.positions))


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def parse_size(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}.get(t[-1:], 1)
    number = t[:-1] if scale > 1 else t
    value = float(number)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"not a positive size: {text!r}")
    return int(value * scale)


__all__ = ["MAX_PENDING_BYTES", "MAX_PENDING_WRITES", "BufferEstimate", "estimate",
           "parse_size", "physical_memory", "write_unit"]
