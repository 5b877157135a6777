"""The JSON Schema of `open.settings` (PROTOCOL.md §4): `ome-writers-service schema` prints
the committed copy; every settings object the daemon accepts validates against it, and the
ones it refuses fail it where a schema can say why (`wire_settings.parse` is the daemon's own
check of an `open`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from ome_writers_service import wire_settings
from ome_writers_service.schema import AcquisitionSettings, Dimension

from service_util import REPO

SCHEMA_FILE = REPO / "protocol" / "settings.schema.json"


def settings(root: Path, frames: int = 8, size: int = 8, **kw) -> dict:
    kw.setdefault("ring_slots", 8)
    return {"root_path": str(root), "dtype": "uint16", "overwrite": True,
            "dimensions": [{"name": "t", "count": frames}, {"name": "y", "count": size},
                           {"name": "x", "count": size}], **kw}


def test_schema_command_prints_the_committed_schema():
    """`ome-writers-service schema` prints protocol/settings.schema.json exactly (regenerate
    the file with `ome-writers-service schema > protocol/settings.schema.json`)."""
    res = subprocess.run([sys.executable, "-m", "ome_writers_service", "schema"],
                         capture_output=True, text=True, check=True)
    assert res.stdout == SCHEMA_FILE.read_text(encoding="utf-8"), \
        "protocol/settings.schema.json is stale: regenerate it with `ome-writers-service schema`"
    schema = json.loads(res.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def _validator():
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def _accepted_corpus(tmp: Path) -> list[dict]:
    """Settings the daemon accepts: the document's example, every wire form the reference
    clients send (model_dump of varied models), and hand-written JSON as C/LabVIEW clients
    write it (format names, integral floats, format objects)."""
    doc = (REPO / "PROTOCOL.md").read_text(encoding="utf-8")
    example = json.loads(re.search(r"## 4\. Settings.*?```json\n(.*?)```", doc, re.S).group(1))
    models = [
        AcquisitionSettings(root_path=str(tmp / "a.ome.zarr"), dtype="uint16", dimensions=[
            Dimension(name="t", count=None, chunk_size=1), Dimension(name="c", coords=[
                {"name": "DAPI", "excitation_wavelength_nm": 405, "color": "blue"}, "GFP"]),
            Dimension(name="z", count=3, scale=0.5, unit="um", translation=-1.0),
            Dimension(name="y", count=16, chunk_size=8), Dimension(name="x", count=16)],
            compression="blosc-zstd", storage_order="acquisition", backpressure="drop",
            ring_slots=16, image_name="run", acquisition_date="2024-05-01T12:00:00"),
        AcquisitionSettings(root_path=str(tmp / "p.ome.tiff"), dtype="float32", dimensions=[
            Dimension(name="p", type="position", coords=[
                {"name": "A1", "plate_row": "A", "plate_column": "1"},
                {"name": "B2", "plate_row": "B", "plate_column": "2"}]),
            Dimension(name="t", count=2), Dimension(name="y", count=4),
            Dimension(name="x", count=4)], plate={"row_names": ["A", "B"],
                                                   "column_names": ["1", "2"]},
            format={"name": "ome-tiff", "multi_file_metadata": "companion-file"},
            compression="lzw", instrument={"microscope_model": "Ti2", "objective": {
                "lens_na": 1.4, "nominal_magnification": 60, "immersion": "Oil"}}),
        AcquisitionSettings(root_path=str(tmp / "s.ome.zarr"), dtype="uint8", dimensions=[
            Dimension(name="c", count=2, type="channel"),
            Dimension(name="t", count=4, chunk_size=2, shard_size_chunks=2),
            Dimension(name="y", count=4), Dimension(name="x", count=4)],
            storage_order=["t", "c"], format={"name": "ome-zarr", "version": "0.5"}),
    ]
    hand = [
        settings(tmp / "h1.ome.zarr", format="zarr"),
        settings(tmp / "h2.ome.tiff", format="tiff"),
        settings(tmp / "h3.ome.tif", format="tifffile", backpressure_timeout=2),
        settings(tmp / "h4", format="ome-zarr"),  # a path without a suffix: OME-Zarr
        {**settings(tmp / "h5.ome.zarr"), "ring_slots": 8.0,
         "dimensions": [{"name": "t", "count": 3.0, "chunk_size": 1.0},
                        {"name": "y", "count": 8.0}, {"name": "x", "count": 8}]},
        {"root_path": str(tmp / "h6.zarr"), "dtype": "int64", "format": {"name": "ome-zarr",
         "version": "0.4"}, "dimensions": [{"name": "p", "type": "position", "count": 2},
                                           {"name": "y", "count": 4},
                                           {"name": "x", "count": 4}]},
    ]
    return [example, *(m.model_dump(mode="json") for m in models), *hand]


def test_every_settings_the_daemon_accepts_validates_against_the_schema(tmp_path):
    validator = _validator()
    for raw in _accepted_corpus(tmp_path):
        wire_settings.parse(raw)  # the daemon's own check (daemon._on_open)
        errors = [e.message for e in validator.iter_errors(raw)]
        assert not errors, (raw, errors)


REFUSED = [  # (what, settings change, the words the daemon's message holds)
    ("a bad dtype", {"dtype": "uint12"}, "dtype \"uint12\""),
    ("a numpy alias", {"dtype": "u2"}, "dtype \"u2\""),
    ("a negative count", {"dimensions": [{"name": "y", "count": -4}, {"name": "x", "count": 4}]},
     "dimensions[0].count: Input should be greater than 0 (got -4)"),
    ("a count as text", {"dimensions": [{"name": "y", "count": "4"}, {"name": "x", "count": 4}]},
     "dimensions[0].count: Input should be a valid integer (got \"4\")"),
    ("no dimensions", {"dimensions": None}, "dimensions"),
    ("one dimension", {"dimensions": [{"name": "x", "count": 4}]}, "dimensions"),
    ("an unknown field", {"colour": "red"}, "colour: Extra inputs are not permitted"),
    ("an unknown format", {"format": "png"}, "format \"png\" is not one of"),
    ("the scratch format", {"format": "scratch"}, "the scratch format is written in the "
                                                  "client's process"),
    ("a bad compression", {"compression": "gzip"}, "compression: Input should be"),
    ("a zero scale", {"dimensions": [{"name": "y", "count": 4, "scale": 0},
                                     {"name": "x", "count": 4}]}, "scale"),
    ("an empty root_path", {"root_path": ""}, "root_path"),
]


@pytest.mark.parametrize("what,change,words", REFUSED, ids=[r[0] for r in REFUSED])
def test_settings_the_daemon_refuses_fail_the_schema(tmp_path, what, change, words):
    raw = {**settings(tmp_path / "r.ome.zarr"), **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    assert list(_validator().iter_errors(raw)), f"{what}: the schema accepts {raw}"
    with pytest.raises((wire_settings.SettingsError, ValueError)) as err:
        wire_settings.parse(raw)
    assert words in str(err.value), str(err.value)


