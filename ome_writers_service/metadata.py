"""Reading back what was written: per-frame metadata and a dataset summary, for either format.

Uses only the files (ome-types for OME-XML, the zarr metadata documents: zarr.json, or
.zattrs and .zarray of NGFF 0.4), so it works on any dataset this service wrote, in this
process or not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .backends.base import KNOWN_FRAME_KEYS
from .format_metadata import is_zarr_group

_PLANE_KEYS = {"delta_t": "delta_t", "exposure_time": "exposure_time",
               "position_x": "position_x", "position_y": "position_y", "position_z": "position_z"}


def read_frame_metadata(path: str | Path) -> list[dict[str, Any]]:
    """Per-frame metadata of one image: a list of ``{"index": {axis: i}, key: value, ...}``
    in storage order. ``path`` is an OME-TIFF file or an OME-Zarr image group."""
    p = Path(path)
    if is_zarr_group(p):
        return _zarr_frame_metadata(p)
    ome, image = _image_of_file(p)
    annotations = {a.id: a for a in (ome.structured_annotations.map_annotations
                                     if ome.structured_annotations else [])}
    out = []
    for plane in image.pixels.planes:
        row: dict[str, Any] = {"index": {"t": plane.the_t, "c": plane.the_c, "z": plane.the_z}}
        for key, attr in _PLANE_KEYS.items():
            value = getattr(plane, attr)
            if value is not None:
                row[key] = value
        for ref in plane.annotation_refs:
            ann = annotations.get(ref.id)
            if ann is not None:
                for m in ann.value.ms:
                    row[m.k] = _parse(m.value)
        out.append(row)
    return out


def dataset_document(path: Path) -> Any:
    """The OME document describing ``path``'s pages: its own, or (``BinaryOnly``) that of the
    master file or companion file it names."""
    ome = _read_ome(path)
    if ome.binary_only is None:
        return ome
    target = path.parent / Path(ome.binary_only.metadata_file).name
    if target.suffix.lower() in (".tif", ".tiff"):
        return _read_ome(target)
    return _read_companion(target)


def _read_companion(path: Path) -> Any:
    from ome_types import from_xml

    try:
        return from_xml(path.read_bytes().decode("utf-8"))
    except OSError:
        raise
    except Exception as e:  # ome-types raises several kinds
        raise ValueError(f"{path}: its OME-XML cannot be read: {str(e)[:300]}") from e


def files_of(image: Any) -> set[str]:
    """Names of the files an Image's TiffData reference by UUID (multi-file OME-TIFF)."""
    return {td.uuid.file_name for td in image.pixels.tiff_data_blocks
            if td.uuid is not None and td.uuid.file_name}


def _image_of_file(path: Path) -> tuple[Any, Any]:
    """(document, Image) of the image whose pages ``path`` holds."""
    ome = dataset_document(path)
    for image in ome.images:
        if path.name in files_of(image):
            return ome, image
    if not ome.images:
        raise ValueError(f"{path}: its OME-XML describes no image")
    return ome, ome.images[0]


