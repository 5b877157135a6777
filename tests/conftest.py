"""Keep the suite to itself: a test that lets `create_stream()` start the local daemon gets
one of this session's own (a private runtime directory), never the per-user daemon another
program or another checkout's test run may be serving from the default one."""

from __future__ import annotations

import json
import os
import signal

import pytest

from ome_writers_service import platform
from ome_writers_service.connection import ENV_RUNTIME_DIR, runtime_dir


def pytest_configure(config):
    if platform.WINDOWS:  # pytest-timeout's thread method would end the whole run on a hang
        import windows_timeout

        if config.pluginmanager.get_plugin("timeout") is not None:
            config.pluginmanager.unregister(name="timeout")
            config.pluginmanager.register(windows_timeout, "windows_timeout")


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir(tmp_path_factory):
    if os.environ.get(ENV_RUNTIME_DIR):  # the caller chose one
        yield None
        return
    rt = runtime_dir(tmp_path_factory.getbasetemp() / "runtime")  # private, on Windows too
    os.environ[ENV_RUNTIME_DIR] = str(rt)
    try:
        yield rt
    finally:
        del os.environ[ENV_RUNTIME_DIR]
        try:  # the daemon started on demand for this session: ours alone, so stop it
            pid = int(json.loads((rt / "daemon.json").read_text())["pid"])
            if platform.WINDOWS:  # only a daemon has a stop event
                platform.request_stop(pid)
                return
            with open(f"/proc/{pid}/cmdline", "rb") as f:  # still that daemon (not a reuse)
                ours = str(rt).encode() in f.read()
            if ours:
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, KeyError, TypeError):
            pass


#: Under Wine in CI (.ci/windows sets OWS_WINE_CI) these modules are left out, each with its
#: reason: what they check does not depend on the platform, the Linux run covers it, and
#: under Wine they would take the Windows run past CI's time budget.
WINE_CI_LEFT_OUT = {
    "test_readers.py": "independent readers (ome-zarr-py, bioio, zarr-python, Bio-Formats) "
                       "read the files: the bytes are the same on every platform",
    "test_upstream_suite.py": "ome-writers 0.3.2's own suite: API behaviour, the same on "
                              "every platform",
    "test_s3.py": "S3 through tensorstore's kvstore and moto: no platform part",
    "test_mda.py": "pymmcore-plus MDAs through ServiceSink: client code the Windows client "
                   "tests already run",
    "test_examples.py": "the example scripts: each a fresh interpreter start, slow under Wine; "
                        "what they call is tested",
    "test_reliability.py": "a 10,000-message protocol fuzz (parsing: the same on every platform) "
                           "and a 200,000-frame soak: minutes each under Wine",
}


#: Run last under Wine: Wine 8.0 keeps some sockets of the processes these tests kill
#: (TerminateProcess: clients with ten streams each, daemons; wineserver's dump at exit lists
#: them under terminated processes), and once such an orphan turns readable (its peer's data or
#: close) wineserver polls it ~1,400 times a second until it exits: after the client-kill test,
#: 11 such orphans (CLOSE-WAIT in `ss`) had wineserver at 0.76 of a core on average, its
#: syscalls recvfrom + getsockopt on exactly those fds (strace). Real Windows closes a killed
#: process' sockets.
WINE_RUN_LAST = ("test_faults.py",)


def pytest_collection_modifyitems(config, items):
    if not (platform.WINDOWS and os.environ.get("OWS_WINE_CI")):
        return
    items.sort(key=lambda item: item.path.name in WINE_RUN_LAST)  # stable: otherwise in order
    for item in items:
        reason = WINE_CI_LEFT_OUT.get(item.path.name)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"left out under Wine in CI (time): "
                                                    f"{reason}; run on Linux"))
