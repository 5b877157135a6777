"""Checks a written dataset with third-party validators only (yaozarrs, ome-types + XSD,
tifffile, tensorstore), so that "valid" means what other tools will accept.

Nothing here raises for a bad input: a file that is not a TIFF, an empty or truncated file, a
zarr.json (or .zattrs) that is not JSON all become FAIL lines naming the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Report:
    """Outcome of validating one dataset: one line per check."""

    path: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.passed)

    def check(self, ok: bool, what: str, why: str = "") -> None:
        (self.passed if ok else self.failed).append(what if ok else f"{what}: {why}")

    def __str__(self) -> str:
        lines = [f"PASS {p}" for p in self.passed] + [f"FAIL {f}" for f in self.failed]
        return "\n".join([f"{self.path}:", *("  " + ln for ln in lines)])


_COMPANION_SUFFIXES = (".ome", ".xml")


def _is_tiff(p: Path) -> bool:
    return p.suffix.lower() in (".tif", ".tiff")


def _is_companion(p: Path) -> bool:
    """A ``.ome``/``.xml`` file that holds an OME document (not any XML lying beside)."""
    from .format_metadata import holds_ome_document

    return p.name.lower().endswith(_COMPANION_SUFFIXES) and holds_ome_document(p)


def is_zarr_group(path: Path) -> bool:
    from .format_metadata import is_zarr_group as is_group

    return is_group(path)


def dataset_files(path: str | Path) -> list[Path]:
    """What to check for ``path``: an OME-Zarr store or OME-TIFF file itself; for the
    directory of a multi-file OME-TIFF (or the root_path it was written from, e.g.
    ``data.ome.tiff`` for ``data/``), its companion OME-XML files and TIFF files."""
    p = Path(path)
    if not p.exists():
        from .schema import ome_stem

        stem = Path(ome_stem(str(p)))
        if stem != p and stem.is_dir() and not is_zarr_group(stem):
            p = stem
    if p.is_dir() and not is_zarr_group(p):
        files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
        found = [q for q in files if _is_companion(q)] + [q for q in files if _is_tiff(q)]
        if found:
            return found
    return [p]


def validate(path: str | Path) -> Report:
    """Validate an OME-Zarr store, an OME-TIFF file, or a companion OME-XML file.

    For a multi-file OME-TIFF, use `validate_all` (one report per file). A file whose OME-XML
    names other files (UUID references) is checked with them: each exists, carries the UUID
    named, and has the pages the reference needs.
    """
    return _validate(Path(path), _Seen())


class _Seen:
    """What one validate_all() run already checked. The files of a multi-file dataset carry
    the same document (or name the same one): validated against the XSD once, its files
    opened once, the pixels of all its images read once through tifffile's links; each file's
    own pages are still read."""

    def __init__(self) -> None:
        self.documents: dict[str, tuple[object, str]] = {}  # normalized XML -> (OME, error)
        self.files: dict[Path, tuple[str | None, int]] = {}  # root UUID and pages
        self.series: set[str] = set()  # documents whose images tifffile has read


def _validate(p: Path, seen: _Seen) -> Report:
    report = Report(str(p))
    try:
        if p.is_dir():
            if is_zarr_group(p):
                _validate_zarr(p, report)
            else:
                report.check(False, "format", f"{p} is a directory without zarr.json, .zgroup "
                                              "nor TIFF files: neither a zarr store nor a "
                                              "multi-file OME-TIFF")
        elif p.is_file():
            if _is_tiff(p):
                _validate_tiff(p, report, seen)
            elif p.name.lower().endswith(_COMPANION_SUFFIXES):
                _validate_companion(p, report, seen)
            else:
                report.check(False, "format", f"{p.name} is neither a zarr store, a "
                                              ".tif/.tiff file nor a companion .ome file")
        else:
            report.check(False, "exists", f"{p}: no such file or directory")
    except Exception as e:  # noqa: BLE001 - a validator that breaks is a finding, not a crash
        report.check(False, f"{p.name}: readable", f"{type(e).__name__}: {str(e)[:300]}")
    return report


def validate_all(path: str | Path) -> list[Report]:
    """Reports for ``path``; one per file for a multi-file OME-TIFF."""
    seen = _Seen()
    return [_validate(f, seen) for f in dataset_files(path)]


def _read_json(path: Path, report: Report) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        report.check(False, f"{path}: readable", str(e)[:300])
        return None
    except ValueError as e:
        report.check(False, f"{path}: valid JSON", str(e)[:300])
        return None
    if not isinstance(doc, dict):
        report.check(False, f"{path}: a {path.name} document", f"a JSON {type(doc).__name__}, "
                                                               "not an object")
        return None
    return doc


def _attributes(group: Path, report: Report) -> dict | None:
    """A group's attributes (zarr v3 zarr.json, or v2 .zattrs), or None (reported)."""
    if (group / "zarr.json").is_file():
        doc = _read_json(group / "zarr.json", report)
        return None if doc is None else (doc.get("attributes") or {})
    if not (group / ".zattrs").is_file():
        return {}
    return _read_json(group / ".zattrs", report)


