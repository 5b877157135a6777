"""Checks a written dataset with third-party validators only (yaozarrs, ome-types + XSD,
tifffile, tensorstore), so that "valid" means what other tools will accept."""

from __future__ import annotations

import json
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


def validate(path: str | Path) -> Report:
    """Validate an OME-Zarr store or an OME-TIFF file."""
    p = Path(path)
    report = Report(str(p))
    if (p / "zarr.json").is_file():
        _validate_zarr(p, report)
    elif p.suffix.lower() in (".tif", ".tiff") and p.is_file():
        _validate_tiff(p, report)
    else:
        report.check(False, "format", "neither a zarr v3 store nor an existing .tif/.tiff file")
    return report


def _image_groups(root: Path) -> list[Path]:
    out = []
    for zj in sorted(root.rglob("zarr.json")):
        attrs = json.loads(zj.read_text()).get("attributes", {})
        if "multiscales" in attrs.get("ome", {}):
            out.append(zj.parent)
    return out


def _validate_zarr(root: Path, report: Report) -> None:
    import tensorstore as ts
    import yaozarrs

    try:
        yaozarrs.validate_zarr_store(str(root))
        report.check(True, "yaozarrs: OME-Zarr hierarchy valid")
    except Exception as e:  # noqa: BLE001 - any failure is a finding
        report.check(False, "yaozarrs: OME-Zarr hierarchy valid", str(e)[:500])
    images = _image_groups(root)
    report.check(bool(images), "at least one multiscales image", "none found")
    for img in images:
        ms = json.loads((img / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
        for ds in ms["datasets"]:
            where = img.relative_to(root.parent) / ds["path"]
            try:
                arr = ts.open({"driver": "zarr3",
                               "kvstore": {"driver": "file", "path": str(img / ds["path"])}}).result()
                ok = arr.rank == len(ms["axes"])
                report.check(ok, f"{where}: rank {arr.rank} matches axes", str(ms["axes"]))
                if arr.size:
                    arr[(0,) * (arr.rank - 2)].read().result()
                report.check(True, f"{where}: shape {tuple(arr.shape)} {arr.dtype.name} readable")
            except Exception as e:  # noqa: BLE001
                report.check(False, f"{where}: readable with tensorstore", str(e)[:300])


def _validate_tiff(path: Path, report: Report) -> None:
    import tifffile
    from ome_types import from_xml

    with tifffile.TiffFile(path) as tf:
        report.check(tf.is_ome, "OME-XML in the first page", "missing")
        if not tf.is_ome:
            return
        try:
            ome = from_xml(tf.ome_metadata, validate=True)
            report.check(True, "ome-types: OME-XML valid against the OME XSD")
        except Exception as e:  # noqa: BLE001
            report.check(False, "ome-types: OME-XML valid against the OME XSD", str(e)[:500])
            return
        planes = sum(i.pixels.size_c * i.pixels.size_z * i.pixels.size_t for i in ome.images)
        pages = len(tf.pages)
        report.check(planes <= pages, f"{planes} planes, {pages} pages", "planes without a page")
        try:
            series = tf.series[0]
            data = series.asarray()
            report.check(True, f"tifffile: series {series.axes} {data.shape} {data.dtype} readable")
        except Exception as e:  # noqa: BLE001
            report.check(False, "tifffile: pixels readable", str(e)[:300])
