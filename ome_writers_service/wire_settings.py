"""The settings of an ``open`` message on the wire: their JSON Schema, and the daemon's check.

PROTOCOL.md §4 and ``protocol/settings.schema.json`` (the committed output of
``ome-writers-service schema``) describe ``open.settings`` to clients in other languages. The
schema is generated from the settings models (`schema.AcquisitionSettings`), refined where the
wire is narrower than the Python API: one spelling per value (``"uint16"``, not numpy's
aliases), JSON types without coercion (``"5"`` is not a count), no in-process-only scratch
format. `parse` applies the same rules, so what the daemon accepts validates against the
schema; what it refuses fails the schema wherever a schema can say why.
"""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any

from pydantic import ValidationError

from .protocol import PROTOCOL_MINOR, PROTOCOL_VERSION
from .schema import (SUPPORTED_DTYPES, ZARR_ONLY_DTYPES, AcquisitionSettings,
                     ScratchFormat)

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
DTYPES = SUPPORTED_DTYPES + ZARR_ONLY_DTYPES
#: The strings ``format`` takes on the wire: the format names, and the backend names of
#: ome-writers 0.3.2 (each writes the format it names).
FORMAT_NAMES = ("auto", "ome-zarr", "zarr", "tensorstore", "acquire-zarr", "zarr-python",
                "zarrs-python", "ome-tiff", "tiff", "tif", "tifffile")
MAX_RING_SLOTS = 4096  # daemon.MAX_SLOTS (the daemon imports this module, not the reverse)

#: What each field means on the wire, where its name and type do not say it all.
_NOTES: dict[str, dict[str, str]] = {
    "AcquisitionSettings": {
        "root_path": "Where the dataset goes, as the daemon sees it (absolute; a relative path "
                     "resolves against the daemon's working directory). Its suffix (.ome.zarr, "
                     ".ome.tiff, .ome.tif, .zarr, .tif, .tiff) picks the format when format is "
                     "\"auto\"; without one the dataset is OME-Zarr at root_path + \".ome.zarr\" "
                     "(opened.paths and opened.warnings say so). An OME-TIFF of several "
                     "positions is a directory named after the stem.",
        "dimensions": "The axes in acquisition order, slowest first; the last two are the "
                      "frame (y, x): bounded space axes. 2 to 5 axes besides at most one "
                      "position axis; only the first may be unbounded (count null).",
        "dtype": "Pixel type; frames are little-endian, C order. int64 and uint64: OME-Zarr "
                 "only (OME-XML has no 64-bit integer PixelType).",
        "format": "\"auto\" (from root_path's suffix), a format or backend name, or a format "
                  "object. \"tiff\", \"tif\" and \"tifffile\" mean OME-TIFF; the other names "
                  "OME-Zarr. A format that contradicts root_path's suffix is refused.",
        "compression": "null or \"none\": uncompressed. OME-Zarr: blosc-zstd, blosc-lz4, zstd; "
                       "OME-TIFF: lzw, zstd.",
        "storage_order": "How the non-frame axes lie on disk: \"ome\" (OME-Zarr: t, c, z "
                         "order; OME-TIFF: acquisition order), \"acquisition\", or a list of "
                         "axis names (a permutation of the non-frame, non-position axes).",
        "plate": "An HCS plate: positions name their well with plate_row / plate_column.",
        "overwrite": "Replace an existing dataset at the path (else invalid_settings).",
        "image_name": "The image's name (with several positions: prefixed to each one's).",
        "acquisition_date": "ISO 8601 date and time.",
        "backpressure": "What the client does when no slot is free (PROTOCOL.md §3): wait, "
                        "drop the frame, or report an error. Echoed in opened.",
        "backpressure_timeout": "Seconds a \"block\" client waits for a slot. Echoed in opened.",
        "ring_slots": "The stream's credits; null: about 256 MiB of frames (at least 8, less "
                      "when /dev/shm is small). An inline stream may have at most 1 GiB of "
                      "frames in flight.",
    },
    "Dimension": {
        "name": "Unique. x, y, z, t, c, p name standard axes (their type follows).",
        "count": "Steps; null: unbounded (first dimension only).",
        "type": "Inferred when absent: from coords, then unit, then the standard name; "
                "\"other\" otherwise. The last two must be space.",
        "coords": "Labels of the steps (count follows from them): channel names or Channel "
                  "objects, Position objects for a position axis, strings or numbers "
                  "otherwise.",
        "chunk_size": "Steps per chunk (OME-Zarr); null: the whole frame for y and x, 1 for "
                      "the others. At most count.",
        "shard_size_chunks": "Chunks per shard (OME-Zarr 0.5 only).",
        "unit": "Space and time axes: a UDUNITS-2 name or symbol (um, nm, ms, s, ...).",
        "scale": "Physical size of one step, in unit (positive).",
        "translation": "Physical coordinate of step 0, in unit.",
    },
}


