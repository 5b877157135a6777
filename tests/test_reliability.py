"""Bad input and long runs against a real daemon: a protocol fuzz while a stream is written,
and a bounded soak of three concurrent streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from ome_writers_service import AcquisitionSettings, Dimension, create_stream
from ome_writers_service import protocol as P

from service_util import expected_images, frame_pixels, read_image, shm_rings, start_daemon

TYPES = ["open", "frame", "skip", "metadata", "status", "close", "ping", "heartbeat",
         "opened", "release", "bogus", ""]
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64), st.floats(),
                        st.text(max_size=20))
json_value = st.recursive(json_scalar, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=12)


def headers(token: str, root: Path):
    fields = st.dictionaries(
        st.sampled_from(["stream", "seq", "slot", "count", "frames", "meta", "token",
                         "settings", "namespace", "value", "key", "transport", "version"]),
        json_value, max_size=6)
    settings = st.fixed_dictionaries({
        "root_path": st.sampled_from([str(root / "f.ome.zarr"), str(root / "f.ome.tiff"),
                                      str(root / "f.txt"), ""]),
        "dtype": st.sampled_from(["uint16", "uint8", "complex64", "nope"]),
        "overwrite": st.booleans(),
        "dimensions": st.lists(st.fixed_dictionaries({
            "name": st.sampled_from(["t", "c", "z", "y", "x", "q"]),
            "count": st.one_of(st.none(), st.integers(-1, 6))}), max_size=5),
    })
    authed_open = st.builds(lambda s, tr: {"type": "open", "token": token, "settings": s,
                                           "transport": tr},
                            settings, st.sampled_from(["shm", "inline", "carrier pigeon"]))
    generic = st.builds(lambda t, f: {"type": t, **f}, st.sampled_from(TYPES), fields)
    return st.one_of(generic, authed_open)


def messages(token: str, root: Path):
    header = headers(token, root).map(lambda h: json.dumps(h).encode())
    part0 = st.sampled_from([b"OWS1", b"OWS1", b"OWS1", b"OWS2", b"", b"\x00\xff"])
    part1 = st.one_of(header, header, st.binary(max_size=64), st.just(b"{}"),
                      st.just(b"x" * (P.MAX_HEADER_BYTES + 1)))
    tail = st.lists(st.binary(max_size=256), max_size=2)
    return st.builds(lambda a, b, c: [a, b, *c], part0, part1, tail) | \
        st.lists(st.binary(max_size=32), min_size=1, max_size=5)


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path / "rt")
    yield d
    assert d.stop() == 0, d.log_text()


def test_protocol_fuzz_while_a_stream_is_written(daemon, tmp_path):
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "victim.ome.zarr"), dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=None), Dimension(name="y", count=32),
                    Dimension(name="x", count=32)])
    stream = create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)
    fuzz_root = tmp_path / "fuzz"
    fuzz_root.mkdir()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    P.authenticate(sock, daemon.token)
    sock.connect(daemon.endpoint)
    sent = {"messages": 0, "frames": 0, "replies": 0}

    @given(batch=st.lists(messages(daemon.token, fuzz_root), min_size=100, max_size=100))
    @hsettings(max_examples=100, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))
    def fuzz(batch):
        for parts in batch:
            sock.send_multipart(parts)
            sent["messages"] += 1
        # the real stream keeps going between fuzz batches
        stream.append(frame_pixels(30, sent["frames"], (32, 32), np.uint16))
        sent["frames"] += 1
        while sock.poll(0):
            reply = sock.recv_multipart()
            header, _ = P.decode(reply)  # every reply is a well-formed protocol message
            assert header["type"] in ("error", "pong", "opened", "status_reply", "closed",
                                      "release"), header
            sent["replies"] += 1

    fuzz()
    assert sent["messages"] >= 10000
    sock.send_multipart(P.encode({"type": "ping"}))
    assert sock.poll(10000), "daemon stopped answering"
    sock.close(0)
    report = stream.close()
    assert report["frames_written"] == sent["frames"] and report["errors"] == []
    np.testing.assert_array_equal(read_image(settings.root_path),
                                  expected_images(settings, 30, frames=sent["frames"])[0])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_soak_three_streams_flat_memory_no_leaks(daemon, tmp_path):
    fds_before = len(os.listdir(f"/proc/{daemon.pid}/fd"))
    rings_before = shm_rings(daemon.pid)
    total, per = 200_000, 200_000 // 3
    specs = [(".ome.zarr", 64), (".ome.tiff", 1), (".ome.zarr", 1)]
    rss: list[int] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss.append(_rss_kb(daemon.pid))
            time.sleep(0.1)

    def produce(i, suffix, chunk):
        s = AcquisitionSettings(root_path=str(tmp_path / f"soak{i}{suffix}"), dtype="uint16",
                                overwrite=True, dimensions=[
                                    Dimension(name="t", count=per, chunk_size=chunk),
                                    Dimension(name="y", count=32), Dimension(name="x", count=32)])
        frames = [frame_pixels(40 + i, k, (32, 32), np.uint16) for k in range(16)]
        with create_stream(s, endpoint=daemon.endpoint, token=daemon.token) as stream:
            for k in range(per):
                stream.append(frames[k % 16])
        reports.append(stream.report)

    reports: list[dict] = []
    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=produce, args=(i, *spec)) for i, spec in enumerate(specs)]
    for t in threads:
        t.start()
    # another program's ring appears meanwhile (another daemon, another test run): the
    # checks below count only this daemon's
    other = subprocess.Popen([sys.executable, "-c", "import sys\nfrom ome_writers_service.ring "
                              "import FrameRing\nr = FrameRing.create(4096, 8)\n"
                              "print(r.name, flush=True)\nsys.stdin.read()\nr.close()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    foreign = other.stdout.readline().strip()
    assert Path("/dev/shm", foreign).exists()
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    elapsed = time.monotonic() - t0
    assert sorted(r["frames_written"] for r in reports) == [per] * 3
    assert all(r["errors"] == [] and r["frames_dropped"] == 0 for r in reports)
    # flat memory: the second half of the run holds no more than the first half plus slack
    half = len(rss) // 2
    assert max(rss[half:]) < max(rss[:half]) + 64 * 1024, (max(rss[:half]), max(rss[half:]))
    assert len(os.listdir(f"/proc/{daemon.pid}/fd")) <= fds_before + 2
    assert shm_rings(daemon.pid) == rings_before
    other.communicate("", timeout=30)
    print(f"soak: {3 * per} frames in {elapsed:.1f} s, daemon RSS first/second half max "
          f"{max(rss[:half]) // 1024}/{max(rss[half:]) // 1024} MiB")
    assert total - 3 * per < 3