def _ngff(attrs: dict) -> dict:
    """The NGFF metadata of a group: 0.5 under "ome", 0.4 at the top of the attributes."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def _image_groups(root: Path, report: Report) -> list[tuple[Path, dict]]:
    out = []
    groups = sorted({f.parent for name in ("zarr.json", ".zgroup") for f in root.rglob(name)})
    for group in groups:
        attrs = _attributes(group, report)
        if attrs is None:
            continue
        ome = _ngff(attrs)
        if isinstance(ome, dict) and "multiscales" in ome:
            out.append((group, ome))
    return out


def _validate_zarr(root: Path, report: Report) -> None:
    import tensorstore as ts
    import yaozarrs

    root_attrs = _attributes(root, report)
    if root_attrs is None:
        return
    v2 = not (root / "zarr.json").is_file()
    images = _image_groups(root, report)
    try:
        yaozarrs.validate_zarr_store(str(root))
        report.check(True, "yaozarrs: OME-Zarr hierarchy valid")
    except Exception as e:  # noqa: BLE001 - any failure is a finding
        if v2 and "Unable to determine OME-Zarr version" in str(e) and \
                "bioformats2raw.layout" in root_attrs and images:
            # a 0.4 bioformats2raw root states no version: yaozarrs looks for it in a group
            # named "0" only; series named otherwise (Pos0, ...) are validated one by one
            _validate_each_image(root, images, report)
        else:
            report.check(False, "yaozarrs: OME-Zarr hierarchy valid", str(e)[:500])
    report.check(bool(images), "at least one multiscales image", "none found")
    shapes = {}
    for img, ome in images:
        try:
            ms = ome["multiscales"][0]
            datasets, axes = ms["datasets"], ms["axes"]
        except (KeyError, IndexError, TypeError) as e:
            report.check(False, f"{img}: multiscales readable", f"missing {e}")
            continue
        for ds in datasets:
            where = img.relative_to(root.parent) / str(ds.get("path", "?"))
            _check_scales(ds, axes, where, report)
            try:
                arr = ts.open({"driver": "zarr" if v2 else "zarr3",
                               "kvstore": {"driver": "file", "path": str(img / ds["path"])}}).result()
                ok = arr.rank == len(axes)
                report.check(ok, f"{where}: rank {arr.rank} matches axes", str(axes))
                if arr.size:
                    arr[(0,) * (arr.rank - 2)].read().result()
                report.check(True, f"{where}: shape {tuple(arr.shape)} {arr.dtype.name} readable")
                if ds is datasets[0]:
                    shapes[img.relative_to(root).as_posix()] = (tuple(arr.shape), ms, ome,
                                                                arr.dtype.name)
            except Exception as e:  # noqa: BLE001
                report.check(False, f"{where}: readable with tensorstore", str(e)[:300])
    if "bioformats2raw.layout" in _ngff(root_attrs):
        _check_ome_xml(root, shapes, report)


def _validate_each_image(root: Path, images: list[tuple[Path, dict]], report: Report) -> None:
    import yaozarrs

    bad = []
    for img, _ in images:
        try:
            yaozarrs.validate_zarr_store(str(img))
        except Exception as e:  # noqa: BLE001
            bad.append(f"{img.relative_to(root)}: {str(e)[:300]}")
    report.check(not bad, f"yaozarrs: each of the {len(images)} images valid (a 0.4 "
                          "bioformats2raw root without a group 0 has no version it can "
                          "read)", "; ".join(bad))


def _check_ome_xml(root: Path, images: dict, report: Report) -> None:
    """A bioformats2raw layout's OME/METADATA.ome.xml: valid against the OME XSD, one
    Image per group the OME group's series lists, in that order, each with that group's
    name, sizes and channel labels."""
    from ome_types import from_xml

    path = root / "OME" / "METADATA.ome.xml"
    if not path.is_file():
        wide = sorted({v[3] for v in images.values()} & {"int64", "uint64"})
        kinds = [{a.get("type") for a in v[1]["axes"]} for v in images.values()]
        both = any("channel" in k and k - {"time", "channel", "space"} for k in kinds)
        # (what this service writes then: no document rather than a wrong one)
        if wide:
            report.check(True, f"no OME/METADATA.ome.xml: there is no OME-XML PixelType for "
                               f"{wide[0]}")
        elif both:
            report.check(True, "no OME/METADATA.ome.xml: OME-XML has one C axis for both a "
                               "channel and a custom axis")
        else:
            report.check(False, "OME/METADATA.ome.xml present (bioformats2raw layout)",
                         "missing")
        return
    try:
        ome = from_xml(path.read_bytes().decode("utf-8"), validate=True)
    except Exception as e:  # noqa: BLE001
        report.check(False, "ome-types: OME/METADATA.ome.xml valid against the OME XSD",
                     str(e)[:300])
        return
    report.check(True, "ome-types: OME/METADATA.ome.xml valid against the OME XSD")
    series_attrs = _attributes(root / "OME", report) or {}
    series = _ngff(series_attrs).get("series")
    if not isinstance(series, list):
        report.check(False, "OME group lists the series", "no series attribute")
        return
    report.check(len(ome.images) == len(series) and sorted(series) == sorted(images),
                 f"METADATA.ome.xml: {len(ome.images)} images for {len(series)} series",
                 f"series {series}, image groups {sorted(images)}")
    bad = []
    for image, rel in zip(ome.images, series):
        if rel not in images:
            continue
        shape, ms, ngff, _ = images[rel]
        px = image.pixels
        letters = [{"time": "T", "channel": "C", "space": "Z"}.get(a.get("type"), "C")
                   for a in ms["axes"][:-2]]
        sizes = {"T": 1, "C": 1, "Z": 1, **dict(zip(letters, shape[:-2]))}
        got = {"T": px.size_t, "C": px.size_c, "Z": px.size_z}
        if got != sizes or (px.size_y, px.size_x) != tuple(shape[-2:]):
            bad.append(f"{rel}: sizes {got} {px.size_y}x{px.size_x}, the array is {shape}")
        if ms.get("name") and image.name != ms["name"]:
            bad.append(f"{rel}: named {image.name!r}, multiscales {ms['name']!r}")
        labels = [c.get("label") for c in (ngff.get("omero") or {}).get("channels", [])]
        if labels and [c.name for c in px.channels] != labels:
            bad.append(f"{rel}: channels {[c.name for c in px.channels]}, omero {labels}")
    report.check(not bad, "METADATA.ome.xml agrees with each image's zarr metadata (order, "
                          "names, sizes, channels)", "; ".join(bad))


def _check_scales(dataset: dict, axes: list, where: Path, report: Report) -> None:
    """Every scale a dataset's transformations give is a positive finite number: a scale of
    0 collapses an axis (NGFF's schema only asks for numbers, so yaozarrs lets it pass)."""
    import math

    names = [a.get("name", "?") if isinstance(a, dict) else "?" for a in axes]
    bad = []
    for t in dataset.get("coordinateTransformations") or []:
        if not isinstance(t, dict) or t.get("type") != "scale":
            continue
        for name, v in zip(names, t.get("scale") or []):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                bad.append(f"axis {name!r}: {v!r}")
    report.check(not bad, f"{where}: scales positive", "; ".join(bad))


#: the root element's UUID attribute (either quote, spaces around "=")
_ROOT_UUID = re.compile(r"""<OME\b[^>]*?\sUUID\s*=\s*(["'])(.*?)\1""")
#: the OME XSD's UUID pattern
_UUID_PATTERN = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                           r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PLACEHOLDER = "urn:uuid:00000000-0000-0000-0000-000000000000"


def _root_uuid(xml: str) -> tuple[str | None, re.Match | None]:
    match = _ROOT_UUID.search(xml)
    return (match.group(2) if match else None), match


def _normalized(xml: str) -> str:
    """The document with a placeholder for its root UUID (the one thing a multi-file
    dataset's copies of the same document differ in)."""
    _, match = _root_uuid(xml)
    if match is None:
        return xml
    return xml[:match.start(2)] + _PLACEHOLDER + xml[match.end(2):]


def _document(xml: str, seen: _Seen) -> tuple[object, str]:
    """(OME model, "") of an OME-XML text valid against the XSD (ome-types), or (None, the
    error). The document is validated with a placeholder root UUID, once per run for all
    its copies, and each copy's own root UUID is checked against the XSD's pattern."""
    from ome_types import from_xml

    key = _normalized(xml)
    if key not in seen.documents:
        try:
            seen.documents[key] = (from_xml(key, validate=True), "")
        except Exception as e:  # noqa: BLE001
            seen.documents[key] = (None, str(e)[:500])
    ome, error = seen.documents[key]
    if ome is None:
        return None, error
    uuid, match = _root_uuid(xml)
    if match is None:
        return ome.model_copy(update={"uuid": None}), ""
    if not _UUID_PATTERN.fullmatch(uuid):
        return None, f"root UUID {uuid!r} does not match the OME schema's UUID pattern"
    return ome.model_copy(update={"uuid": uuid}), ""


def _validate_tiff(path: Path, report: Report, seen: _Seen) -> None:
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:  # noqa: BLE001 - empty, truncated, not a TIFF at all
        report.check(False, f"tifffile: {path.name} opens as a TIFF file", str(e)[:300])
        return
    with tf:
        report.check(tf.is_ome, "OME-XML in the first page", f"missing in {path.name}")
        if not tf.is_ome:
            return
        xml = tf.ome_metadata
        ome, error = _document(xml, seen)
        report.check(ome is not None, "ome-types: OME-XML valid against the OME XSD", error)
        if ome is None:
            return
        try:
            pages = len(tf.pages)
        except Exception as e:  # noqa: BLE001 - a broken IFD chain
            report.check(False, f"{path.name}: pages readable", str(e)[:300])
            return
        linked = False
        if ome.binary_only is not None:
            _check_binary_only(path, ome, report, seen)
            linked = True
        else:
            from .metadata import files_of

            mine = [i for i in ome.images if not files_of(i) - {path.name}]
            planes = sum(i.pixels.size_c * i.pixels.size_z * i.pixels.size_t for i in mine)
            report.check(planes <= pages, f"{planes} planes in this file, {pages} pages",
                         "planes without a page")
            linked = _check_links(ome, path.parent, report, seen)
            _check_page_format(tf, mine, report)
        key = _normalized(xml)
        try:
            if (linked and key in seen.series) or ome.binary_only is not None:
                # this file's own pages (the dataset's images were read through the links)
                with tifffile.TiffFile(path, is_ome=False) as plain:
                    data = plain.series[0].asarray()
                report.check(True, f"tifffile: {data.shape[0] if data.ndim > 2 else 1} "
                                   f"pages {data.dtype} readable")
            else:
                for series in tf.series:  # every image, across the files it links
                    data = series.asarray()
                seen.series.add(key)
                report.check(True, f"tifffile: {len(tf.series)} series readable, the first "
                                   f"{tf.series[0].axes} {tf.series[0].shape}")
        except Exception as e:  # noqa: BLE001
            report.check(False, "tifffile: pixels readable", str(e)[:300])


_PIXEL_DTYPE = {"float": "float32", "double": "float64"}


def _check_page_format(tf, images: list, report: Report) -> None:
    """The first and last pages have the size and pixel type the document declares (tifffile
    alone only warns when they do not)."""
    if not images or not len(tf.pages):
        return
    px = images[0].pixels
    want = ((px.size_y, px.size_x), _PIXEL_DTYPE.get(px.type.value, px.type.value))
    for k in sorted({0, len(tf.pages) - 1}):
        page = tf.pages[k]
        got = (tuple(page.shape[-2:]), page.dtype.name if page.dtype is not None else None)
        if got != want:
            report.check(False, f"page {k}: size and pixel type as declared",
                         f"{got[0]} {got[1]}, the OME-XML declares {want[0]} {want[1]}")
            return
    report.check(True, f"pages {want[0][1]}x{want[0][0]} {want[1]} as declared")


def _file_uuid(path: Path, seen: _Seen) -> tuple[str | None, int]:
    """The OME root UUID of a TIFF file and its page count (read once per run)."""
    import tifffile

    if path not in seen.files:
        with tifffile.TiffFile(path) as tf:
            seen.files[path] = (_root_uuid(tf.ome_metadata or "")[0], len(tf.pages))
    return seen.files[path]


def _check_links(ome, directory: Path, report: Report, seen: _Seen) -> bool:
    """Every file a TiffData names exists beside, has that UUID and enough pages; whether
    the document names any file."""
    needed: dict[tuple[str, str], int] = {}
    for image in ome.images:
        for td in image.pixels.tiff_data_blocks:
            if td.uuid is None or not td.uuid.file_name:
                continue
            count = td.plane_count if td.plane_count is not None else 1
            key = (td.uuid.file_name, td.uuid.value)
            needed[key] = max(needed.get(key, 0), (td.ifd or 0) + count)
    bad = []
    for (name, value), pages_needed in sorted(needed.items()):
        target = directory / name
        if not target.is_file():
            bad.append(f"{name}: missing")
            continue
        try:
            uuid, pages = _file_uuid(target, seen)
        except Exception as e:  # noqa: BLE001
            bad.append(f"{name}: unreadable ({str(e)[:200]})")
            continue
        if uuid != value:
            bad.append(f"{name}: its UUID is {uuid}, the reference says {value}")
        elif pages < pages_needed:
            bad.append(f"{name}: {pages} pages, {pages_needed} referenced")
    if needed:
        report.check(not bad, f"{len(needed)} files linked by TiffData UUID: each present, "
                              "its UUID matching, its pages there", "; ".join(bad))
    return bool(needed)


def _check_binary_only(path: Path, ome, report: Report, seen: _Seen) -> None:
    """A file whose metadata is elsewhere: that file exists, has the UUID named, and its
    document describes images in this file."""
    import tifffile

    ref = ome.binary_only
    target = path.parent / Path(ref.metadata_file).name
    what = f"BinaryOnly metadata file {target.name}"
    if not target.is_file():
        report.check(False, what, "missing")
        return
    try:
        if _is_tiff(target):
            with tifffile.TiffFile(target) as tf:
                xml = tf.ome_metadata
        else:
            xml = target.read_bytes().decode("utf-8")
        doc, error = _document(xml, seen)
        if doc is None:
            raise ValueError(error)
    except Exception as e:  # noqa: BLE001
        report.check(False, what, f"unreadable: {str(e)[:200]}")
        return
    report.check(doc.uuid == ref.uuid, f"{what}: UUID matches", f"{doc.uuid} != {ref.uuid}")
    mine = [td for image in doc.images for td in image.pixels.tiff_data_blocks
            if td.uuid is not None and td.uuid.file_name == path.name]
    report.check(bool(mine), f"{what}: describes images in {path.name}", "none found")
    if mine:
        report.check(all(td.uuid.value == ome.uuid for td in mine),
                     f"{what}: names this file's UUID", f"this file's UUID is {ome.uuid}")


def _validate_companion(path: Path, report: Report, seen: _Seen) -> None:
    try:
        xml = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        report.check(False, "companion OME-XML readable", str(e)[:300])
        return
    ome, error = _document(xml, seen)
    report.check(ome is not None, "ome-types: companion OME-XML valid against the OME XSD",
                 error)
    if ome is None:
        return
    report.check(bool(ome.images), f"{len(ome.images)} images described", "none")
    _check_links(ome, path.parent, report, seen)
