"""Metadata the user hands over with frames or for the whole dataset, checked where it enters.

A bad value must fail the one call that brought it, naming the frame and key, and never
reach a backend: there it would surface at finalize and cost the dataset its metadata.
Values come back as plain JSON types (numpy scalars and arrays converted), which both
formats can store and read back exactly.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

import numpy as np

#: Per-frame keys OME knows by name (OME-TIFF Plane attributes: seconds, micrometres).
KNOWN_FRAME_KEYS = ("delta_t", "exposure_time", "position_x", "position_y", "position_z")
#: Keys the readers put in each per-frame row themselves.
RESERVED_FRAME_KEYS = ("index", "storage_index")
#: Global-metadata namespaces the formats use for their own metadata.
RESERVED_NAMESPACES = ("ome", "ome_writers")
#: Characters XML 1.0 cannot hold (OME-XML is XML 1.0).
XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: Surrogate code points: no UTF-8 text (zarr.json, OME-XML) can hold them.
SURROGATE = re.compile("[\ud800-\udfff]")
#: Most JSON one frame's metadata (or one global-metadata namespace) may take on the wire:
#: it travels in one message, whose header may be 1 MiB (protocol.MAX_HEADER_BYTES).
MAX_METADATA_BYTES = 1_000_000


def check_frame_metadata(metadata: Any, frame_number: int) -> dict[str, Any]:
    """``metadata`` as plain JSON values, or a ValueError/TypeError naming frame and key."""
    where = f"frame {frame_number}: frame_metadata"
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{where} must be a dict, not {type(metadata).__name__}")
    out: dict[str, Any] = {}
    chars = 0
    for key, value in metadata.items():
        _check_key(key, where)
        chars += len(key)
        if key in RESERVED_FRAME_KEYS:
            raise ValueError(f"{where} key {key!r} is reserved (readers add it to each row)")
        if key in KNOWN_FRAME_KEYS:
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                unit = "seconds" if key in ("delta_t", "exposure_time") else "micrometres"
                raise ValueError(f"{where}[{key!r}] must be a finite number ({unit}), "
                                 f"not {value!r}")
            out[key] = float(value)
        else:
            out[key], n = _plain(value, f"{where}[{key!r}]")
            chars += n
    _check_size(out, chars, where)
    return out


def check_global_metadata(namespace: Any, metadata: Any) -> dict[str, Any]:
    """``metadata`` as plain JSON values, or an error naming the namespace and key."""
    if not isinstance(namespace, str) or not namespace or XML_ILLEGAL.search(namespace):
        raise ValueError(f"global metadata namespace {namespace!r} must be a non-empty string")
    if namespace in RESERVED_NAMESPACES:
        raise ValueError(f"global metadata namespace {namespace!r} is reserved for the "
                         "format's own metadata; choose another")
    where = f"global metadata {namespace!r}"
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{where} must be a dict, not {type(metadata).__name__}")
    out = {}
    chars = 0
    for key, value in metadata.items():
        _check_key(key, where)
        out[key], n = _plain(value, f"{where}[{key!r}]")
        chars += n + len(key)
    _check_size(out, chars, where)
    return out


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str) or not key or XML_ILLEGAL.search(key):
        raise ValueError(f"{where} key {key!r} must be a non-empty string of printable "
                         "characters")


def _plain(value: Any, where: str) -> tuple[Any, int]:
    """A JSON round trip: numpy values become Python ones; NaN, sets, objects and strings
    that are not Unicode text (lone surrogates, e.g. undecodable bytes of a file name) are
    refused, the same way for both formats. Returns the value and its length as JSON text."""
    try:
        text = json.dumps(value, default=_numpy_to_python, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where} cannot be stored: {e}") from None
    bad = SURROGATE.search(text)
    if bad is not None:
        raise ValueError(f"{where} cannot be stored: it holds the surrogate code point "
                         f"{bad.group()!r}, which is not Unicode text (zarr.json and OME-XML "
                         "are UTF-8)")
    return json.loads(text), len(text)


def _check_size(out: dict[str, Any], chars: int, where: str) -> None:
    """Refuse metadata too large for one message. ``chars`` (its JSON text's length)
    bounds the wire size (ASCII-escaped: at most 12 bytes per character) without a second
    serialization in the common, small case."""
    if chars * 12 + 8 * len(out) < MAX_METADATA_BYTES:
        return
    size = len(json.dumps(out, separators=(",", ":")))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"{where} is {size:,} bytes as JSON: at most {MAX_METADATA_BYTES:,} "
                         "bytes may go with one frame or namespace; store bulky data beside "
                         "the dataset and reference it")


def _numpy_to_python(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if tolist is not None:
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def annotation_text(value: Any) -> str:
    """A MapAnnotation value that reads back as ``value`` through `parse_annotation_text`:
    plain text where that is unambiguous, JSON otherwise (JSON also escapes the characters
    XML cannot hold)."""
    if isinstance(value, str) and not XML_ILLEGAL.search(value):
        try:
            json.loads(value)
        except ValueError:
            return value  # reads back as this very string
    return json.dumps(value, ensure_ascii=not isinstance(value, str)
                      or bool(XML_ILLEGAL.search(value)))


def global_annotation_text(value: Any) -> str:
    """A global-metadata MapAnnotation value: always JSON, as ome-writers 0.3.2 writes it (a
    string too, so readers doing ``json.loads`` on every value get it back)."""
    return json.dumps(value)


def parse_annotation_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text
