"""The examples run as written (against a daemon they start themselves) and write valid data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ome_writers_service.validate import validate_all

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = tmp_path_factory.mktemp("rt")
    yield rt
    info = rt / "daemon.json"
    if info.exists():
        import json
        os.kill(json.loads(info.read_text())["pid"], signal.SIGTERM)
        for _ in range(100):
            if not info.exists():
                break
            time.sleep(0.05)


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_and_writes_valid_data(script, tmp_path, runtime):
    if script.stem == "mda_loop":
        pytest.importorskip("useq")
    env = {**os.environ, "OME_WRITERS_SERVICE_RUNTIME_DIR": str(runtime)}
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    if script.stem.startswith("s3_"):  # writes to a bucket, and checks what it reads back
        assert "verified s3://" in res.stdout, res.stdout
        return
    outputs = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert outputs
    for path in outputs:  # stores, files, and directories of multi-file OME-TIFFs
        for report in validate_all(path):
            assert report.ok, str(report)