def settings_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``open.settings``: the settings models' own schema
    with the wire's refinements (see the module docstring)."""
    schema = copy.deepcopy(AcquisitionSettings.model_json_schema())
    defs = schema["$defs"]
    defs.pop("ScratchFormat")  # written in the client's process, never by the daemon
    for model in defs.values():
        for prop in model.get("properties", {}).values():
            prop.pop("title", None)
    for prop in schema["properties"].values():
        prop.pop("title", None)
    props = schema["properties"]
    props["root_path"].update(minLength=1)
    props["root_path"].pop("default")
    props["dtype"] = {"enum": list(DTYPES)}
    props["dimensions"].update(minItems=2, maxItems=6)
    props["dimensions"].pop("default")
    props["format"] = {"default": "auto", "anyOf": [
        {"enum": list(FORMAT_NAMES)},
        {"$ref": "#/$defs/OmeZarrFormat"}, {"$ref": "#/$defs/OmeTiffFormat"}]}
    props["ring_slots"]["anyOf"][0]["maximum"] = MAX_RING_SLOTS
    dim = defs["Dimension"]["properties"]
    dim["name"]["minLength"] = 1
    dim["scale"]["anyOf"][0]["exclusiveMinimum"] = 0
    for model, notes in _NOTES.items():
        target = props if model == "AcquisitionSettings" else defs[model]["properties"]
        for name, note in notes.items():
            target[name]["description"] = note
    return {
        "$schema": SCHEMA_DIALECT,
        "title": f"open.settings (ome-writers-service protocol "
                 f"{PROTOCOL_VERSION}.{PROTOCOL_MINOR})",
        "description": "The settings of an `open` message (PROTOCOL.md §4): what the dataset "
                       "is, declared before its first frame. Generated by `ome-writers-service "
                       "schema` from the settings models. The daemon checks more than a "
                       "schema can say (a chunk larger than its axis, a format contradicting "
                       "the path's suffix, ...): `error` `invalid_settings` names the field.",
        "type": "object",
        "required": ["root_path", "dtype", "dimensions"],
        "additionalProperties": False,
        "properties": props,
        "$defs": defs,
    }


def schema_text() -> str:
    """The schema as the committed file holds it."""
    return json.dumps(settings_schema(), indent=2, ensure_ascii=False) + "\n"


class SettingsError(ValueError):
    """Settings the daemon refuses; the message names each field concerned."""


def parse(raw: Any) -> tuple[AcquisitionSettings, list[str]]:
    """The settings of an ``open`` message, checked as the schema says and then by the
    models, and the warnings their validation gave (e.g. the format taken for a path without
    a suffix). Raises `SettingsError` naming the fields."""
    if not isinstance(raw, dict):
        raise SettingsError("settings must be a JSON object")
    problems = _wire_form(raw)
    if problems:
        raise SettingsError("; ".join(problems))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            settings = AcquisitionSettings.model_validate_json(
                json.dumps(_integral_floats_to_int(raw)), strict=True,
                context={"strict": True})
            settings.validate_for_writing()
            if isinstance(settings.format, ScratchFormat):  # no root_path: arrays in memory
                raise ValueError("root_path is required: the daemon writes OME-Zarr and "
                                 "OME-TIFF datasets")
        except ValidationError as e:
            raise SettingsError(describe(e)) from None
        except (ValueError, TypeError, NotImplementedError) as e:
            raise SettingsError(str(e)) from None
    return settings, list(dict.fromkeys(str(w.message) for w in caught))


def _wire_form(raw: dict) -> list[str]:
    """Where the settings use a spelling the Python API takes but the wire does not."""
    out = []
    dtype = raw.get("dtype")
    if "dtype" in raw and dtype not in DTYPES:
        out.append(f"dtype {json.dumps(dtype)} is not one of {', '.join(DTYPES)}")
    fmt = raw.get("format", "auto")
    if isinstance(fmt, str) and fmt not in FORMAT_NAMES:
        out.append(f"format {json.dumps(fmt)} is not one of {', '.join(FORMAT_NAMES)} (or a "
                   "format object); the scratch format is written in the client's process")
    elif isinstance(fmt, dict) and fmt.get("name") not in ("ome-zarr", "ome-tiff"):
        out.append(f"format.name {json.dumps(fmt.get('name'))} is not \"ome-zarr\" or "
                   "\"ome-tiff\"")
    for i, d in enumerate(raw.get("dimensions") or ()):
        if isinstance(d, dict) and "positions" in d:
            out.append(f"dimensions[{i}]: \"positions\" is the Python API's name; on the wire "
                       "the positions are \"coords\"")
    return out


def _integer_fields() -> frozenset[str]:
    """Names of the settings fields whose JSON type is integer (in any model)."""
    schema = AcquisitionSettings.model_json_schema()
    names = set()
    for model in [schema, *schema["$defs"].values()]:
        for name, prop in model.get("properties", {}).items():
            types = {prop.get("type")} | {a.get("type") for a in prop.get("anyOf", ())}
            if "integer" in types and "number" not in types:
                names.add(name)
    return frozenset(names)


_INTEGER_FIELDS = _integer_fields()


def _integral_floats_to_int(value: Any) -> Any:
    """``5.0`` where an integer goes is 5 (JSON has one number type, and JSON Schema counts
    5.0 as an integer; LabVIEW's DBL controls write it)."""
    if isinstance(value, dict):
        return {k: int(v) if k in _INTEGER_FIELDS and isinstance(v, float) and v.is_integer()
                else _integral_floats_to_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_to_int(v) for v in value]
    return value


def describe(e: ValidationError) -> str:
    """A pydantic ValidationError as one line per field: ``dimensions[2].count: Input
    should be greater than 0 (got -4)`` — no type codes, no links. Where a union's
    alternatives each failed, only the deepest explanation is kept."""
    found = []
    for err in e.errors(include_url=False):
        path, tagged = "", False
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif "[" in part or part.startswith(("function-", "tagged-union")):
                tagged = part.startswith("tagged-union")  # next: the tag's value, skipped
            elif tagged:
                tagged = False
            else:
                path += f".{part}" if path else part
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("value_error", "assertion_error", "missing"):
            msg += f" (got {_short(err.get('input'))})"
        found.append((path, msg))
    deeper = [p for p, _ in found]
    kept = [(p, m) for p, m in found
            if not any(q != p and q.startswith(p) and q[len(p):len(p) + 1] in ".[" for q in deeper)]
    return "; ".join(f"{p}: {m}" if p else m for p, m in dict.fromkeys(kept))


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
