"""Keep the suite to itself: a test that lets `create_stream()` start the local daemon gets
one of this session's own (a private runtime directory), never the per-user daemon another
program or another checkout's test run may be serving from the default one."""

from __future__ import annotations

import json
import os
import signal

import pytest

from ome_writers_service.connection import ENV_RUNTIME_DIR


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir(tmp_path_factory):
    if os.environ.get(ENV_RUNTIME_DIR):  # the caller chose one
        yield None
        return
    rt = tmp_path_factory.mktemp("runtime")
    rt.chmod(0o700)
    os.environ[ENV_RUNTIME_DIR] = str(rt)
    try:
        yield rt
    finally:
        del os.environ[ENV_RUNTIME_DIR]
        try:  # the daemon started on demand for this session: ours alone, so stop it
            pid = int(json.loads((rt / "daemon.json").read_text())["pid"])
            with open(f"/proc/{pid}/cmdline", "rb") as f:  # still that daemon (not a reuse)
                ours = str(rt).encode() in f.read()
            if ours:
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, KeyError, TypeError):
            pass
