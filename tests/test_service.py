"""The writer service end to end: real daemon processes, real ZeroMQ sockets, real shared
memory, datasets read back by independent readers and the conformance checker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from ome_writers_service import (AcquisitionSettings, Dimension, OMEStream, PositionDimension,
                                 create_stream)
from ome_writers_service import protocol as P
from ome_writers_service.client import DaemonGoneError, RingFullError, ServiceError
from ome_writers_service.stream import FrameCountError, FrameMismatchError
from ome_writers_service.validate import validate_all

from ome_writers_service import platform
from service_util import (CLIENT_SCRIPT, SIGKILL, assert_private, expected_images, frame_pixels,
                          frames_written_in_metadata, needs_tmpfs, read_image, remove_daemon_shm,
                          continue_process, pause_process, run_checker, shm_rings,
                          start_daemon)

FORMATS = [".ome.zarr", ".ome.tiff"]


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path / "rt")
    yield d
    code = d.stop()
    assert code == 0, d.log_text()
    assert not shm_rings(d.pid), "daemon left a ring"


def settings_5d(root: Path, **kw) -> AcquisitionSettings:
    dims = kw.pop("dimensions", None) or [
        Dimension(name="t", count=3, type="time"),
        PositionDimension(coords=["A", "B"]),
        Dimension(name="z", count=3, type="space"),
        Dimension(name="c", count=2, type="channel"),
        Dimension(name="y", count=48, type="space"),
        Dimension(name="x", count=40, type="space"),
    ]
    return AcquisitionSettings(root_path=str(root), dimensions=dims, dtype=kw.pop("dtype", "uint16"),
                               overwrite=True, **kw)


def check_dataset(settings: AcquisitionSettings, paths: list[str], seed: int, **kw) -> None:
    want = expected_images(settings, seed, **kw)
    assert len(paths) == len(want)
    for path, arr in zip(paths, want):
        got = read_image(path)
        assert got.shape == arr.shape, path
        np.testing.assert_array_equal(got, arr, err_msg=path)
    if settings.format_name == "ome-zarr":
        run_checker(settings.root_path, shape=want[0].shape, dtype=settings.dtype)
    else:
        for path, arr in zip(paths, want):
            run_checker(path, shape=arr.shape, dtype=settings.dtype)


def run_client(d, settings: AcquisitionSettings, tmp_path: Path, seed: int, *args: str):
    sfile = tmp_path / f"settings-{seed}.json"
    sfile.write_text(settings.model_dump_json())
    return subprocess.Popen(
        [sys.executable, str(CLIENT_SCRIPT), str(sfile), d.endpoint, d.token, str(seed), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("mode", [[], ["--claim"], ["--transport", "inline"]],
                         ids=["append", "claim", "inline"])
def test_client_process_writes_exact_valid_dataset(daemon, tmp_path, suffix, mode):
    settings = settings_5d(tmp_path / f"data{suffix}", ring_slots=5)
    report = finish(run_client(daemon, settings, tmp_path, 7, *mode))
    assert report["frames_written"] == settings.num_frames
    assert report["frames_dropped"] == 0 and report["errors"] == []
    check_dataset(settings, report["paths"], 7)


def test_two_clients_stream_at_once(daemon, tmp_path):
    a = settings_5d(tmp_path / "cam1.ome.zarr")
    b = settings_5d(tmp_path / "cam2.ome.tiff", dimensions=[
        Dimension(name="t", count=40), Dimension(name="y", count=64), Dimension(name="x", count=64)])
    pa = run_client(daemon, a, tmp_path, 1)
    pb = run_client(daemon, b, tmp_path, 2)
    ra, rb = finish(pa), finish(pb)
    check_dataset(a, ra["paths"], 1)
    check_dataset(b, rb["paths"], 2)


def test_in_test_process_client_claim_and_status(daemon, tmp_path):
    settings = settings_5d(tmp_path / "c.ome.zarr")
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    n = settings.num_frames
    for i in range(n):
        with stream.claim() as slot:
            assert slot.shape == settings.frame_shape and slot.dtype == np.uint16
            slot[...] = frame_pixels(3, i, settings.frame_shape, np.uint16)
    st = stream.status()
    assert st["frames_expected"] == n and st["frames_sent"] == n
    report = stream.close()
    assert report["frames_written"] == n
    check_dataset(settings, report["paths"], 3)


def test_claim_block_that_raises_sends_nothing(daemon, tmp_path):
    settings = settings_5d(tmp_path / "c.ome.tiff", dimensions=[
        Dimension(name="t", count=3), Dimension(name="y", count=16), Dimension(name="x", count=16)])
    with create_stream(settings, endpoint=daemon.endpoint, token=daemon.token) as stream:
        with pytest.raises(KeyError):
            with stream.claim() as slot:
                slot[...] = 99
                raise KeyError("camera timeout")
        for i in range(3):
            stream.append(frame_pixels(5, i, (16, 16), np.uint16))
    check_dataset(settings, stream.report["paths"], 5)


def test_bad_frames_raise_in_client_and_stream_survives(daemon, tmp_path):
    settings = settings_5d(tmp_path / "b.ome.zarr", dimensions=[
        Dimension(name="t", count=2), Dimension(name="y", count=16), Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    stream.append(frame_pixels(9, 0, (16, 16), np.uint16))
    with pytest.raises(FrameMismatchError, match=r"frame 1: shape \(16, 15\)"):
        stream.append(np.zeros((16, 15), np.uint16))
    with pytest.raises(FrameMismatchError, match="frame 1: dtype float32"):
        stream.append(np.zeros((16, 16), np.float32))
    stream.append(frame_pixels(9, 1, (16, 16), np.uint16))
    with pytest.raises(FrameCountError, match="exceed total of 2 frames"):
        stream.append(np.zeros((16, 16), np.uint16))
    report = stream.close()
    check_dataset(settings, report["paths"], 9)


def test_bad_metadata_raises_in_client_naming_frame_and_key_and_costs_no_slot(daemon, tmp_path):
    settings = settings_5d(tmp_path / "m.ome.tiff", ring_slots=2, backpressure_timeout=5,
                           dimensions=[Dimension(name="t", count=4), Dimension(name="y", count=16),
                                       Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    for bad, match in [({"delta_t": "n/a"}, r"frame 0: frame_metadata\['delta_t'\] must be a "
                                             "finite number"),
                       ({"exposure_time": float("nan")}, "'exposure_time'.*finite"),
                       ({"note": object()}, r"frame 0: frame_metadata\['note'\] cannot be stored"),
                       ({"index": 3}, "'index' is reserved")]:
        with pytest.raises((TypeError, ValueError), match=match):
            stream.append(frame_pixels(2, 0, (16, 16), np.uint16), frame_metadata=bad)
    with pytest.raises(ValueError, match="'ome' is reserved"):
        stream.set_global_metadata("ome", {"a": 1})
    for i in range(4):  # every slot is still usable: nothing was taken by the refused calls
        stream.append(frame_pixels(2, i, (16, 16), np.uint16),
                      frame_metadata={"exposure_time": np.float32(0.5), "gain": np.int64(i)})
    report = stream.close()
    check_dataset(settings, report["paths"], 2)
    from ome_writers_service import read_frame_metadata
    rows = read_frame_metadata(report["paths"][0])
    assert [r["gain"] for r in rows] == [0, 1, 2, 3] and rows[0]["exposure_time"] == 0.5


def test_units_interleaved_in_a_small_ring_do_not_starve_the_client(daemon, tmp_path):
    # c varies fastest and t is chunked by 2: every unit waits for frames ten apart, more
    # than the ring holds; the daemon must copy rather than hold slots it cannot give back
    settings = settings_5d(tmp_path / "i.ome.zarr", ring_slots=8, backpressure_timeout=5,
                           dimensions=[Dimension(name="t", count=10, chunk_size=2),
                                       Dimension(name="c", count=2), Dimension(name="z", count=5),
                                       Dimension(name="y", count=16), Dimension(name="x", count=16)])
    with create_stream(settings, endpoint=daemon.endpoint, token=daemon.token) as stream:
        for i in range(settings.num_frames):
            stream.append(frame_pixels(4, i, (16, 16), np.uint16))
    check_dataset(settings, stream.report["paths"], 4)


def test_daemon_errors_reach_the_client(daemon, tmp_path):
    target = tmp_path / "exists.ome.zarr"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    settings = AcquisitionSettings(root_path=str(target), dtype="uint8", dimensions=[
        Dimension(name="t", count=2), Dimension(name="y", count=8), Dimension(name="x", count=8)])
    # raised as what the in-process stream raises for the same cause (ome-writers' type)
    with pytest.raises(FileExistsError, match="already exists") as err:
        create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    assert err.value.code == P.E_SETTINGS and str(target) in str(err.value)
    with pytest.raises(FileExistsError):
        create_stream(settings, in_process=True)
    assert (target / "precious.txt").read_text() == "keep me"
    with pytest.raises(ServiceError, match="token"):
        create_stream(settings.model_copy(update={"overwrite": True}),
                      endpoint=daemon.endpoint, token="0" * 32)


@needs_tmpfs
@pytest.mark.parametrize("suffix,chunk", [(".ome.tiff", 1), (".ome.zarr", 1), (".ome.zarr", 4)])
def test_disk_full_reaches_client_and_keeps_written_frames(daemon, tmp_path, suffix, chunk):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], check=True)
    try:
        root = mnt / f"data{suffix}"
        settings = settings_5d(root, dimensions=[
            Dimension(name="t", count=40, chunk_size=chunk), Dimension(name="y", count=128),
            Dimension(name="x", count=128)], ring_slots=8)  # 32 KiB frames: ~18 fit
        stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
        with pytest.raises(ServiceError) as err:
            for i in range(40):
                stream.append(frame_pixels(4, i, (128, 128), np.uint16))
                time.sleep(0.002)
            stream.close()
        assert str(root) in str(err.value) and "space" in str(err.value).lower(), err.value
        if not stream.closed:
            with pytest.raises(ServiceError):
                stream.close()
        report = stream.report
        assert report is not None and report["errors"]
        # what the metadata says matches what is on disk, checked by independent readers
        if suffix == ".ome.tiff":
            import tifffile
            from ome_types import from_xml
            with tifffile.TiffFile(root) as tf:
                ome = from_xml(tf.ome_metadata, validate=True)
                pages = [p.asarray() for p in tf.pages]
            px = ome.images[0].pixels
            summary = {m.k: m.value for a in ome.structured_annotations.map_annotations
                       if a.namespace == "ome_writers.acquisition" for m in a.value.ms}
            assert summary["complete"] == "false"
            written = int(summary["frames_written"])
            assert 5 < written < 40 and px.size_t <= len(pages) and px.size_t <= written
            for i in range(px.size_t):  # every described plane is the frame sent
                np.testing.assert_array_equal(pages[i], frame_pixels(4, i, (128, 128), np.uint16))
        else:
            import yaozarrs
            yaozarrs.validate_zarr_store(str(root))
            attrs = json.loads((root / "zarr.json").read_text())["attributes"]
            summary = attrs["ome_writers"]["acquisition"]
            assert summary["complete"] is False
            got = read_image(str(root))
            chunks = [p for p in (root / "0" / "c").rglob("*") if p.is_file()]
            assert summary["frames_written"] == len(chunks) * chunk  # only frames on disk
            for i in range(summary["frames_written"]):
                np.testing.assert_array_equal(got[i], frame_pixels(4, i, (128, 128), np.uint16))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_backpressure_raise(daemon, tmp_path):
    settings = settings_5d(tmp_path / "r.ome.zarr", ring_slots=4, backpressure="raise",
                           dimensions=[Dimension(name="t", count=10), Dimension(name="y", count=32),
                                       Dimension(name="x", count=32)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    pause_process(daemon.pid)
    try:
        for i in range(4):
            stream.append(frame_pixels(1, i, (32, 32), np.uint16))
        with pytest.raises(RingFullError, match="frame 4: all 4 ring slots"):
            stream.append(frame_pixels(1, 4, (32, 32), np.uint16))
    finally:
        continue_process(daemon.pid)
    for i in range(4, 10):  # the refused frame can be appended again once slots come back
        deadline = time.monotonic() + 10
        while True:
            try:
                stream.append(frame_pixels(1, i, (32, 32), np.uint16))
                break
            except RingFullError:
                assert time.monotonic() < deadline
                time.sleep(0.01)
    report = stream.close()
    assert report["frames_written"] == 10 and report["frames_dropped"] == 0
    check_dataset(settings, report["paths"], 1)


def test_backpressure_drop_counts_and_reports(daemon, tmp_path):
    settings = settings_5d(tmp_path / "d.ome.tiff", ring_slots=4, backpressure="drop",
                           dimensions=[Dimension(name="t", count=12), Dimension(name="y", count=32),
                                       Dimension(name="x", count=32)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    pause_process(daemon.pid)
    try:
        for i in range(10):  # 4 fit, 6 are dropped
            stream.append(frame_pixels(2, i, (32, 32), np.uint16))
    finally:
        continue_process(daemon.pid)
    assert stream.frames_dropped == 6
    time.sleep(0.5)  # let the daemon release the slots
    for i in range(10, 12):
        stream.append(frame_pixels(2, i, (32, 32), np.uint16))
    report = stream.close()
    assert report["frames_written"] == 6 and report["frames_dropped"] == 6
    # dropped frames are not data: they keep the fill value, the others are exact
    check_dataset(settings, report["paths"], 2, missing=set(range(4, 10)))


def test_backpressure_block_waits_then_times_out(daemon, tmp_path):
    settings = settings_5d(tmp_path / "k.ome.zarr", ring_slots=4, backpressure_timeout=0.5,
                           dimensions=[Dimension(name="t", count=10), Dimension(name="y", count=32),
                                       Dimension(name="x", count=32)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    pause_process(daemon.pid)
    resume = threading.Timer(0.3, continue_process, (daemon.pid,))
    resume.start()
    for i in range(6):  # blocks on frame 4 until the daemon resumes, then goes on
        stream.append(frame_pixels(6, i, (32, 32), np.uint16))
    resume.join()
    pause_process(daemon.pid)
    try:
        with pytest.raises(RingFullError, match="within 0.5 s"):
            for i in range(6, 10):
                stream.append(frame_pixels(6, i, (32, 32), np.uint16))
    finally:
        continue_process(daemon.pid)
    report = stream.close()
    assert report["errors"] == []
    assert report["frames_written"] == stream.frames_sent - stream.frames_dropped


def test_sigterm_finalizes_open_streams(tmp_path):
    d = start_daemon(tmp_path / "rt")
    settings = settings_5d(tmp_path / "s.ome.tiff", dimensions=[
        Dimension(name="t", count=None), Dimension(name="y", count=32), Dimension(name="x", count=32)])
    stream = create_stream(settings, endpoint=d.endpoint, token=d.token)
    for i in range(7):
        stream.append(frame_pixels(8, i, (32, 32), np.uint16))
    deadline = time.monotonic() + 10
    while stream.status()["frames_written"] < 7:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert d.stop() == 0
    with pytest.raises((DaemonGoneError, ServiceError)):
        stream.append(frame_pixels(8, 7, (32, 32), np.uint16))
    check_dataset(settings, [str(tmp_path / "s.ome.tiff")], 8, frames=7)
    assert not shm_rings(d.pid)


def test_malformed_messages_get_errors_and_do_not_disturb_a_stream(daemon, tmp_path):
    settings = settings_5d(tmp_path / "m.ome.zarr", dimensions=[
        Dimension(name="t", count=20), Dimension(name="y", count=16), Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    ctx = zmq.Context.instance()
    bad = ctx.socket(zmq.DEALER)
    P.authenticate(bad, daemon.token)
    bad.connect(daemon.endpoint)
    cases = [
        ([b"OWS1"], P.E_MALFORMED),
        ([b"XXXX", b"{}"], P.E_MALFORMED),
        ([b"OWS2", b'{"type":"ping"}'], P.E_VERSION),
        ([b"OWS1", b"\xff\xfe not json"], P.E_MALFORMED),
        ([b"OWS1", b"[1,2]"], P.E_MALFORMED),
        ([b"OWS1", b'{"type":"dance"}'], P.E_UNKNOWN_TYPE),
        ([b"OWS1", b'{"type":"open","token":"nope","settings":{}}'], P.E_AUTH),
        ([b"OWS1", json.dumps({"type": "open", "token": daemon.token,
                               "settings": {"root_path": "x.ome.zarr", "dtype": "uint16",
                                            "dimensions": [{"name": "y", "count": 4, "chunk_size": 9},
                                                           {"name": "x", "count": 4}]}}).encode()],
         P.E_SETTINGS),
        # another client's stream: refused even with the right id
        ([b"OWS1", json.dumps({"type": "frame", "stream": stream._sid, "seq": 0,
                               "slot": 0}).encode()], P.E_NO_STREAM),
        ([b"OWS1", b'{"type":"frame","stream":"1","seq":0,"slot":0}'], P.E_MALFORMED),
    ]
    for i, (parts, code) in enumerate(cases):
        stream.append(frame_pixels(11, i, (16, 16), np.uint16))
        bad.send_multipart(parts)
        assert bad.poll(5000), f"no reply to {parts}"
        header, _ = P.decode(bad.recv_multipart())
        assert header["type"] == "error" and header["code"] == code, (parts, header)
    bad.close(0)
    for i in range(len(cases), 20):
        stream.append(frame_pixels(11, i, (16, 16), np.uint16))
    report = stream.close()
    assert report["frames_written"] == 20
    check_dataset(settings, report["paths"], 11)


def test_peers_without_the_token_never_reach_the_daemon(daemon, tmp_path):
    ctx = zmq.Context.instance()
    intruder = ctx.socket(zmq.DEALER)
    intruder.setsockopt(zmq.LINGER, 0)
    # the routing id libzmq gives the next peer itself: taking it once aborted the daemon
    # (a libzmq assertion) when the next client connected
    intruder.setsockopt(zmq.ROUTING_ID, b"\x00\x6b\x8b\x45\x67")
    # once the daemon has refused the handshake the DEALER has no peer and a send waits for
    # one for good (on a loaded machine that can come before the send): a bounded wait
    intruder.setsockopt(zmq.SNDTIMEO, 3000)
    intruder.connect(daemon.endpoint)
    try:
        intruder.send_multipart(P.encode({"type": "status"}, b"\0" * (64 << 20)))
    except zmq.Again:
        pass  # refused before it could even be queued
    assert not intruder.poll(1000)  # no answer, not even an error: never got in
    intruder.close()
    settings = settings_5d(tmp_path / "ok.ome.tiff", dimensions=[
        Dimension(name="t", count=3), Dimension(name="y", count=16), Dimension(name="x", count=16)])
    with create_stream(settings, endpoint=daemon.endpoint, token=daemon.token) as stream:
        for i in range(3):
            stream.append(frame_pixels(19, i, (16, 16), np.uint16))
    check_dataset(settings, stream.report["paths"], 19)
    assert daemon.proc.poll() is None
    t0 = time.monotonic()
    with pytest.raises(ServiceError, match="did not accept the token") as err:
        create_stream(settings, endpoint=daemon.endpoint, token="f" * 32)
    assert err.value.code == P.E_AUTH and time.monotonic() - t0 < 5


def test_wrong_slot_and_sequence_from_a_raw_client(daemon, tmp_path):
    settings = settings_5d(tmp_path / "w.ome.zarr", dimensions=[
        Dimension(name="t", count=3), Dimension(name="y", count=8), Dimension(name="x", count=8)])
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    P.authenticate(sock, daemon.token)
    sock.connect(daemon.endpoint)

    def call(header, payload=None):
        sock.send_multipart(P.encode(header, payload))
        assert sock.poll(5000)
        return P.decode(sock.recv_multipart())[0]

    opened = call({"type": "open", "token": daemon.token, "transport": "inline",
                   "settings": settings.model_dump(mode="json")})
    sid = opened["stream"]
    frame = frame_pixels(12, 0, (8, 8), np.uint16)
    bad_slot = opened["credits"]
    assert call({"type": "frame", "stream": sid, "seq": 0, "slot": bad_slot},
                frame.tobytes())["code"] == P.E_SLOT
    assert call({"type": "frame", "stream": sid, "seq": 0, "slot": 0}, b"short")["code"] == P.E_FRAME
    assert call({"type": "frame", "stream": sid, "seq": 5, "slot": 0}, frame.tobytes())["code"] \
        == P.E_SEQUENCE
    for i in range(3):
        sock.send_multipart(P.encode({"type": "frame", "stream": sid, "seq": i, "slot": i},
                                     frame_pixels(12, i, (8, 8), np.uint16).tobytes()))
    sock.send_multipart(P.encode({"type": "close", "stream": sid, "frames": 3}))
    while True:
        assert sock.poll(10000)
        h = P.decode(sock.recv_multipart())[0]
        if h["type"] == "closed":
            break
    assert h["frames_written"] == 3 and h["errors"] == []
    sock.close(0)
    check_dataset(settings, h["paths"], 12)


def test_create_stream_starts_a_daemon_when_none_runs(tmp_path, monkeypatch):
    rt = tmp_path / "auto-rt"
    monkeypatch.setenv("OME_WRITERS_SERVICE_RUNTIME_DIR", str(rt))
    settings = settings_5d(tmp_path / "auto.ome.zarr", dimensions=[
        Dimension(name="t", count=4), Dimension(name="y", count=16), Dimension(name="x", count=16)])
    with create_stream(settings) as stream:
        for i in range(4):
            stream.append(frame_pixels(13, i, (16, 16), np.uint16))
    info = json.loads((rt / "daemon.json").read_text())
    assert info["pid"] != os.getpid()
    assert_private(rt)
    assert_private(rt / "daemon.json")
    try:
        check_dataset(settings, stream.report["paths"], 13)
        # a second stream reuses the running daemon
        with create_stream(settings) as again:
            for i in range(4):
                again.append(frame_pixels(13, i, (16, 16), np.uint16))
        assert json.loads((rt / "daemon.json").read_text())["pid"] == info["pid"]
    finally:
        platform.request_stop(info["pid"])
        for _ in range(200):
            if not (rt / "daemon.json").exists():
                break
            time.sleep(0.05)


def test_ring_too_big_for_dev_shm_is_a_clear_error(daemon, tmp_path):
    free_bytes = platform.shm_free()
    side = 2048  # frames so large that at most 4096 slots (the most allowed) do not fit
    while side * side * 2 * 4096 <= free_bytes:
        side *= 2
    slots = min(4096, int(free_bytes // (side * side * 2)) + 16)
    settings = settings_5d(tmp_path / "big.ome.zarr", ring_slots=slots, dimensions=[
        Dimension(name="t", count=2), Dimension(name="y", count=side),
        Dimension(name="x", count=side)])
    with pytest.raises(ServiceError, match=re.escape(platform.SHM_MORE)) as err:
        create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    assert err.value.code == P.E_RESOURCES
    with pytest.raises(ServiceError, match="ring_slots=5000 is more than 4096"):
        create_stream(settings.model_copy(update={"ring_slots": 5000}),
                      endpoint=daemon.endpoint, token=daemon.token)


def test_status_command_lists_open_streams(daemon, tmp_path):
    settings = settings_5d(tmp_path / "st.ome.zarr", dimensions=[
        Dimension(name="t", count=10), Dimension(name="y", count=16), Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    for i in range(4):
        stream.append(frame_pixels(14, i, (16, 16), np.uint16))
    while stream.status()["frames_written"] < 4:
        time.sleep(0.01)
    res = subprocess.run([sys.executable, "-m", "ome_writers_service", "status", "--runtime-dir",
                          str(daemon.rt)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "1 open stream" in res.stdout and "4/10 written" in res.stdout, res.stdout
    stream.skip(frames=6)
    stream.close()


@pytest.mark.parametrize("liveness", ["pid", "heartbeat"])
def test_killed_client_is_noticed_and_its_dataset_finalized(daemon, tmp_path, liveness):
    other = settings_5d(tmp_path / "other.ome.zarr", dimensions=[
        Dimension(name="t", count=30), Dimension(name="y", count=16), Dimension(name="x", count=16)])
    survivor = create_stream(other, endpoint=daemon.endpoint, token=daemon.token)
    victim = settings_5d(tmp_path / "victim.ome.tiff", dimensions=[
        Dimension(name="t", count=10), Dimension(name="c", count=2),
        Dimension(name="y", count=16), Dimension(name="x", count=16)])
    extra = ["--hang-after", "7"] + (["--foreign-pidns"] if liveness == "heartbeat" else [])
    proc = run_client(daemon, victim, tmp_path, 21, *extra)
    assert proc.stdout.readline().strip() == "ready"
    from ome_writers_service.client import daemon_status

    def victim_state():
        return next((r for r in daemon_status(daemon.endpoint, daemon.token)["streams"].values()
                     if r["root_path"].endswith("victim.ome.tiff")), None)

    while victim_state()["frames_written"] < 7:
        time.sleep(0.01)
    ring_names = shm_rings(daemon.pid)
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    while victim_state() is not None:
        assert time.monotonic() - killed < 4, "daemon did not notice the dead client"
        time.sleep(0.05)
    noticed = time.monotonic() - killed
    left = shm_rings(daemon.pid)
    assert len(ring_names) == 2 and len(left) == 1 and left < ring_names  # the victim's is freed
    # frames 0-6 arrived: t=0..3 (the last with one channel); nothing else is shown as data
    check_dataset(victim, [str(tmp_path / "victim.ome.tiff")], 21, frames=7)
    import tifffile
    from ome_types import from_xml
    with tifffile.TiffFile(tmp_path / "victim.ome.tiff") as tf:
        ome = from_xml(tf.ome_metadata)
    assert ome.images[0].pixels.size_t == 4
    summary = {m.k: m.value for a in ome.structured_annotations.map_annotations
               if a.namespace == "ome_writers.acquisition" for m in a.value.ms}
    assert summary["frames_written"] == "7" and summary["complete"] == "false"
    # the other stream never noticed
    for i in range(30):
        survivor.append(frame_pixels(22, i, (16, 16), np.uint16))
    check_dataset(other, survivor.close()["paths"], 22)
    print(f"dead client ({liveness}) noticed after {noticed:.2f} s")


def test_killed_daemon_makes_the_next_call_raise(tmp_path):
    d = start_daemon(tmp_path / "rt")
    settings = settings_5d(tmp_path / "k.ome.tiff", ring_slots=64, dimensions=[
        Dimension(name="t", count=50), Dimension(name="y", count=32), Dimension(name="x", count=32)])
    stream = create_stream(settings, endpoint=d.endpoint, token=d.token)
    for i in range(5):
        stream.append(frame_pixels(15, i, (32, 32), np.uint16))
    while stream.status()["frames_written"] < 5:
        time.sleep(0.01)
    d.stop(SIGKILL)
    time.sleep(0.3)  # one liveness interval: the next call must notice, slots or not
    t0 = time.monotonic()
    with pytest.raises(DaemonGoneError, match=f"pid {d.pid}"):
        stream.append(frame_pixels(15, 5, (32, 32), np.uint16))
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(ServiceError):
        stream.close(timeout=2)
    # the pages the daemon wrote are readable from the file cut short
    import tifffile
    with tifffile.TiffFile(tmp_path / "k.ome.tiff") as tf:
        for i in range(5):
            np.testing.assert_array_equal(tf.pages[i].asarray(),
                                          frame_pixels(15, i, (32, 32), np.uint16))
    if shm_rings(d.pid):  # the dead daemon's ring is cleaned by the next daemon
        d2 = start_daemon(tmp_path / "rt2")
        assert not shm_rings(d.pid)
        d2.stop()


def test_hung_daemon_makes_blocking_calls_time_out(daemon, tmp_path):
    settings = settings_5d(tmp_path / "h.ome.zarr", ring_slots=8, backpressure_timeout=60,
                           dimensions=[Dimension(name="t", count=20), Dimension(name="y", count=16),
                                       Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    pause_process(daemon.pid)
    try:
        t0 = time.monotonic()
        with pytest.raises(DaemonGoneError, match="has not answered"):
            for i in range(20):  # 8 fit; the 9th waits for a slot that never comes
                stream.append(frame_pixels(16, i, (16, 16), np.uint16))
        assert time.monotonic() - t0 < 30  # the hung-daemon limit, not the 60 s block timeout
        with pytest.raises(DaemonGoneError, match="has not answered"):
            stream.close()
    finally:
        continue_process(daemon.pid)


def test_an_idle_stream_is_not_taken_for_a_dead_daemon(daemon, tmp_path):
    # a time-lapse client sits idle for longer than the hung-daemon limit; the daemon then
    # pauses briefly (a slow disk, a busy machine): the next blocking call must just wait
    from ome_writers_service import client as C
    settings = settings_5d(tmp_path / "idle.ome.tiff", dimensions=[
        Dimension(name="t", count=2), Dimension(name="y", count=16), Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    stream.append(frame_pixels(17, 0, (16, 16), np.uint16))
    time.sleep(C.HUNG_TIMEOUT + 0.5)
    stream.append(frame_pixels(17, 1, (16, 16), np.uint16))
    pause_process(daemon.pid)
    threading.Timer(1.0, continue_process, (daemon.pid,)).start()
    report = stream.close()
    check_dataset(settings, report["paths"], 17)


@pytest.mark.parametrize("suffix", FORMATS)
def test_recover_after_daemon_sigkill(tmp_path, suffix):
    d = start_daemon(tmp_path / "rt")
    settings = settings_5d(tmp_path / f"crash{suffix}", dimensions=[
        Dimension(name="t", count=10), Dimension(name="c", count=2),
        Dimension(name="y", count=32), Dimension(name="x", count=32)])
    stream = create_stream(settings, endpoint=d.endpoint, token=d.token)
    for i in range(9):
        stream.append(frame_pixels(17, i, (32, 32), np.uint16))
    while stream.status()["frames_written"] < 9:
        time.sleep(0.01)
    d.stop(SIGKILL)
    journal = Path(str(settings.root_path) + ".ows-journal")
    assert journal.is_file()
    res = subprocess.run([sys.executable, "-m", "ome_writers_service", "recover",
                          settings.root_path], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not journal.exists()
    # every frame written before the crash is there; the last step (t=4) lacks its channel 1
    check_dataset(settings, [settings.root_path], 17, frames=9)
    assert frames_written_in_metadata(settings.root_path) == 9  # OME-Zarr too
    with pytest.raises(DaemonGoneError):  # the client learns it, and is done with the stream
        stream.close(timeout=5)
    remove_daemon_shm(d.pid)


@pytest.mark.parametrize("suffix", FORMATS)
def test_recover_refuses_a_dataset_killed_before_its_first_frame(tmp_path, suffix):
    # nothing reached the disk or a chunk buffer: no valid OME metadata describes zero
    # planes, so recover says so, naming the dataset, and keeps the journal
    d = start_daemon(tmp_path / "rt")
    settings = settings_5d(tmp_path / f"early{suffix}", dimensions=[
        Dimension(name="t", count=8, chunk_size=4), PositionDimension(coords=["a", "b"]),
        Dimension(name="y", count=16), Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=d.endpoint, token=d.token)
    d.stop(SIGKILL)
    res = subprocess.run([sys.executable, "-m", "ome_writers_service", "recover",
                          settings.root_path], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "no complete step" in res.stderr and "early" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert list(tmp_path.glob("early*.ows-journal")), list(tmp_path.iterdir())
    with pytest.raises(DaemonGoneError):
        stream.close(timeout=5)
    remove_daemon_shm(d.pid)


def test_status_counts_what_a_daemon_crash_spares_and_a_pause_releases_lent_frames(tmp_path):
    # a slow time-lapse: 3 frames of a 10-frame chunk arrive, then the camera waits. The
    # daemon writes from lent slots only once a chunk is whole, so the 3 frames sit in the
    # client's ring; a pause copies them into the shared-memory chunk buffer and releases
    # them. status' frames_written counts only such frames, and a daemon SIGKILL spares them.
    d = start_daemon(tmp_path / "rt")
    settings = settings_5d(tmp_path / "lapse.ome.zarr", dimensions=[
        Dimension(name="t", count=20, chunk_size=10), Dimension(name="y", count=64),
        Dimension(name="x", count=64)])  # a page each: ring slots lie back to back, lent
    stream = create_stream(settings, endpoint=d.endpoint, token=d.token)
    for i in range(3):
        stream.append(frame_pixels(23, i, (64, 64), np.uint16))
    deadline = time.monotonic() + 30
    while stream.status()["frames_written"] < 3:
        assert time.monotonic() < deadline, stream.status()
        time.sleep(0.01)
    assert stream.status()["frames_written"] == 3
    d.stop(SIGKILL)
    res = subprocess.run([sys.executable, "-m", "ome_writers_service", "recover",
                          settings.root_path], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    check_dataset(settings, [settings.root_path], 23, frames=3)
    assert frames_written_in_metadata(settings.root_path) == 3
    with pytest.raises(DaemonGoneError):
        stream.close(timeout=5)
    remove_daemon_shm(d.pid)


def test_daemon_backed_stream_offers_view_and_events(daemon, tmp_path):
    settings = settings_5d(tmp_path / "v.ome.zarr", dimensions=[
        Dimension(name="t", count=None), Dimension(name="c", count=2),
        Dimension(name="y", count=16), Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    expanded = []
    stream.on("coords_expanded", expanded.append)
    view = stream.view()
    for i in range(5):
        stream.append(frame_pixels(70, i, (16, 16), np.uint16))
    assert view.shape == (3, 2, 16, 16)
    while stream.status()["frames_written"] < 5:
        time.sleep(0.01)
    np.testing.assert_array_equal(view[1, 1], frame_pixels(70, 3, (16, 16), np.uint16))
    np.testing.assert_array_equal(view[2, 1], np.zeros((16, 16), np.uint16))
    with pytest.raises(IndexError, match="has not been written"):
        stream.view(strict=True)[2, 1]
    stream.close()  # returns once the handlers have seen every frame
    assert [u.frame_number for u in expanded] == [0, 1, 2, 4]


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tiff"])
def test_daemon_backed_view_reads_the_files_after_close(daemon, tmp_path, suffix):
    # as ome-writers' view after the `with` block: planes come from the finished files;
    # skipped frames and frames never sent still read as zeros (strict: IndexError)
    yx = (16, 16)
    settings = settings_5d(tmp_path / f"vc{suffix}", dimensions=[
        Dimension(name="z", count=2, type="space"), Dimension(name="t", count=3, type="time"),
        PositionDimension(coords=["A", "B"]), Dimension(name="y", count=16),
        Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    assert isinstance(stream, OMEStream)  # as ome-writers' create_stream() promises
    view, strict = stream.view(), stream.view(strict=True)
    for i in range(8):  # of 12: closed early, frame 3 skipped
        if i == 3:
            stream.skip()
        else:
            stream.append(frame_pixels(73, i, yx, np.uint16))
    stream.close()
    assert view.shape == (2, 3, 2, *yx)
    for z, t, p in np.ndindex(2, 3, 2):
        n = (z * 3 + t) * 2 + p  # frame number in acquisition order z, t, p
        want = frame_pixels(73, n, yx, np.uint16) if n < 8 and n != 3 else np.zeros(yx, np.uint16)
        np.testing.assert_array_equal(view[z, t, p], want, err_msg=str((z, t, p)))
    np.testing.assert_array_equal(strict[0, 0, 1], frame_pixels(73, 1, yx, np.uint16))
    with pytest.raises(IndexError):
        strict[0, 1, 1]  # frame 3, skipped
    # global metadata may come after close too (as ome-writers): written into the files
    stream.set_global_metadata("late", {"k": 1})
    from ome_writers_service.metadata import dataset_info
    info = dataset_info(settings.output_path)
    found = info["global_metadata"] if suffix == ".ome.zarr" else \
        info["images"][1]["global_metadata"]
    assert found["late"] == {"k": 1}
    assert all(r.ok for r in validate_all(settings.output_path))


def test_daemon_never_binds_a_non_loopback_address_unless_told(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ome_writers_service", "serve", "--runtime-dir",
                          str(tmp_path / "rt"), "--endpoint", "tcp://0.0.0.0:5599"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "not a loopback address" in res.stderr
    d = start_daemon(tmp_path / "rt2", "--endpoint", "tcp://127.0.0.1:*")
    try:
        # the connection file names the port actually bound; directory and file are private
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", d.endpoint), d.endpoint
        settings = settings_5d(tmp_path / "tcp.ome.zarr", dimensions=[
            Dimension(name="t", count=2), Dimension(name="y", count=8), Dimension(name="x", count=8)])
        with create_stream(settings, endpoint=d.endpoint, token=d.token,
                           transport="inline") as stream:
            for i in range(2):
                stream.append(frame_pixels(71, i, (8, 8), np.uint16))
        check_dataset(settings, stream.report["paths"], 71)
        assert_private(d.rt)
        assert_private(d.rt / "daemon.json")
        assert "open refused" not in d.log_text()
    finally:
        assert d.stop() == 0


@needs_tmpfs
def test_unwritable_target_is_refused_before_the_first_frame(daemon, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        settings = settings_5d(ro / "nope.ome.zarr", dimensions=[
            Dimension(name="t", count=2), Dimension(name="y", count=8), Dimension(name="x", count=8)])
        with pytest.raises(PermissionError, match="not writable") as err:
            create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
        assert str(ro) in str(err.value)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_daemon_view_in_acquisition_order_strict_and_format_metadata(daemon, tmp_path):
    yx = (16, 16)
    settings = settings_5d(tmp_path / "dv.ome.zarr", ring_slots=4, backpressure="drop",
                           dimensions=[Dimension(name="z", count=3, type="space"),
                                       Dimension(name="t", count=2, type="time"),
                                       PositionDimension(coords=["A", "B"]),
                                       Dimension(name="y", count=16), Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    view = stream.view()
    assert view.dims == ("z", "t", "p", "y", "x") and view.shape == (0, 0, 0, *yx)
    assert stream.view(dynamic_shape=False).shape == (3, 2, 2, *yx)
    md = stream.get_metadata()  # ome-writers' structure, read from the daemon's zarr.json
    assert list(md) == ["A", "B"] and "multiscales" in md["B"]["ome"]
    with pytest.raises(KeyError, match="Unknown path: C"):  # checked here, before sending
        stream.update_metadata({"C": {}})
    md["A"]["during"] = {"operator": "ada"}  # handed to the daemon, kept at close
    md["A"]["ome"]["multiscales"][0]["name"] = "renamed"
    stream.update_metadata({"A": md["A"]})
    assert stream.get_metadata()["A"]["during"] == {"operator": "ada"}  # seen at once
    pause_process(daemon.pid)
    try:
        for i in range(6):  # 4 fit in the ring, frames 4 and 5 are dropped
            stream.append(frame_pixels(71, i, yx, np.uint16), frame_metadata={"delta_t": i})
        assert stream.frames_dropped == 2
        # a read waits behind the frames sent before it: never zeros for a sent frame
        resume = threading.Timer(0.5, continue_process, (daemon.pid,))
        resume.start()
        np.testing.assert_array_equal(stream.view(strict=True)[0, 1, 1],
                                      frame_pixels(71, 3, yx, np.uint16))
    finally:
        continue_process(daemon.pid)
    time.sleep(0.5)  # let the daemon release the slots
    for i in range(6, 8):
        stream.append(frame_pixels(71, i, yx, np.uint16), frame_metadata={"delta_t": i})
    assert view.shape == (2, 2, 2, *yx)
    np.testing.assert_array_equal(view[1, 1, 0], frame_pixels(71, 6, yx, np.uint16))
    np.testing.assert_array_equal(view[1, 0, 0], np.zeros(yx, np.uint16))  # dropped: frame 4
    strict = stream.view(strict=True)
    np.testing.assert_array_equal(strict[1, 1, 1], frame_pixels(71, 7, yx, np.uint16))
    with pytest.raises(IndexError, match="skipped or dropped"):
        strict[1, 0, 0]
    with pytest.raises(IndexError, match="live dimension 'z'"):
        strict[2, 0, 0]
    report = stream.close()
    check_dataset(settings, report["paths"], 71, frames=8, missing={4, 5})
    md = stream.get_metadata()
    assert md["A"]["during"] == {"operator": "ada"}
    assert md["A"]["ome"]["multiscales"][0]["name"] == "renamed"
    assert md["A"]["ome_writers"]["frame_metadata"]  # the writer's table kept beside it
    assert md["B"]["ome_writers"]["frame_metadata"]
    md["B"]["my_attrs"] = {"operator": "ada"}
    stream.update_metadata({"B": md["B"]})
    import zarr
    got = dict(zarr.open_group(report["paths"][1], mode="r").attrs)
    assert got["my_attrs"] == {"operator": "ada"}
    assert got["ome_writers"]["frame_metadata"] == md["B"]["ome_writers"]["frame_metadata"]

    # OME-TIFF: {position: ome_types.OME}, updated after close
    import tifffile
    from ome_types import OME, from_xml
    tset = settings_5d(tmp_path / "dv.ome.tiff", dimensions=[
        Dimension(name="t", count=2), Dimension(name="y", count=16), Dimension(name="x", count=16)])
    tstream = create_stream(tset, endpoint=daemon.endpoint, token=daemon.token)
    assert isinstance(tstream.get_metadata()[0], OME)
    with pytest.raises(RuntimeError, match="TIFF files must be closed"):
        tstream.update_metadata(tstream.get_metadata())
    for i in range(2):
        tstream.append(frame_pixels(72, i, yx, np.uint16), frame_metadata={"delta_t": i})
    tstream.close()
    ome = tstream.get_metadata()[0]
    assert len(ome.images[0].pixels.planes) == 2
    ome.images[0].name = "renamed"
    tstream.update_metadata({0: ome})
    with tifffile.TiffFile(tset.root_path) as tf:
        assert from_xml(tf.ome_metadata, validate=True).images[0].name == "renamed"


def _thread_nice(pid: int) -> dict[int, int]:
    """The nice value of every thread of ``pid`` (Linux keeps one per thread)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        out[int(task.name)] = int(stat[stat.rindex(")") + 2:].split()[16])
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="`serve --nice` is POSIX nice "
                    "(ignored on Windows), read back per thread from /proc")
def test_serve_nice_lowers_every_writer_thread(tmp_path):
    """`serve --nice N`: the daemon and every thread it runs (ZeroMQ's, tensorstore's, each
    stream's worker, started later) run at nice N, below the acquisition program."""
    d = start_daemon(tmp_path / "rt", "--nice", "7")
    try:
        s = settings_5d(tmp_path / "nice.ome.zarr")
        with create_stream(s, endpoint=d.endpoint, token=d.token) as stream:
            for i in range(s.num_frames):
                stream.append(frame_pixels(5, i, s.frame_shape, s.dtype))
            threads = _thread_nice(d.pid)  # while the stream's writer threads run
        assert len(threads) > 3 and set(threads.values()) == {7}, threads
        assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # (ours is untouched)
        check_dataset(s, stream.paths, 5)
    finally:
        assert d.stop() == 0, d.log_text()
    bad = subprocess.run([sys.executable, "-m", "ome_writers_service", "serve", "--runtime-dir",
                          str(tmp_path / "rt2"), "--nice", "25"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "nice 25 is out of range" in bad.stderr, bad.stderr
