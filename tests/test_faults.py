"""Real faults against real processes, frames counted exactly against what independent readers
(tensorstore, tifffile, ome-types, yaozarrs) read back: the daemon's SIGTERM, and the
reasons the client raises."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ome_writers_service import (AcquisitionSettings, Dimension, OmeTiffFormat,
                                 OmeZarrFormat, PositionDimension, create_stream)
from ome_writers_service.client import DaemonGoneError, ServiceStream
from ome_writers_service.validate import validate_all

from service_util import (KILLED, WINDOWS, frame_pixels, frames_written_in_metadata,
                          kill_hard, parent_pid, plane_metadata, read_image, reference_levels,
                          remove_daemon_shm, rss_mib, shm_files, shm_rings, start_daemon,
                          wait_finalized, wait_gone)

YX = [Dimension(name="y", count=16), Dimension(name="x", count=16)]


def test_a_daemon_shutdown_reaches_every_stream_with_its_reason(tmp_path):
    """SIGTERM with four streams open: each stream's next call and its close() raise the
    daemon's own reason ("shutdown"), never a generic text; what was sent is on disk."""
    for rnd in range(2):
        d = start_daemon(tmp_path / f"rt{rnd}")
        streams, settings = [], []
        for k in range(4):
            s = AcquisitionSettings(
                root_path=str(tmp_path / f"r{rnd}s{k}{('.ome.zarr', '.ome.tiff')[k % 2]}"),
                dtype="uint16", overwrite=True,
                dimensions=[Dimension(name="t", count=100, chunk_size=1 + 3 * (k // 2)), *YX])
            settings.append(s)
            streams.append(create_stream(s, endpoint=d.endpoint, token=d.token))
        for i in range(12):
            for k, st in enumerate(streams):
                st.append(frame_pixels(k, i, (16, 16), np.uint16))
        for st in streams:
            while st.status()["frames_received"] < 12:
                time.sleep(0.01)
        assert d.stop() == 0
        for k, st in enumerate(streams):
            with pytest.raises(DaemonGoneError, match=r"the daemon (ended|closed) the stream "
                                                      r"\(shutdown\)"):
                st.append(frame_pixels(k, 12, (16, 16), np.uint16))
            with pytest.raises(DaemonGoneError, match=r"\(shutdown\) after writing 12 of the "
                                                      "12 frames sent"):
                st.close()
            assert st.report["reason"] == "shutdown" and st.report["frames_written"] == 12
            got = read_image(st.paths[0])
            want = np.stack([frame_pixels(k, i, (16, 16), np.uint16) for i in range(12)])
            np.testing.assert_array_equal(got.reshape(-1, 16, 16)[:12], want)
        assert not shm_rings(d.pid)


ON_DEMAND_CLIENT = """
import os, signal, sys
import numpy as np
from ome_writers_service import AcquisitionSettings, Dimension, create_stream
from ome_writers_service.client import local_daemon

rt, root, mode = sys.argv[1:4]
info = local_daemon(rt, idle_exit=1.0)
print(info.pid, flush=True)
dims = [Dimension(name="t", count=5), Dimension(name="y", count=16), Dimension(name="x", count=16)]
s = AcquisitionSettings(root_path=root, dtype="uint16", overwrite=True, dimensions=dims)
stream = create_stream(s, endpoint=info.endpoint, token=info.token)
for i in range(3):
    stream.append(np.full((16, 16), i, np.uint16))
if mode == "crash":  # killed with the stream open
    os.kill(os.getpid(), getattr(signal, "SIGKILL", 9))  # Windows: TerminateProcess
stream.close()
print("closed", flush=True)
sys.stdin.read()  # alive until told
"""


@pytest.mark.parametrize("mode", ["client-lives", "crash"])
def test_a_daemon_started_on_demand_is_reaped_and_exits_when_idle(tmp_path, mode):
    root = tmp_path / "od.ome.tiff"
    client = subprocess.Popen([sys.executable, "-c", ON_DEMAND_CLIENT, str(tmp_path / "rt"),
                               str(root), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        pid = int(client.stdout.readline())
        if not WINDOWS:  # not the client's child: never its zombie (Windows has none)
            assert parent_pid(pid) not in (None, client.pid)
        if mode == "crash":
            assert client.wait(30) == KILLED
        else:
            assert client.stdout.readline().strip() == "closed"
        # idle (its stream closed, or finalized after the client's death): it exits, and
        # is reaped, while the client still runs or after it died
        assert wait_gone(pid, 15), f"daemon {pid} still there"
    finally:
        client.kill()
        client.wait()
    with tifffile.TiffFile(root) as tf:
        pages = [p.asarray() for p in tf.pages]
    assert [int(p[0, 0]) for p in pages] == [0, 1, 2]  # killed or not: every frame appended


def test_a_peer_that_never_reads_is_dropped_and_bounds_the_daemons_memory(tmp_path):
    """A raw ZeroMQ peer holding the token sends 50,000 status requests and never reads a
    reply: the daemon queues a bounded number for it, then drops it with a log line naming
    it; a stream of another client goes on untouched."""
    import zmq

    from ome_writers_service import protocol as P

    d = start_daemon(tmp_path / "rt")
    try:
        s = AcquisitionSettings(root_path=str(tmp_path / "ok.ome.zarr"), dtype="uint16",
                                overwrite=True, dimensions=[Dimension(name="t", count=40), *YX])
        good = create_stream(s, endpoint=d.endpoint, token=d.token)
        for i in range(20):
            good.append(frame_pixels(9, i, (16, 16), np.uint16))
        base = rss_mib(d.pid)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.SNDHWM, 0)
        P.authenticate(sock, d.token)
        sock.connect(d.endpoint)
        request = P.encode({"type": "status"})  # every reply lists every stream
        for _ in range(50_000):
            sock.send_multipart(request)
        ping = P.encode({"type": "ping"})
        deadline = time.monotonic() + 60
        while "does not read the daemon's messages" not in d.log_text():
            assert time.monotonic() < deadline, d.log_text()[-2000:]
            time.sleep(0.1)
        grown = rss_mib(d.pid) - base
        line = next(ln for ln in d.log_text().splitlines() if "does not read" in ln)
        identity = line.split("peer ")[1].split()[0]
        assert len(identity) >= 8 and all(c in "0123456789abcdef" for c in identity), line
        assert grown < 40, f"daemon grew by {grown:.0f} MiB"  # was 117 MiB without a bound
        sock.send_multipart(ping)  # ignored from now on: it never gets an answer
        for i in range(20, 40):
            good.append(frame_pixels(9, i, (16, 16), np.uint16))
        assert good.close()["frames_written"] == 40
        want = np.stack([frame_pixels(9, i, (16, 16), np.uint16) for i in range(40)])
        np.testing.assert_array_equal(read_image(s.output_path), want)
        sock.close(0)
        print(f"daemon grew by {grown:.1f} MiB before it dropped the peer")
    finally:
        assert d.stop() == 0, d.log_text()


KILL_CLIENT = Path(__file__).with_name("kill_client.py")
STREAMS_PER_CLIENT = 10


def frames_present(path: str, seed: int) -> tuple[int, np.ndarray]:
    """How many leading frames (acquisition order) read back exactly as sent, and all the
    frames the image holds."""
    got = read_image(path).reshape(-1, 16, 16)
    n = 0
    while n < len(got) and np.array_equal(got[n], frame_pixels(seed, n, (16, 16), np.uint16)):
        n += 1
    return n, got


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tiff"])
def test_client_sigkill_at_40_points_loses_no_frame_whose_append_returned(tmp_path, suffix):
    """Four client processes of ten streams each (40 kill points): two kill themselves right
    after a burst of appends (their notices still queued in ZeroMQ's I/O thread), two are
    killed by the test at a random moment. Every frame whose append() or claim() returned is
    read back exact (tensorstore / tifffile), nothing else is presented as data, and the
    metadata's frames_written is exactly the frames on disk."""
    import random

    rng = random.Random(f"client-kill{suffix}")
    d = start_daemon(tmp_path / "rt")
    procs = []
    try:
        for p, mode in enumerate(["self", "external", "self", "external"]):
            out = tmp_path / f"c{p}"
            out.mkdir()
            progress = tmp_path / f"progress{p}"
            progress.write_bytes(bytes(8 * STREAMS_PER_CLIENT))
            seed = rng.randrange(1, 10**6)
            proc = subprocess.Popen(
                [sys.executable, str(KILL_CLIENT), d.endpoint, d.token, str(out), suffix,
                 str(seed), str(STREAMS_PER_CLIENT), mode, str(progress)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append((proc, mode, out, progress, seed))
        for proc, mode, *_ in procs:
            if mode == "external":
                assert proc.stdout.readline().strip() == "ready", proc.communicate()[1]
                time.sleep(rng.uniform(0.05, 0.5))
                kill_hard(proc.pid)
        points = lost = recovered = 0
        for proc, mode, out, progress, seed in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == KILLED, err
            handed = np.fromfile(progress, dtype=np.int64)
            for k in range(STREAMS_PER_CLIENT):
                path = str(out / f"s{k}{suffix}")
                settings = AcquisitionSettings.model_validate(
                    {"root_path": path, "dtype": "uint16", "dimensions": [
                        {"name": "t", "count": 400}, {"name": "c", "count": 2},
                        {"name": "y", "count": 16}, {"name": "x", "count": 16}]})
                wait_finalized(settings)
                returned = int(handed[k])
                if suffix == ".ome.tiff" and not Path(path).exists():
                    # killed before this stream's first frame (a slow client: Wine): a TIFF
                    # stream without a page leaves no file, as one closed before its first
                    assert returned == 0, (path, mode, returned)
                    points += 1
                    continue
                present, got = frames_present(path, seed * 100 + k)
                # every frame whose append returned; one more if the kill fell between a
                # return and the progress store (never in "self": the kill follows the store)
                allowed = {returned} if mode == "self" else {returned, returned + 1}
                assert present in allowed, (path, mode, returned, present)
                assert not got[present:].any(), path  # nothing past them shown as data
                assert len(got) == -(-present // 2) * 2, path  # cut to the steps reached
                assert frames_written_in_metadata(path) == present, path
                points += 1
                lost += max(0, returned - present)
        assert points == 40 and lost == 0
        recovered = sum(int(ln.split(" wrote ")[1].split()[0]) for ln in d.log_text().splitlines()
                        if "from the ring whose notices were lost" in ln)
        print(f"{suffix}: {points} kill points, 0 frames lost, {recovered} frames written from "
              "the ring after their notices were lost")
    finally:
        for proc, *_ in procs:
            if proc.poll() is None:
                proc.kill()
        assert d.stop() == 0, d.log_text()


class TrackingStream(ServiceStream):
    """A client stream that remembers which frame each slot carried and which of them the
    daemon released: what this test holds the daemon to."""

    def __init__(self, *a, **kw):
        self.in_slot: dict[int, int] = {}
        self.released: set[int] = set()
        super().__init__(*a, **kw)

    def _send_frame(self, seq, slot, meta, payload=None):
        super()._send_frame(seq, slot, meta, payload)
        self.in_slot[slot] = seq

    def _take_release(self, slots):
        for slot in slots:
            if slot in self.in_slot:
                self.released.add(self.in_slot.pop(slot))
        super()._take_release(slots)


def test_recover_a_tiff_whose_second_position_never_got_a_page(tmp_path):
    """The daemon killed after the first frames of position 0 and before any of position 1:
    position 1's file is empty, nothing in it was cut off. recover keeps position 0's pages
    with their metadata and gives position 1 zero pages (the kill points above meet this
    moment where the daemon is slow, as under Wine)."""
    from ome_writers_service import recover as recover_mod

    d = start_daemon(tmp_path / "rt")
    settings = AcquisitionSettings(
        root_path=str(tmp_path / "tp.ome.tiff"), dtype="uint16", overwrite=True, dimensions=[
            Dimension(name="t", count=3), PositionDimension(coords=["p0", "p1"]),
            Dimension(name="c", count=2, type="channel"), *YX])
    st = TrackingStream(settings, endpoint=d.endpoint, token=d.token, daemon_pid=d.pid)
    for n in range(2):  # t0 p0 c0, c1
        st.append(frame_pixels(7, n, (16, 16), np.uint16), frame_metadata=_frame_meta(n))
    deadline = time.monotonic() + 30
    while st.released != {0, 1} and time.monotonic() < deadline:
        st._pump(0.05)
    assert st.released == {0, 1}
    d.proc.kill()
    d.proc.wait()
    p0, p1 = (tmp_path / "tp" / f"tp_p00{i}.ome.tiff" for i in (0, 1))
    assert p1.stat().st_size == 0
    summary = recover_mod.recover(settings.root_path)
    assert summary["frames_recovered"] == 2 and summary["shape"] == [1, 2], summary
    np.testing.assert_array_equal(read_image(str(p0)), np.stack(
        [frame_pixels(7, n, (16, 16), np.uint16) for n in range(2)]))
    assert not read_image(str(p1)).any()
    meta = plane_metadata(str(p0))
    assert [meta[(0, c, 0)]["delta_t"] for c in (0, 1)] == [0.0, 0.25], meta
    assert frames_written_in_metadata(str(p0)) == 2
    for path in (p0, p1):
        for report in validate_all(str(path)):
            assert report.ok, report
    with pytest.raises(DaemonGoneError):
        st.close(timeout=5)
    remove_daemon_shm(d.pid)


def _frame_meta(n: int) -> dict:
    return {"delta_t": 0.25 * n, "exposure_time": 0.001 * (n + 1), "note": f"frame {n}"}


def _daemon_kill_layouts(tmp: Path) -> list[tuple[AcquisitionSettings, str]]:
    """Twelve streams: both formats, one chunk per frame and chunks of several frames (frames
    held in the daemon's buffers), positions inside a time chunk, shards, multi-file TIFFs,
    the inline transport, pyramids."""
    def s(name, dims, fmt=None, **kw):
        return AcquisitionSettings(root_path=str(tmp / name), dtype="uint16", overwrite=True,
                                   ring_slots=16, dimensions=[*dims, *YX],
                                   **({"format": fmt} if fmt else {}), **kw)
    t = lambda chunk=1, **kw: Dimension(name="t", count=80, chunk_size=chunk, **kw)  # noqa: E731
    c = Dimension(name="c", count=2, type="channel")
    p = lambda n: PositionDimension(coords=[f"p{i}" for i in range(n)])  # noqa: E731
    return [
        (s("z1.ome.zarr", [t(), c]), "shm"),
        (s("z8.ome.zarr", [t(8), c]), "shm"),
        (s("zp.ome.zarr", [t(4), p(3), c]), "shm"),
        (s("zs.ome.zarr", [t(2, shard_size_chunks=3), c]), "shm"),
        (s("zi.ome.zarr", [t(4), c]), "inline"),
        (s("t1.ome.tiff", [t(), c]), "shm"),
        (s("tp.ome.tiff", [t(), p(2), c]), "shm"),
        (s("tc.ome.tiff", [t(), p(2), c],
           OmeTiffFormat(multi_file_metadata="companion-file")), "shm"),
        (s("ti.ome.tiff", [t(), c]), "inline"),
        (s("tt.ome.tiff", [t()]), "shm"),
        (s("zl.ome.zarr", [t(4), c], OmeZarrFormat(levels=3)), "shm"),
        (s("tl.ome.tiff", [t(), c], OmeTiffFormat(levels=3)), "shm"),
    ]


def _check_lower_levels(settings: AcquisitionSettings, paths: list[str]) -> None:
    """A pyramid after recover: every lower level is the downsample of the level above as
    read back (frames and fill alike), by the reference definition (`reference_levels`)."""
    levels = settings.format.levels
    if levels == 1:
        return
    if settings.format_name == "ome-tiff":
        with tifffile.TiffFile(paths[0]) as tf:
            got = [lv.asarray() for lv in tf.series[0].levels]
    else:
        import tensorstore as ts
        got = [ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                                                       "path": f"{paths[0]}/{k}"}}
                       ).result().read().result() for k in range(levels)]
    assert len(got) == levels, settings.root_path
    for k, want in enumerate(reference_levels(got[0], levels, settings.format.downsampling)):
        np.testing.assert_array_equal(got[k], want, err_msg=f"{settings.root_path} level {k}")


def _frame_at(settings: AcquisitionSettings, n: int) -> tuple[int, tuple[int, int, int]]:
    """(position, (t, c, z)) of frame n of these layouts (t, [p], [c])."""
    names = [d.name for d in settings.dimensions[:-2]]
    counts = [d.count for d in settings.dimensions[:-2]]
    idx = dict(zip(names, np.unravel_index(n, counts)))
    return int(idx.get("p", 0)), (int(idx["t"]), int(idx.get("c", 0)), 0)


def test_daemon_sigkill_at_24_points_every_released_frame_is_recovered_with_metadata(tmp_path):
    """Two daemons with twelve streams each (24 kill points), SIGKILLed at a random moment
    while frames flow; ``recover`` then restores every frame the daemon had released (slot
    returned: its page or chunk written, or the frame in a chunk buffer), pixel-exact with its
    per-frame metadata (tensorstore / tifffile pixels, ome-types Planes, zarr.json rows), and
    the metadata's frames_written equals the frames read back."""
    import random

    from ome_writers_service import recover as recover_mod

    rng = random.Random("daemon-kill")
    points = released_total = buffered = 0
    for rnd in range(2):
        d = start_daemon(tmp_path / f"rt{rnd}")
        out = tmp_path / f"r{rnd}"
        out.mkdir()
        streams = []
        for settings, transport in _daemon_kill_layouts(out):
            st = TrackingStream(settings, endpoint=d.endpoint, token=d.token,
                                transport=transport, daemon_pid=d.pid)
            streams.append((settings, st, 100 * rnd + len(streams)))
        kill_at = time.monotonic() + rng.uniform(0.2, 0.8)
        alive = list(range(len(streams)))
        sent = [0] * len(streams)
        while alive:
            k = rng.choice(alive)
            settings, st, seed = streams[k]
            n = sent[k]
            if n >= settings.num_frames or time.monotonic() > kill_at + 2:
                alive.remove(k)
                continue
            if time.monotonic() > kill_at and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
            try:
                st.append(frame_pixels(seed, n, (16, 16), np.uint16),
                          frame_metadata=_frame_meta(n))
                sent[k] = n + 1
            except DaemonGoneError:
                alive.remove(k)
            if rng.random() < 0.1:
                time.sleep(0.002)
        assert d.proc.poll() is not None
        for settings, st, seed in streams:
            try:
                st._pump(0)  # releases already delivered before the kill
            except Exception:  # noqa: BLE001
                pass
            try:
                summary = recover_mod.recover(settings.root_path)
            except ValueError as e:
                # killed before this stream's first page or chunk (a slow daemon: Wine): no
                # OME-TIFF or OME-XML describes zero planes, so recover refuses, naming it,
                # and keeps the journal
                assert not st.released, e
                name = Path(settings.root_path).name.split(".")[0]  # its file or folder
                assert "no complete step" in str(e) and name in str(e), e
                points += 1
                with pytest.raises(DaemonGoneError):
                    st.close(timeout=5)
                continue
            buffered += summary.get("frames_from_buffers", 0)
            paths = summary["paths"]
            images = [read_image(p).reshape(-1, *([2] if "c" in [x.name for x in
                                                  settings.dimensions] else [1]), 16, 16)
                      for p in paths]
            meta = [plane_metadata(p) for p in paths]
            present = set()
            for n in range(settings.num_frames):
                pos, (t, c, z) = _frame_at(settings, n)
                img = images[pos]
                if t < len(img) and np.array_equal(img[t, c], frame_pixels(seed, n, (16, 16),
                                                                          np.uint16)):
                    present.add(n)
                elif t < len(img):
                    assert not img[t, c].any(), (settings.root_path, n)  # no stray data
            lost = st.released - present
            assert not lost, (settings.root_path, sorted(lost)[:10], len(st.released))
            for n in st.released:  # released: with its metadata
                pos, key = _frame_at(settings, n)
                got = meta[pos].get(key)
                assert got is not None, (settings.root_path, n, "no metadata")
                assert got["delta_t"] == pytest.approx(0.25 * n), (settings.root_path, n)
                assert got["exposure_time"] == pytest.approx(0.001 * (n + 1))
                if settings.format_name == "ome-zarr":
                    assert got["note"] == f"frame {n}"
            assert frames_written_in_metadata(paths[0]) == len(present), settings.root_path
            _check_lower_levels(settings, paths)
            for path in paths if settings.format_name == "ome-tiff" else [settings.root_path]:
                for report in validate_all(path):
                    assert report.ok, report
            points += 1
            released_total += len(st.released)
            with pytest.raises(DaemonGoneError):
                st.close(timeout=5)
        assert not shm_files(d.pid, "owsbuf")  # recover took them
        remove_daemon_shm(d.pid)  # the dead daemon's rings
    assert points == 24
    print(f"24 daemon kill points: {released_total} frames released, all recovered with "
          f"their metadata ({buffered} from the daemon's chunk buffers)")