def _zarr_frame_metadata(group: Path) -> list[dict[str, Any]]:
    """Rows of ``attributes.ome_writers.frame_metadata`` (ome-writers' layout: each row the
    frame's metadata plus ``storage_index``, a list in storage order) as ``{"index": {axis:
    i}, ...}``, the axes named by the image's multiscales axes, in storage order."""
    attrs = _group_attributes(group)
    table = (attrs.get("ome_writers") or {}).get("frame_metadata") or []
    try:
        axes = [a["name"] for a in _ngff(attrs)["multiscales"][0]["axes"]]
    except (KeyError, IndexError, TypeError):
        axes = []
    keyed = []
    for row in table:
        if "storage_index" not in row:  # a row of the earlier {"index": {...}, ...} layout
            keyed.append((list((row.get("index") or {}).values()), dict(row)))
            continue
        idx = [int(i) for i in row["storage_index"]]
        names = axes[:len(idx)] if len(axes) >= len(idx) + 2 else [f"d{k}" for k in range(len(idx))]
        md = {k: v for k, v in row.items() if k != "storage_index"}
        keyed.append((idx, {"index": dict(zip(names, idx)), **md}))
    keyed.sort(key=lambda kr: kr[0])  # storage order (ome-writers keeps arrival order)
    return [row for _, row in keyed]


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def dataset_info(path: str | Path) -> dict[str, Any]:
    """Shape, axes, dtype, channels, scales and acquisition summary of each image.

    ``path`` is an OME-Zarr store, an OME-TIFF file, a companion OME-XML file, or a multi-file
    OME-TIFF (its directory, or the root path it was written from): then every image of the
    dataset, each with its ``file``. Raises ValueError (OSError for a missing path) with a
    message naming the path for anything else.
    """
    from .validate import dataset_files

    p = Path(path)
    if p.is_dir() and is_zarr_group(p):
        try:
            return _zarr_info(p)
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise ValueError(f"{p}: not an OME-Zarr store this tool can read (missing or "
                             f"malformed {e})") from e
    files = dataset_files(p)
    if files == [p] and not p.is_dir() and p.suffix.lower() in (".tif", ".tiff"):
        return _tiff_info(p)
    if files == [p]:
        if p.is_dir():
            raise ValueError(f"{p}: a directory without zarr metadata or TIFF files (neither "
                             "an OME-Zarr store nor a multi-file OME-TIFF)")
        if p.is_file() and not p.name.lower().endswith((".ome", ".xml")):
            return _tiff_info(p)  # (names the problem)
    tiffs = [f for f in files if f.suffix.lower() in (".tif", ".tiff")]
    companions = [f for f in files if f not in tiffs]
    images, problems = _directory_images(tiffs, companions)
    if not images:
        raise ValueError(f"{p}: no OME-TIFF dataset found ({'; '.join(problems) or 'no files'})")
    info: dict[str, Any] = {"format": "OME-TIFF", "images": images,
                            "files": [str(f) for f in files], "pages": 0}
    for f in tiffs:
        try:
            info["pages"] += _pages(f)
        except Exception as e:  # noqa: BLE001 - e.g. a file cut off at 0 bytes by a crash
            problems.append(f"{f.name}: {str(e)[:200]}")
    if problems:
        info["unreadable"] = problems
    return info


