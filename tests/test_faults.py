"""Real faults against real processes, frames counted exactly against what independent readers
(tensorstore, tifffile, ome-types, yaozarrs) read back: the daemon's SIGTERM, and the
reasons the client raises."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

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
