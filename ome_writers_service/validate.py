"""Checks a written dataset with third-party validators only (yaozarrs, ome-types + XSD,
tifffile, tensorstore), so that "valid" means what other tools will accept.

Nothing here raises for a bad input: a file that is not a TIFF, an empty or truncated file, a
zarr.json that is not JSON all become FAIL lines naming the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

_TIFF_SUFFIX = re.compile(r"(\.ome)?\.tiff?$", re.IGNORECASE)


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


def position_files(path: str | Path) -> list[Path]:
    """The files of a multi-position OME-TIFF whose root path is ``path``
    (``name_p000.ome.tiff``, ``name_p001.ome.tiff``, ... beside it); [] when there are none."""
    p = Path(path)
    match = _TIFF_SUFFIX.search(p.name)
    if not match or not p.parent.is_dir():
        return []
    stem, suffix = p.name[: match.start()], p.name[match.start():]
    pattern = re.compile(re.escape(stem) + r"_p(\d+)" + re.escape(suffix) + "$")
    found = [(int(m.group(1)), q) for q in p.parent.iterdir()
             if (m := pattern.match(q.name)) and q.is_file()]
    return [q for _, q in sorted(found)]


def dataset_files(path: str | Path) -> list[Path]:
    """What to check for ``path``: itself, or, for the root path of a multi-position OME-TIFF
    that does not exist as such, its position files."""
    p = Path(path)
    if not p.exists():
        files = position_files(p)
        if files:
            return files
    return [p]


def validate(path: str | Path) -> Report:
    """Validate an OME-Zarr store or an OME-TIFF file.

    For the root path of a multi-position OME-TIFF, use `validate_all` (one report per file).
    """
    p = Path(path)
    report = Report(str(p))
    try:
        if p.is_dir():
            if (p / "zarr.json").is_file():
                _validate_zarr(p, report)
            else:
                report.check(False, "format", f"{p} is a directory without zarr.json: not a "
                                              "zarr v3 store")
        elif p.is_file():
            if p.suffix.lower() in (".tif", ".tiff"):
                _validate_tiff(p, report)
            else:
                report.check(False, "format", f"{p.name} is neither a zarr v3 store nor a "
                                              ".tif/.tiff file")
        else:
            files = position_files(p)
            hint = (f" (it is the root path of a multi-position OME-TIFF: {len(files)} files "
                    f"{files[0].name} ... {files[-1].name})") if files else ""
            report.check(False, "exists", f"{p}: no such file or directory{hint}")
    except Exception as e:  # noqa: BLE001 - a validator that breaks is a finding, not a crash
        report.check(False, f"{p.name}: readable", f"{type(e).__name__}: {str(e)[:300]}")
    return report


def validate_all(path: str | Path) -> list[Report]:
    """Reports for ``path``; one per position file for a multi-position OME-TIFF root path."""
    return [validate(f) for f in dataset_files(path)]


def _read_json(path: Path, report: Report) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        report.check(False, f"{path}: valid JSON", str(e)[:300])
        return None
    if not isinstance(doc, dict):
        report.check(False, f"{path}: a zarr.json document", f"a JSON {type(doc).__name__}, "
                                                             "not an object")
        return None
    return doc


def _image_groups(root: Path, report: Report) -> list[tuple[Path, dict]]:
    out = []
    for zj in sorted(root.rglob("zarr.json")):
        doc = _read_json(zj, report)
        if doc is None:
            continue
        ome = (doc.get("attributes") or {}).get("ome") or {}
        if isinstance(ome, dict) and "multiscales" in ome:
            out.append((zj.parent, ome))
    return out


def _validate_zarr(root: Path, report: Report) -> None:
    import tensorstore as ts
    import yaozarrs

    if _read_json(root / "zarr.json", report) is None:
        return
    try:
        yaozarrs.validate_zarr_store(str(root))
        report.check(True, "yaozarrs: OME-Zarr hierarchy valid")
    except Exception as e:  # noqa: BLE001 - any failure is a finding
        report.check(False, "yaozarrs: OME-Zarr hierarchy valid", str(e)[:500])
    images = _image_groups(root, report)
    report.check(bool(images), "at least one multiscales image", "none found")
    for img, ome in images:
        try:
            ms = ome["multiscales"][0]
            datasets, axes = ms["datasets"], ms["axes"]
        except (KeyError, IndexError, TypeError) as e:
            report.check(False, f"{img / 'zarr.json'}: multiscales readable", f"missing {e}")
            continue
        for ds in datasets:
            where = img.relative_to(root.parent) / str(ds.get("path", "?"))
            try:
                arr = ts.open({"driver": "zarr3",
                               "kvstore": {"driver": "file", "path": str(img / ds["path"])}}).result()
                ok = arr.rank == len(axes)
                report.check(ok, f"{where}: rank {arr.rank} matches axes", str(axes))
                if arr.size:
                    arr[(0,) * (arr.rank - 2)].read().result()
                report.check(True, f"{where}: shape {tuple(arr.shape)} {arr.dtype.name} readable")
            except Exception as e:  # noqa: BLE001
                report.check(False, f"{where}: readable with tensorstore", str(e)[:300])


def _validate_tiff(path: Path, report: Report) -> None:
    import tifffile
    from ome_types import from_xml

    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:  # noqa: BLE001 - empty, truncated, not a TIFF at all
        report.check(False, f"tifffile: {path.name} opens as a TIFF file", str(e)[:300])
        return
    with tf:
        report.check(tf.is_ome, "OME-XML in the first page", f"missing in {path.name}")
        if not tf.is_ome:
            return
        try:
            ome = from_xml(tf.ome_metadata, validate=True)
            report.check(True, "ome-types: OME-XML valid against the OME XSD")
        except Exception as e:  # noqa: BLE001
            report.check(False, "ome-types: OME-XML valid against the OME XSD", str(e)[:500])
            return
        planes = sum(i.pixels.size_c * i.pixels.size_z * i.pixels.size_t for i in ome.images)
        try:
            pages = len(tf.pages)
        except Exception as e:  # noqa: BLE001 - a broken IFD chain
            report.check(False, f"{path.name}: pages readable", str(e)[:300])
            return
        report.check(planes <= pages, f"{planes} planes, {pages} pages", "planes without a page")
        try:
            series = tf.series[0]
            data = series.asarray()
            report.check(True, f"tifffile: series {series.axes} {data.shape} {data.dtype} readable")
        except Exception as e:  # noqa: BLE001
            report.check(False, "tifffile: pixels readable", str(e)[:300])