def _directory_images(tiffs: list[Path], companions: list[Path]
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    """The images a directory of OME-TIFF files describes, each with its ``file``: those of
    a multi-file dataset's document (the companion's, or the first complete one a TIFF
    holds), else those of each standalone OME-TIFF file; and what could not be read."""
    problems: list[str] = []
    standalone: list[tuple[Path, Any]] = []
    document = None
    for f in companions:
        try:
            document = _read_companion(f)
            break
        except (OSError, ValueError) as e:
            problems.append(str(e))
    for f in tiffs if document is None else ():
        try:
            ome = _read_ome(f)
        except (OSError, ValueError) as e:
            problems.append(str(e))
            continue
        if ome.binary_only is not None:
            continue
        if any(files_of(image) - {f.name} for image in ome.images):
            document = ome  # names other files: the dataset's document
            break
        standalone.append((f, ome))
    described = [(None, document)] if document is not None else standalone
    images = []
    for f, ome in described:
        for img, image in zip(_describe(ome)["images"], ome.images):
            names = sorted(files_of(image))
            where = tiffs[0].parent if tiffs else companions[0].parent
            img["file"] = str(where / names[0]) if names else str(f)
            images.append(img)
    return images, problems


def _pages(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        return len(tf.pages)


def _read_ome(path: Path) -> Any:
    """The OME model of an OME-TIFF file; ValueError naming the file when it has none."""
    import tifffile
    from ome_types import from_xml

    if path.is_dir():
        raise ValueError(f"{path}: a directory, not an OME-TIFF file or an OME-Zarr store")
    try:
        with tifffile.TiffFile(path) as tf:
            xml = tf.ome_metadata
    except tifffile.TiffFileError as e:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"{path}: neither an OME-Zarr store nor a TIFF file") from e
        raise ValueError(f"{path}: not a readable TIFF file ({e})") from e
    if not xml:
        raise ValueError(f"{path}: a TIFF file without OME-XML metadata (not an OME-TIFF); "
                         "`info` reads OME-TIFF files and OME-Zarr stores")
    try:
        return from_xml(xml)
    except Exception as e:  # ome-types raises several kinds
        raise ValueError(f"{path}: its OME-XML cannot be read: {str(e)[:300]}") from e


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _group_attributes(group: Path) -> dict[str, Any]:
    """A zarr group's attributes: zarr v3's zarr.json, or v2's .zattrs."""
    if (group / "zarr.json").is_file():
        return _load_json(group / "zarr.json").get("attributes") or {}
    return _load_json(group / ".zattrs") if (group / ".zattrs").is_file() else {}


def _ngff(attrs: dict[str, Any]) -> dict[str, Any]:
    """NGFF metadata: 0.5 under "ome", 0.4 at the top of the attributes."""
    return attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs


def _array_metadata(array: Path) -> tuple[list[int], str]:
    """(shape, dtype name) of a zarr v3 or v2 array."""
    if (array / "zarr.json").is_file():
        meta = _load_json(array / "zarr.json")
        return meta["shape"], meta["data_type"]
    import numpy as np

    meta = _load_json(array / ".zarray")
    return meta["shape"], np.dtype(meta["dtype"]).name


def _ngff_version(ngff: dict[str, Any]) -> str:
    if "version" in ngff:
        return str(ngff["version"])
    for key in ("multiscales", "plate", "well"):
        node = ngff.get(key)
        node = node[0] if isinstance(node, list) and node else node
        if isinstance(node, dict) and "version" in node:
            return str(node["version"])
    return "?"


def _zarr_info(root: Path) -> dict[str, Any]:
    images = []
    groups = sorted({f.parent for name in ("zarr.json", ".zgroup") for f in root.rglob(name)})
    for group in groups:
        attrs = _group_attributes(group)
        ome = _ngff(attrs)
        if "multiscales" not in ome:
            continue
        ms = ome["multiscales"][0]
        shape, dtype = _array_metadata(group / ms["datasets"][0]["path"])
        scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
        images.append({
            # zarr's "/" on every platform (Windows takes it in paths too)
            "path": group.relative_to(root.parent).as_posix(), "name": ms.get("name"),
            "shape": shape, "dtype": dtype,
            "axes": [f"{a['name']}" + (f" [{a['unit']}]" if a.get("unit") else "")
                     for a in ms["axes"]],
            "scale": scale,
            "channels": [c.get("label") for c in ome.get("omero", {}).get("channels", [])],
            "acquisition": attrs.get("ome_writers", {}).get("acquisition"),
            "frame_metadata_rows": len(attrs.get("ome_writers", {}).get("frame_metadata", [])),
        })
    root_attrs = _group_attributes(root)
    root_ngff = _ngff(root_attrs)
    kind = "plate" if "plate" in root_ngff else \
        "image" if "multiscales" in root_ngff else "collection"
    ngff_keys = ("multiscales", "omero", "plate", "well", "bioformats2raw.layout", "series")
    extra = {k: v for k, v in root_attrs.items()
             if k not in ("ome", "ome_writers", *ngff_keys)}
    version = _ngff_version(root_ngff)
    if version == "?" and images:  # a 0.4 bioformats2raw root: the images say
        version = _ngff_version(_ngff(_group_attributes(root.parent / images[0]["path"])))
    return {"format": "OME-Zarr " + version, "kind": kind, "images": images,
            "global_metadata": extra}


def _tiff_info(path: Path) -> dict[str, Any]:
    ome = _read_ome(path)
    pages = _pages(path)
    if ome.binary_only is not None:
        ome, _ = _image_of_file(path)
    return {**_describe(ome), "pages": pages}


def _describe(ome: Any) -> dict[str, Any]:
    images = []
    for img in ome.images:
        px = img.pixels
        anns = {a.id: a for a in (ome.structured_annotations.map_annotations
                                  if ome.structured_annotations else [])}
        refs = [anns[r.id] for r in img.annotation_refs if r.id in anns]
        summary = next(({m.k: _parse(m.value) for m in a.value.ms} for a in refs
                        if a.namespace == "ome_writers.acquisition"), None)
        images.append({
            "name": img.name, "dimension_order": px.dimension_order.value,
            "size": {"T": px.size_t, "C": px.size_c, "Z": px.size_z, "Y": px.size_y,
                     "X": px.size_x},
            "dtype": px.type.value, "channels": [c.name for c in px.channels],
            "physical_size": {k: (getattr(px, f"physical_size_{k}"),
                                  getattr(px, f"physical_size_{k}_unit").value)
                              for k in "xyz" if getattr(px, f"physical_size_{k}") is not None},
            "time_increment": px.time_increment, "planes_with_metadata": len(px.planes),
            "acquisition": summary,
            "global_metadata": {a.namespace: {m.k: _parse(m.value) for m in a.value.ms}
                                for a in refs if a.namespace != "ome_writers.acquisition"},
        })
    return {"format": "OME-TIFF", "images": images}


__all__ = ["KNOWN_FRAME_KEYS", "dataset_info", "read_frame_metadata"]
