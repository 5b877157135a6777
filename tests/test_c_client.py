"""The C library, its error paths and the C++ example, built with warnings as errors and run
against a real daemon; datasets checked pixel-exact and by the conformance checker."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ome_writers_service import AcquisitionSettings, Dimension
from ome_writers_service.metadata import read_frame_metadata

from service_util import (ensure_debian_packages, frames_written_in_metadata, read_image,
                          remove_daemon_shm, run_checker, start_daemon, this_host_address,
                          wait_finalized)

CLIENT = Path(__file__).resolve().parents[1] / "client" / "c"
HEADERS = [Path("/usr/include/zmq.h"), Path("/usr/include/cjson/cJSON.h")]
AS_ROOT = os.geteuid() == 0 and shutil.which("unshare") is not None
needs_unshare = pytest.mark.skipif(not AS_ROOT, reason="needs root and unshare (namespaces)")


def ensure_build_deps() -> None:
    ensure_debian_packages(["libzmq3-dev", "libcjson-dev", "make", "g++"],
                           all(h.exists() for h in HEADERS) and bool(shutil.which("make"))
                           and bool(shutil.which("g++")))


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    ensure_build_deps()
    out = tmp_path_factory.mktemp("cbuild")
    res = subprocess.run(["make", "-C", str(CLIENT), f"B={out}", "all"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr  # -Werror: any warning fails
    return out


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path / "rt")
    yield d
    if d.proc.poll() is None:
        os.kill(d.pid, signal.SIGCONT)  # in case a test left it stopped
        assert d.stop() == 0, d.log_text()
    remove_daemon_shm(d.pid)  # rings and chunk buffers of a SIGKILLed daemon


def pattern(i: int, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return ((i * 7 + y * 3 + x) & 0xFFFF).astype(np.uint16)


def tczyx_settings(root: str) -> AcquisitionSettings:
    return AcquisitionSettings(
        root_path=root, dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=4), Dimension(name="c", count=2),
                    Dimension(name="z", count=3), Dimension(name="y", count=40),
                    Dimension(name="x", count=56)])


def check_pattern_dataset(settings: AcquisitionSettings, report: dict) -> None:
    assert report["frames_written"] == 24 and report["errors"] == [], report
    want = np.stack([pattern(i, 40, 56) for i in range(24)]).reshape(4, 2, 3, 40, 56)
    np.testing.assert_array_equal(read_image(settings.root_path), want)
    run_checker(settings.root_path, shape=want.shape, dtype="uint16")
    # ows_test sends {"delta_t": 0.1 i} with frames i % 5 == 0 (storage order = acquisition order)
    rows = read_frame_metadata(settings.root_path)
    got = {(r["index"]["t"] * 2 + r["index"]["c"]) * 3 + r["index"]["z"]: r["delta_t"]
           for r in rows if "delta_t" in r}
    assert got == pytest.approx({i: 0.1 * i for i in range(0, 24, 5)})


def settings_file(tmp_path: Path, settings: AcquisitionSettings) -> Path:
    sfile = tmp_path / "settings.json"
    sfile.write_text(settings.model_dump_json())
    return sfile


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tiff"])
@pytest.mark.parametrize("transport", ["shm", "inline"])
def test_c_client_streams_an_exact_valid_dataset(build, daemon, tmp_path, suffix, transport):
    settings = tczyx_settings(str(tmp_path / f"c{suffix}"))
    sfile = settings_file(tmp_path, settings)
    res = subprocess.run([str(build / "ows_test"), daemon.endpoint, daemon.token, str(sfile),
                          transport, "24", "40", "56"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    check_pattern_dataset(settings, json.loads(res.stdout.strip().splitlines()[-1]))


def run_ows_test(build: Path, endpoint: str, token: str, sfile: Path, transport: str = "inline",
                 timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(build / "ows_test"), endpoint, token, str(sfile), transport,
                           "24", "40", "56"], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("transport", ["shm", "inline"])
def test_c_client_speaks_curve_with_the_keys_of_the_connection_file(build, tmp_path, transport):
    """A daemon that encrypts (--curve, forced on here on 127.0.0.1; always on beyond
    loopback): ows_open_connection_file takes its public key and the client key pair from
    daemon.json, and the stream (with its heartbeat socket, if any) runs over CURVE; the
    token alone (PLAIN) and a key pair the daemon did not hand out are refused by name."""
    import zmq

    d = start_daemon(tmp_path / "rt", "--endpoint", "tcp://127.0.0.1:0", "--curve")
    try:
        conn = d.rt / "daemon.json"
        settings = tczyx_settings(str(tmp_path / "c.ome.zarr"))
        sfile = settings_file(tmp_path, settings)
        res = run_ows_test(build, f"@{conn}", "-", sfile, transport)
        assert res.returncode == 0, res.stdout + res.stderr
        check_pattern_dataset(settings, json.loads(res.stdout.strip().splitlines()[-1]))
        if transport == "shm":
            return  # the refusals once
        res = run_ows_test(build, d.endpoint, d.token, sfile, timeout=30)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "speaks another security mechanism than PLAIN" in res.stderr, res.stderr
        assert "ows_open_connection_file" in res.stderr
        info = json.loads(conn.read_text())
        public, secret = zmq.curve_keypair()
        info["curve"].update(client_public=public.decode(), client_secret=secret.decode())
        forged = tmp_path / "forged.json"
        forged.write_text(json.dumps(info))
        res = run_ows_test(build, f"@{forged}", "-", sfile, timeout=30)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "did not accept the CURVE keys" in res.stderr, res.stderr
        info["curve"]["client_secret"] = "short"
        forged.write_text(json.dumps(info))
        res = run_ows_test(build, f"@{forged}", "-", sfile, timeout=30)
        assert res.returncode == 1 and "curve.client_secret is not a 40-character Z85" in \
            res.stderr, res.stderr
    finally:
        assert d.stop() == 0, d.log_text()


def test_c_client_over_the_network_keeps_its_stream_alive_with_encrypted_heartbeats(
        build, tmp_path):
    """Through this machine's network address, as from another host: the daemon cannot
    watch the client's pid, so the library's heartbeat thread (its own CURVE socket) keeps
    the stream open through a pause longer than the daemon's heartbeat timeout."""
    host = this_host_address()
    if host is None:
        pytest.skip("this machine has no non-loopback address")
    d = start_daemon(tmp_path / "rt", "--endpoint", f"tcp://{host}:0", "--allow-remote")
    try:
        settings = tczyx_settings(str(tmp_path / "c.ome.zarr"))
        res = subprocess.run([str(build / "ows_test"), f"@{d.rt / 'daemon.json'}", "-",
                              str(settings_file(tmp_path, settings)), "inline", "24", "40",
                              "56", "2.0"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        check_pattern_dataset(settings, json.loads(res.stdout.strip().splitlines()[-1]))
    finally:
        assert d.stop() == 0, d.log_text()


def test_c_client_refuses_a_non_loopback_endpoint_without_curve_keys(build, tmp_path):
    """PLAIN sends the token in clear text: an endpoint and token for another machine are
    refused before any connection is made (the name does not even resolve)."""
    sfile = settings_file(tmp_path, tczyx_settings(str(tmp_path / "c.ome.zarr")))
    for endpoint in ("tcp://scope-pc.invalid:5555", "tcp://10.1.2.3:5555", "tcp://[fe80::1]:1"):
        res = run_ows_test(build, endpoint, "secret", sfile, timeout=10)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"{endpoint} is not a loopback address: its connection must be encrypted " \
               "(CURVE)" in res.stderr, res.stderr
    assert not (tmp_path / "c.ome.zarr").exists()


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tiff"])
def test_c_client_killed_right_after_its_last_frame_loses_none(build, daemon, tmp_path, suffix):
    """SIGKILL right after the last ows_append/ows_commit returned, before the notices can
    leave the process: the daemon writes every frame from the ring's slot table."""
    settings = tczyx_settings(str(tmp_path / f"k{suffix}"))
    sfile = settings_file(tmp_path, settings)
    res = subprocess.run([str(build / "ows_test"), daemon.endpoint, daemon.token, str(sfile),
                          "shm", "24", "40", "56", "kill"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stdout + res.stderr
    wait_finalized(settings)
    want = np.stack([pattern(i, 40, 56) for i in range(24)]).reshape(4, 2, 3, 40, 56)
    np.testing.assert_array_equal(read_image(settings.root_path), want)
    assert frames_written_in_metadata(settings.root_path) == 24
    run_checker(settings.root_path, shape=want.shape, dtype="uint16")


def error_settings(tmp_path: Path) -> Path:
    return settings_file(tmp_path, AcquisitionSettings(
        root_path=str(tmp_path / "e.ome.zarr"), dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=100), Dimension(name="y", count=32),
                    Dimension(name="x", count=32)]))


def run_error_paths(argv: list[str], daemon, sig: int, limit: float, env=None) -> str:
    """Run ows_errors; at READY hit the daemon with `sig`; return everything it printed."""
    proc = subprocess.Popen([*argv, daemon.endpoint, daemon.token, str(error_settings(
        daemon.rt.parent)), str(limit)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    while (line := proc.stdout.readline()) and line.strip() != "READY":
        lines.append(line)
    if line.strip() != "READY":
        proc.kill()
        pytest.fail("".join(lines) + proc.communicate()[1])
    os.kill(daemon.pid, sig)
    out, err = proc.communicate("go\n", timeout=60)
    text = "".join(lines) + out
    assert proc.returncode == 0, text + err
    assert "ERROR: " not in err, err  # sanitizers
    assert "wrong token: daemon: open refused" in text
    assert "invalid settings: daemon: invalid settings" in text and "count" in text
    assert "wrong size: frame 0: 2050 bytes" in text
    assert "huge metadata: frame 0: meta_json is 1100012 bytes: at most 1000000" in text
    assert "GONE after" in text and "closed: {" in text and '"error":"' in text
    assert "refused frame: daemon: frame 1: frame_metadata['delta_t']" in text  # OWS_REFUSED
    assert "refused metadata: \"error\":\"daemon: frame 1: frame_metadata['delta_t']" in text
    return text


def test_c_client_error_paths(build, daemon):
    text = run_error_paths([str(build / "ows_errors")], daemon, signal.SIGKILL, 3.0)
    assert f"pid {daemon.pid}) is gone" in text  # noticed through the daemon's pid
    daemon.proc.wait(10)


def test_c_client_reports_a_daemon_shutdown_with_its_final_report(build, daemon):
    """SIGTERM: the daemon finalizes the stream and says so (ring flag 2, `closed` with reason
    "shutdown"); the client's next call fails and close hands back that final report."""
    text = run_error_paths([str(build / "ows_errors")], daemon, signal.SIGTERM, 3.0)
    assert "GONE after" in text and re.search(r"the daemon (ended|closed) the stream "
                                              r"\(shutdown\)", text), text
    closed = json.loads(text.split("closed: ", 1)[1].splitlines()[0])
    assert closed["type"] == "closed" and closed["reason"] == "shutdown"
    assert closed["frames_written"] == 5 and closed["frames_skipped"] == 95, closed
    assert daemon.proc.wait(30) == 0


def test_c_client_does_not_block_on_a_hung_daemon(build, daemon):
    """A daemon that is alive but does not answer (SIGSTOP: hung, or unreachable) is noticed
    by its unanswered pings; status and close then fail at once instead of blocking."""
    try:
        text = run_error_paths([str(build / "ows_errors")], daemon, signal.SIGSTOP, 8.0)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert "has not answered for" in text


def test_cpp_camera_simulation(build, daemon, tmp_path):
    """The C++ example streams a 5D acquisition at a fixed rate through the RAII wrapper,
    finding the daemon through its connection file (no endpoint/token given)."""
    root = tmp_path / "cam.ome.tiff"
    env = {**os.environ, "OME_WRITERS_SERVICE_RUNTIME_DIR": str(daemon.rt)}
    res = subprocess.run([str(build / "camera_sim"), str(root), "400", "3", "2", "4", "64"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("protocol 1.1\n"), res.stdout
    m = re.search(r"24 frames in [\d.]+ s: ([\d.]+) fps \(target 400\.0\), \d+ frames late, "
                  r"0 dropped", res.stdout)
    assert m and float(m.group(1)) > 0, res.stdout
    want = np.stack([pattern(i, 64, 64) for i in range(24)]).reshape(3, 2, 4, 64, 64)
    np.testing.assert_array_equal(read_image(str(root)), want)
    run_checker(str(root), shape=want.shape, dtype="uint16")


def test_c_client_under_address_sanitizer(build, daemon, tmp_path):
    res = subprocess.run(["make", "-C", str(CLIENT), f"B={build}", "asan"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "a.ome.tiff"), dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=6), Dimension(name="y", count=16),
                    Dimension(name="x", count=16)])
    sfile = settings_file(tmp_path, settings)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    for transport in ("shm", "inline"):
        res = subprocess.run([str(build / "ows_test_asan"), daemon.endpoint, daemon.token,
                              str(sfile), transport, "6", "16", "16"], capture_output=True,
                             text=True, timeout=120, env=env)
        assert res.returncode == 0, res.stdout + res.stderr  # leaks or invalid accesses fail
        assert "ERROR: " not in res.stderr, res.stderr
    run_error_paths([str(build / "ows_errors_asan")], daemon, signal.SIGKILL, 3.0, env=env)
    daemon.proc.wait(10)


# ---- the client in another pid namespace (a container, or Windows): heartbeats and pings

UNSHARE_PID = ["unshare", "--pid", "--fork", "--mount-proc"]


@needs_unshare
@pytest.mark.parametrize("transport", ["shm", "inline"])
def test_c_client_in_another_pid_namespace_keeps_its_stream_alive(build, daemon, tmp_path,
                                                                  transport):
    """The daemon cannot watch the client's pid: the library's heartbeat thread keeps the
    stream open through a pause longer than the daemon's heartbeat timeout (1.5 s)."""
    settings = tczyx_settings(str(tmp_path / "ns.ome.zarr"))
    sfile = settings_file(tmp_path, settings)
    res = subprocess.run([*UNSHARE_PID, str(build / "ows_test"), daemon.endpoint, daemon.token,
                          str(sfile), transport, "24", "40", "56", "2.5"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    log = daemon.log_text()
    assert "client lost" not in log and "heartbeat from the client" not in log, log
    check_pattern_dataset(settings, json.loads(res.stdout.strip().splitlines()[-1]))


@needs_unshare
def test_c_client_in_another_pid_namespace_notices_the_daemon_gone(build, daemon):
    """Without the daemon's pid, death is noticed by unanswered pings — still no blocking."""
    text = run_error_paths([*UNSHARE_PID, str(build / "ows_errors")], daemon, signal.SIGKILL, 8.0)
    assert "has not answered for" in text
    daemon.proc.wait(10)


@needs_unshare
def test_c_client_without_the_daemons_shm_says_so_and_frees_the_stream(build, daemon, tmp_path):
    """A client that cannot map the ring (its own /dev/shm: another IPC namespace) gets an
    error naming the inline transport, and the stream the daemon opened is closed at once —
    not left open (ring and all) until the client process exits. Inline then works."""
    settings = tczyx_settings(str(tmp_path / "private-shm.ome.zarr"))
    script = f"""
import ctypes, json, sys, time
from ome_writers_service.client import daemon_status
lib = ctypes.CDLL({str(build / "libows_client.so")!r})
lib.ows_open_ex.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                            ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
lib.ows_close.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
s, err = ctypes.c_void_p(), ctypes.create_string_buffer(1024)
args = ({daemon.endpoint!r}.encode(), {daemon.token!r}.encode(), {settings.model_dump_json()!r}.encode())
rc = lib.ows_open_ex(*args, 0, ctypes.byref(s), err, 1024)
print("shm", rc, err.value.decode(), flush=True)
deadline = time.monotonic() + 5
while daemon_status({daemon.endpoint!r}, {daemon.token!r})["streams"] and time.monotonic() < deadline:
    time.sleep(0.1)
print("open streams", len(daemon_status({daemon.endpoint!r}, {daemon.token!r})["streams"]), flush=True)
rc = lib.ows_open_ex(*args, 1, ctypes.byref(s), err, 1024)
report = ctypes.create_string_buffer(16384)
print("inline", rc, lib.ows_close(s, report, 16384), report.value.decode(), flush=True)
"""
    cmd = (f"mount -t tmpfs -o size=16m tmpfs /dev/shm && exec {shlex.quote(sys.executable)} "
           f"-c {shlex.quote(script)}")
    res = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("shm -8 shm_open(ows-") and "inline transport" in lines[0], lines
    assert lines[1] == "open streams 0", res.stdout  # closed although the client still runs
    assert lines[2].startswith("inline 0 0 {"), res.stdout


def test_the_labview_guides_acquisition_runs(build, daemon, tmp_path):
    """client/labview/acquisition.c, the guide's VI as C: a slow time-lapse (pauses longer
    than the heartbeat timeout; in another pid namespace when root, so the daemon has only
    the library's heartbeats and frames to go by) with one frame whose metadata the daemon
    refuses: that frame is reported once, as a warning, and is a gap; the stream goes on;
    close returns -2 with a report of one type per field that counts the refusal."""
    root = tmp_path / "labview.ome.tiff"
    cmd = [str(build / "acquisition"), daemon.endpoint, daemon.token, str(root), "4", "1.8", "1"]
    res = subprocess.run([*UNSHARE_PID, *cmd] if AS_ROOT else cmd, capture_output=True,
                         text=True, timeout=60)
    out = res.stdout
    assert res.returncode == 1, out + res.stderr  # close: -2, a frame was refused
    lines = out.splitlines()
    assert lines[0] == "open: protocol 1.1", out
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith(
        "warning: daemon: frame 1: frame_metadata['delta_t']") and \
        warnings[0].endswith("(malformed)"), out
    status = json.loads(next(line for line in lines if line.startswith("status: "))[8:])
    assert status["frames_refused"] == 1 and isinstance(status["errors"], list), status
    close = next(line for line in lines if line.startswith("close ("))
    assert close.startswith("close (-2): "), close
    report = json.loads(close[len("close (-2): "):])
    assert (report["frames_written"], report["frames_refused"], report["reason_code"]) == \
        (3, 1, "closed_by_client"), report
    assert report["error"].startswith("daemon: frame 1: frame_metadata['delta_t']"), report
    assert "client lost" not in daemon.log_text()
    got = read_image(str(root))
    assert [int(f[0, 0]) for f in got] == [0, 0, 14, 21]  # frame 1 is the gap (fill value)


def test_c_client_names_both_versions_with_a_1_0_daemon(build, tmp_path):
    """PROTOCOL.md 8: an open a 1.0 daemon refuses (its errors have no seq) names both
    protocol versions besides the daemon's own text; the library sent minor 1."""
    import ctypes

    from old_daemon import OldDaemon

    lib = ctypes.CDLL(str(build / "libows_client.so"))
    lib.ows_open_ex.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
    old = OldDaemon(tmp_path)
    try:
        s, err = ctypes.c_void_p(), ctypes.create_string_buffer(2048)
        settings = tczyx_settings(str(tmp_path / "old.ome.zarr")).model_dump_json().encode()
        rc = lib.ows_open_ex(old.endpoint.encode(), old.token.encode(), settings, 1,
                             ctypes.byref(s), err, 2048)
        assert old.opens and old.opens[0]["minor"] == 1, old.opens
    finally:
        old.stop()
    text = err.value.decode()
    assert rc == -2 and not s.value, (rc, text)
    assert "Extra inputs are not permitted" in text and text.endswith(
        "(invalid_settings) (the daemon speaks protocol 1.0, this library 1.1: upgrade the "
        "daemon's ome-writers-service)"), text


def test_c_library_compiles_for_windows(tmp_path):
    """ows_client.c builds for Windows (MinGW-w64, installed here when missing), where only
    the inline transport exists; warnings are errors."""
    ensure_debian_packages(["gcc-mingw-w64-x86-64"], bool(shutil.which("x86_64-w64-mingw32-gcc")))
    ensure_build_deps()  # zmq.h and cJSON.h to compile against
    res = subprocess.run(["make", "-C", str(CLIENT), f"B={tmp_path}", "windows"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
