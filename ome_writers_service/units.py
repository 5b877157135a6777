"""Unit names as users write them ("um", "µm", "ms") mapped to what each format requires.

OME-Zarr wants UDUNITS-2 names ("micrometer"); OME-XML wants its UnitsLength / UnitsTime
symbols ("µm", "ms"). One table here keeps the two in agreement.
"""

from __future__ import annotations

# canonical NGFF name -> (OME-XML symbol, kind)
_UNITS: dict[str, tuple[str, str]] = {
    "angstrom": ("Å", "space"),
    "nanometer": ("nm", "space"),
    "micrometer": ("µm", "space"),
    "millimeter": ("mm", "space"),
    "centimeter": ("cm", "space"),
    "meter": ("m", "space"),
    "picosecond": ("ps", "time"),
    "nanosecond": ("ns", "time"),
    "microsecond": ("µs", "time"),
    "millisecond": ("ms", "time"),
    "second": ("s", "time"),
    "minute": ("min", "time"),
    "hour": ("h", "time"),
}

_ALIASES: dict[str, str] = {}
for _name, (_symbol, _) in _UNITS.items():
    _ALIASES[_name] = _name
    _ALIASES[_name + "s"] = _name
    _ALIASES[_symbol] = _name
_ALIASES.update({
    "um": "micrometer", "μm": "micrometer", "micron": "micrometer", "microns": "micrometer",
    "us": "microsecond", "μs": "microsecond", "sec": "second", "secs": "second",
    "min": "minute", "mins": "minute", "hr": "hour", "hrs": "hour", "A": "angstrom",
})


def ngff_unit(unit: str | None) -> str | None:
    """UDUNITS-2 name OME-Zarr accepts, or None for an unknown or absent unit."""
    if unit is None:
        return None
    return _ALIASES.get(unit.strip(), _ALIASES.get(unit.strip().lower()))


def ome_unit(unit: str | None) -> str | None:
    """OME-XML unit symbol ("µm", "s", ...), or None for an unknown or absent unit."""
    name = ngff_unit(unit)
    return _UNITS[name][0] if name else None


def unit_kind(unit: str | None) -> str | None:
    """"space" or "time" for a known unit."""
    name = ngff_unit(unit)
    return _UNITS[name][1] if name else None
