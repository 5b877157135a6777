"""pytest plugin for the upstream run: one writer daemon for the whole daemon-backed session.

Loaded with ``-p ows_upstream_plugin``. In "daemon" mode it starts ``ome-writers-service
serve`` in a private runtime directory before the first test and points every stream at it
(`OME_WRITERS_SERVICE_RUNTIME_DIR`); it stops the daemon (SIGTERM, which finalizes any open
stream) after the last test, and fails the session if the daemon died on the way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_daemon: subprocess.Popen | None = None
_rt: tempfile.TemporaryDirectory | None = None


def pytest_configure(config) -> None:
    global _daemon, _rt
    import ome_writers
    shim = Path(__file__).resolve().parent / "ome_writers"
    if Path(ome_writers.__file__).resolve().parent != shim:
        # the released package (a dependency of pymmcore-plus) must not be what is tested
        raise RuntimeError(f"ome_writers resolves to {ome_writers.__file__}, not the shim "
                           f"{shim}: put the shim first on PYTHONPATH")
    if os.environ.get("OWS_UPSTREAM_MODE", "daemon") != "daemon" or _daemon is not None:
        return
    _rt = tempfile.TemporaryDirectory(prefix="ows-upstream-")
    rt = Path(_rt.name)
    log = open(rt / "daemon.log", "wb")  # noqa: SIM115 (kept open for the daemon's life)
    _daemon = subprocess.Popen(
        [sys.executable, "-m", "ome_writers_service", "serve", "--runtime-dir", str(rt)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if json.loads((rt / "daemon.json").read_text())["pid"] == _daemon.pid:
                break
        except (OSError, ValueError, KeyError):
            pass
        if _daemon.poll() is not None:
            raise RuntimeError("daemon exited at start:\n" + (rt / "daemon.log").read_text())
        time.sleep(0.05)
    else:
        _daemon.kill()
        raise RuntimeError("daemon did not start in 60 s")
    os.environ["OME_WRITERS_SERVICE_RUNTIME_DIR"] = str(rt)


def pytest_unconfigure(config) -> None:
    global _daemon
    if _daemon is None:
        return
    died = _daemon.poll()
    if died is None:
        _daemon.terminate()
        try:
            _daemon.wait(60)
        except subprocess.TimeoutExpired:
            _daemon.kill()
            _daemon.wait()
    log = (Path(_rt.name) / "daemon.log").read_text(errors="replace")
    if report := os.environ.get("OWS_UPSTREAM_DAEMON_REPORT"):
        Path(report).write_text(json.dumps({"died": died, "log": log[-20000:]}))
    if died is not None:
        sys.stderr.write(f"ows_upstream_plugin: the daemon died during the run "
                         f"(exit {died}); its log:\n{log}\n")
    _daemon = None
    _rt.cleanup()
