"""``get_metadata()`` / ``update_metadata()``: the format's own metadata, as ome-writers 0.3.2.

* OME-Zarr: ``{group path: attributes}`` of each image group (``"."`` when the store's root is
  the image, else e.g. ``"0"``, ``"A/1/0"``). ``update_metadata`` replaces a group's attributes
  (written at once, and kept at finalize); what the writer keeps current -- the per-frame
  table and the acquisition summary under ``ome_writers``, and global metadata namespaces --
  stays the writer's.
* OME-TIFF: ``{position index: ome_types.OME}`` of each file, and ``-1`` for the companion
  file of a "companion-file" dataset. ``update_metadata`` works once the stream is closed (the
  files must be complete) and rewrites each given file's OME-XML.

Shared by the in-process stream and the daemon-backed one (which reads the files).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .safe_files import NO_SPACE, rewrite_in_place, write_atomically

#: keys under ``attributes.ome_writers`` that the writer keeps current whatever the user sets
LIVE_KEYS = ("frame_metadata", "acquisition")


# ---- OME-Zarr ----

def zarr_keys(image_paths: Sequence[str]) -> list[str]:
    """get_metadata() keys: each image group's path relative to the store, ``"."`` for the root."""
    return [p or "." for p in image_paths]


def merge_zarr_attributes(user: Mapping[str, Any], current: Mapping[str, Any],
                          keep: Iterable[str] = ()) -> dict[str, Any]:
    """The attributes to store for a group the user replaced: ``user``'s, with the writer's
    live ``ome_writers`` keys and the namespaces in ``keep`` (global metadata) from ``current``."""
    out = copy.deepcopy(dict(user))
    own = current.get("ome_writers") or {}
    mine = out.get("ome_writers")
    merged = {**own, **(mine if isinstance(mine, Mapping) else {})}
    for key in LIVE_KEYS:
        merged.pop(key, None)
        if key in own:
            merged[key] = copy.deepcopy(own[key])
    if merged:
        out["ome_writers"] = merged
    for ns in keep:
        if ns in current:
            out[ns] = copy.deepcopy(current[ns])
    return out


def check_zarr_update(metadata: Any, keys: Sequence[str]) -> dict[int, dict[str, Any]]:
    """``{position: attributes}`` of an update_metadata() argument, or TypeError/KeyError/
    ValueError naming what is wrong (nothing is written then)."""
    if not isinstance(metadata, Mapping):
        raise TypeError(f"Expected dict[str, dict] metadata (group path -> attributes), "
                        f"got {type(metadata).__name__}")
    out = {}
    for key, attrs in metadata.items():
        if key not in keys:
            raise KeyError(f"Unknown path: {key}")
        if not isinstance(attrs, Mapping):
            raise TypeError(f"attributes of {key!r} must be a dict, not {type(attrs).__name__}")
        try:
            out[keys.index(key)] = json.loads(json.dumps(attrs, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"attributes of {key!r} cannot be stored as JSON: {e}") from None
    return out


def read_zarr_attributes(group: str | os.PathLike) -> dict[str, Any]:
    """A group's attributes: zarr v3's ``zarr.json``, or zarr v2's ``.zattrs`` (absent: none)."""
    group = Path(group)
    if (group / "zarr.json").is_file() or not (group / ".zgroup").is_file():
        return json.loads((group / "zarr.json").read_text()).get("attributes") or {}
    attrs = group / ".zattrs"
    return json.loads(attrs.read_text()) if attrs.is_file() else {}


def write_zarr_attributes(group: str | os.PathLike, attrs: Mapping[str, Any]) -> None:
    """Replace the attributes of an existing group (zarr v3 or v2), atomically."""
    group = Path(group)
    if (group / "zarr.json").is_file() or not (group / ".zgroup").is_file():
        path = group / "zarr.json"
        doc = json.loads(path.read_text())
        doc["attributes"] = dict(attrs)
    else:
        path, doc = group / ".zattrs", dict(attrs)
    write_zarr_json(path, doc)


def write_zarr_json(path: str | os.PathLike, doc: Mapping[str, Any], *,
                    reserve: int = 0) -> None:
    """Replace a zarr metadata document (zarr.json, .zattrs, .zarray) atomically: a reader
    never sees half of it, and no name planted beside it is written through. ``reserve``
    spaces follow the JSON: room for a later, larger document on a full disk, where the
    document is rewritten in place when it fits (a full disk cannot take a new file)."""
    data = json.dumps(doc, indent=2).encode() + b" " * reserve
    try:
        write_atomically(path, data)
    except OSError as e:  # in place, as compact as JSON gets
        compact = json.dumps(doc, separators=(",", ":")).encode()
        if e.errno not in NO_SPACE or not rewrite_in_place(path, compact):
            raise


def is_zarr_group(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr group (v3 ``zarr.json`` or v2 ``.zgroup``)."""
    return (Path(path) / "zarr.json").is_file() or (Path(path) / ".zgroup").is_file()


# ---- OME-TIFF ----

def check_tiff_update(metadata: Any, keys: Sequence[int]) -> dict[int, Any]:
    """``{file key: OME}`` of an update_metadata() argument (ome-writers' checks and errors);
    ``keys`` are the positions, and -1 when there is a companion file."""
    from ome_types import OME

    if not isinstance(metadata, dict):
        raise TypeError(f"Expected dict[int, ome_types.model.OME] metadata, got {type(metadata)}")
    for pos, ome in metadata.items():
        if not isinstance(ome, OME):
            raise TypeError(f"Expected ome_types.model.OME for position {pos}, got {type(ome)}")
        if isinstance(pos, bool) or not isinstance(pos, int) or pos not in keys:
            raise KeyError(f"Unknown position index: {pos}")
    return dict(metadata)


def holds_ome_document(path: str | os.PathLike) -> bool:
    """Whether a file's beginning holds an OME document (a companion file, not any XML)."""
    try:
        with open(path, "rb") as f:
            return b"<OME" in f.read(4096)
    except OSError:
        return False


def read_tiff_ome(path: str | os.PathLike) -> Any:
    import tifffile
    from ome_types import from_xml

    with tifffile.TiffFile(path) as tf:
        return from_xml(tf.ome_metadata)


def write_tiff_ome(path: str | os.PathLike, ome: Any) -> None:
    """Replace the OME-XML of a complete OME-TIFF file (UTF-8, as the OME-TIFF spec asks)."""
    import tifffile

    tifffile.tiffcomment(path, comment=ome.to_xml().encode("utf-8"), pageindex=0)


def set_global_annotation(ome: Any, namespace: str, mapping: Mapping[str, Any]) -> None:
    """Put global metadata ``namespace`` into an OME document the user replaced: its
    MapAnnotation's value is replaced, or one is added and referenced by each Image."""
    from ome_types import model as m

    from .user_metadata import global_annotation_text

    value = m.Map(ms=[m.Map.M(k=str(k), value=global_annotation_text(v))
                      for k, v in mapping.items()])
    if ome.structured_annotations is None:
        ome.structured_annotations = m.StructuredAnnotations()
    anns = ome.structured_annotations.map_annotations
    for ann in anns:
        if ann.namespace == namespace:
            ann.value = value
            return
    ids = {a.id for a in anns}
    n = len(anns)
    while f"Annotation:global:{n}" in ids:
        n += 1
    ann = m.MapAnnotation(id=f"Annotation:global:{n}", namespace=namespace, value=value)
    anns.append(ann)
    for image in ome.images:
        image.annotation_refs.append(m.AnnotationRef(id=ann.id))
