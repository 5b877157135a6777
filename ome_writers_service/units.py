"""Unit names as users write them ("um", "µm", "ms") mapped to what each format requires.

OME-Zarr wants UDUNITS-2 names ("micrometer"); OME-XML wants its UnitsLength / UnitsTime
symbols ("µm", "ms"). One table here keeps the two in agreement. It holds every unit OME-Zarr
v0.5 allows for space and time axes (the same set ome-writers 0.3.2 accepts), each with its
OME-XML symbol.
"""

from __future__ import annotations

# canonical NGFF name -> (OME-XML symbol, kind)
_UNITS: dict[str, tuple[str, str]] = {
    "angstrom": ("Å", "space"),
    "attometer": ("am", "space"),
    "centimeter": ("cm", "space"),
    "decimeter": ("dm", "space"),
    "exameter": ("Em", "space"),
    "femtometer": ("fm", "space"),
    "foot": ("ft", "space"),
    "gigameter": ("Gm", "space"),
    "hectometer": ("hm", "space"),
    "inch": ("in", "space"),
    "kilometer": ("km", "space"),
    "megameter": ("Mm", "space"),
    "meter": ("m", "space"),
    "micrometer": ("µm", "space"),
    "mile": ("mi", "space"),
    "millimeter": ("mm", "space"),
    "nanometer": ("nm", "space"),
    "parsec": ("pc", "space"),
    "petameter": ("Pm", "space"),
    "picometer": ("pm", "space"),
    "terameter": ("Tm", "space"),
    "yard": ("yd", "space"),
    "yoctometer": ("ym", "space"),
    "yottameter": ("Ym", "space"),
    "zeptometer": ("zm", "space"),
    "zettameter": ("Zm", "space"),
    "attosecond": ("as", "time"),
    "centisecond": ("cs", "time"),
    "day": ("d", "time"),
    "decisecond": ("ds", "time"),
    "exasecond": ("Es", "time"),
    "femtosecond": ("fs", "time"),
    "gigasecond": ("Gs", "time"),
    "hectosecond": ("hs", "time"),
    "hour": ("h", "time"),
    "kilosecond": ("ks", "time"),
    "megasecond": ("Ms", "time"),
    "microsecond": ("µs", "time"),
    "millisecond": ("ms", "time"),
    "minute": ("min", "time"),
    "nanosecond": ("ns", "time"),
    "petasecond": ("Ps", "time"),
    "picosecond": ("ps", "time"),
    "second": ("s", "time"),
    "terasecond": ("Ts", "time"),
    "yoctosecond": ("ys", "time"),
    "yottasecond": ("Ys", "time"),
    "zeptosecond": ("zs", "time"),
    "zettasecond": ("Zs", "time"),
}

_ALIASES: dict[str, str] = {}
for _name, (_symbol, _) in _UNITS.items():
    _ALIASES[_name] = _name
    _ALIASES[_name + "s"] = _name
    _ALIASES[_symbol] = _name
_ALIASES.update({
    "um": "micrometer", "μm": "micrometer", "u": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "A": "angstrom", "feet": "foot", "inches": "inch",
    "us": "microsecond", "μs": "microsecond", "usec": "microsecond", "µsec": "microsecond",
    "msec": "millisecond", "sec": "second", "secs": "second", "mins": "minute", "hr": "hour",
    "hrs": "hour", "days": "day",
})


def ngff_unit(unit: str | None) -> str | None:
    """UDUNITS-2 name OME-Zarr accepts, or None for an unknown or absent unit.

    Symbols of one or two characters are case-sensitive ("Mm" is a megameter, "mm" a
    millimeter), longer names are not (as in ome-writers 0.3.2).
    """
    if unit is None:
        return None
    text = str(unit).strip()
    if text in _ALIASES:
        return _ALIASES[text]
    if len(text) > 2:
        return _ALIASES.get(text.lower())
    return None


def ome_unit(unit: str | None) -> str | None:
    """OME-XML unit symbol ("µm", "s", ...), or None for an unknown or absent unit."""
    name = ngff_unit(unit)
    return _UNITS[name][0] if name else None


def unit_kind(unit: str | None) -> str | None:
    """"space" or "time" for a known unit."""
    name = ngff_unit(unit)
    return _UNITS[name][1] if name else None


def accepted_units(kind: str) -> list[str]:
    """The canonical names of the units accepted for a "space" or "time" axis."""
    return [name for name, (_, k) in _UNITS.items() if k == kind]
