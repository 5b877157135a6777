"""Real faults against real processes, frames counted exactly against what independent readers
(tensorstore, tifffile, ome-types, yaozarrs) read back: the daemon's SIGTERM, and the
reasons the client raises."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from ome_writers_service import AcquisitionSettings, Dimension, create_stream
from ome_writers_service.client import DaemonGoneError

from service_util import frame_pixels, read_image, shm_rings, start_daemon

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
        assert d.stop(signal.SIGTERM) == 0
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
    os.kill(os.getpid(), signal.SIGKILL)
stream.close()
print("closed", flush=True)
sys.stdin.read()  # alive until told
"""


def _ppid(pid: int) -> int | None:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[1])


def _gone(pid: int, timeout: float) -> bool:
    """Whether the process is gone entirely (exited and reaped: no zombie either)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("mode", ["client-lives", "crash"])
def test_a_daemon_started_on_demand_is_reaped_and_exits_when_idle(tmp_path, mode):
    root = tmp_path / "od.ome.tiff"
    client = subprocess.Popen([sys.executable, "-c", ON_DEMAND_CLIENT, str(tmp_path / "rt"),
                               str(root), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        pid = int(client.stdout.readline())
        assert _ppid(pid) not in (None, client.pid)  # not the client's child: never its zombie
        if mode == "crash":
            assert client.wait(30) == -signal.SIGKILL
        else:
            assert client.stdout.readline().strip() == "closed"
        # idle (its stream closed, or finalized after the client's death): it exits, and
        # is reaped, while the client still runs or after it died
        assert _gone(pid, 15), f"daemon {pid} still there: {open(f'/proc/{pid}/stat').read()}"
    finally:
        client.kill()
        client.wait()
    with tifffile.TiffFile(root) as tf:
        pages = [p.asarray() for p in tf.pages]
    if mode == "client-lives":
        assert [int(p[0, 0]) for p in pages] == [0, 1, 2]
