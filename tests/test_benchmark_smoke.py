"""The benchmark command on tiny sizes, so that it cannot rot (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.mark.skipif(sys.platform == "win32", reason="the benchmark reads the daemon's peak memory "
                    "from /proc (VmHWM, clear_refs): Linux only, and speed under Wine says "
                    "nothing about Windows")
def test_benchmark_runs_end_to_end_on_tiny_sizes(tmp_path):
    out = tmp_path / "results"
    res = subprocess.run(
        [sys.executable, str(BENCH), "--scale", "0.005", "--repeats", "1", "--workloads",
         "W1,W2", "--out", str(out), "--workdir", str(tmp_path / "work"), "--no-plot",
         "--writers", "raw,service tiff,service zarr,in-process zarr,ome-writers tensorstore"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    for wl in ("W1", "W2"):
        writers = data["workloads"][wl]["writers"]
        for label in ("raw disk", "service tiff", "service zarr", "in-process zarr"):
            assert "error" not in writers[label], (wl, label, writers[label])
            assert writers[label]["fps_close"]["median"] > 0
        assert writers["service zarr"]["daemon_peak_rss_mb"]["median"] > 0
    for label in ("service tiff levels=4", "service zarr levels=4"):  # W1 only
        assert data["workloads"]["W1"]["writers"][label]["fps_close"]["median"] > 0
        assert label not in data["workloads"]["W2"]["writers"]
    for fmt in ("tiff", "zarr"):  # the pyramid's cost, a target row of both formats
        assert f"W1 service {fmt} levels=4 ÷ service {fmt} (levels=1) ≥ 0.75" in \
            (out / "results.md").read_text()
    assert set(data["camera"]) >= {"100 fps 2048x2048 tiff", "5 kHz 256x256 zarr"}
    md = (out / "results.md").read_text()
    assert "service tiff ÷ raw disk" in md and "Camera simulation" in md
    assert not any((tmp_path / "work").iterdir())  # datasets are removed after each run
