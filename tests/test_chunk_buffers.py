"""The worst case of a stream's chunk buffers, known at creation: exact against the writer's
own buffers for many layouts, exposed on the settings and by the daemon, and enforced by the
daemon's memory budget (a stream that would not fit is refused, naming the axis and chunk
size to change; streams together stay within it)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ome_writers_service import AcquisitionSettings, Dimension, PositionDimension, create_stream
from ome_writers_service.chunk_buffers import estimate
from ome_writers_service.client import ServiceError

from service_util import (IS_ROOT, daemon_with_small_shm, frame_pixels, read_image,
                          start_daemon)

YX = [Dimension(name="y", count=16), Dimension(name="x", count=16)]


def positions(n: int) -> PositionDimension:
    return PositionDimension(coords=[f"p{i}" for i in range(n)])


LAYOUTS = {
    # the issue's: positions inside a long time chunk (every position's chunk stays open)
    "p inside t chunk 8, 4 positions": [Dimension(name="t", count=16, chunk_size=8),
                                        positions(4)],
    "p inside t chunk 8, 12 positions": [Dimension(name="t", count=16, chunk_size=8),
                                         positions(12)],
    "t chunk 8 inside p": [positions(3), Dimension(name="t", count=16, chunk_size=8)],
    "c, z inside t chunk 4": [Dimension(name="t", count=8, chunk_size=4),
                              Dimension(name="c", count=3, type="channel"),
                              Dimension(name="z", count=5, chunk_size=2)],
    "z chunk 3 inside t": [Dimension(name="t", count=4), Dimension(name="z", count=7,
                                                                   chunk_size=3)],
    "shards of t": [Dimension(name="t", count=12, chunk_size=2, shard_size_chunks=3),
                    Dimension(name="c", count=2, type="channel")],
    "one frame per chunk": [Dimension(name="t", count=10), Dimension(name="c", count=2)],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_estimate_matches_the_writers_own_buffers(tmp_path, layout):
    """Frames appended in process: the most units open at once is exactly the estimate's, and
    the buffers never hold more bytes than ``settings.max_buffer_bytes``."""
    s = AcquisitionSettings(root_path=str(tmp_path / "b.ome.zarr"), dtype="uint16",
                            overwrite=True, dimensions=[*LAYOUTS[layout], *YX])
    found = estimate(s)
    assert s.max_buffer_bytes == found.total
    stream = create_stream(s, in_process=True)
    backend = stream._backend
    most_open = 0
    for i in range(s.num_frames):
        stream.append(frame_pixels(1, i, (16, 16), np.uint16))
        most_open = max(most_open, sum(b.data is not None for pos in backend._blocks
                                       for b in pos.values()))
    stream.close()
    assert most_open == found.open_units, found
    assert 0 < backend._pool.peak <= s.max_buffer_bytes, (backend._pool.peak, found)
    want = np.stack([frame_pixels(1, i, (16, 16), np.uint16) for i in range(s.num_frames)])
    got = np.concatenate([read_image(p).reshape(-1, 16, 16) for p in stream.paths])
    assert sorted(map(bytes, got)) == sorted(map(bytes, want))  # every frame, somewhere


def test_the_estimate_grows_with_the_chunks_kept_open():
    def need(n_pos: int, chunk: int, frame: int = 1024) -> int:
        return AcquisitionSettings(root_path="/tmp/never.ome.zarr", dtype="uint16", dimensions=[
            Dimension(name="t", count=64, chunk_size=chunk), positions(n_pos),
            Dimension(name="y", count=frame), Dimension(name="x", count=frame)]).max_buffer_bytes

    # the issue measured 583 MiB and 1,090 MiB of daemon RSS for these two
    assert need(4, 32) == (4 + 5) * 64 * 2**20 and need(12, 32) == (12 + 5) * 64 * 2**20
    assert need(40, 64, 2048) > 20 * 2**30  # the 20 GiB case
    assert need(40, 1, 2048) < 200 * 2**20  # a chunk per frame: only the writes in flight
    tiff = AcquisitionSettings(root_path="/tmp/never.ome.tiff", dtype="uint16", dimensions=[
        Dimension(name="t", count=64), positions(40), *YX])
    assert tiff.max_buffer_bytes == 0  # pages are written as they arrive


def test_the_daemon_refuses_streams_over_its_memory_budget(tmp_path):
    d = start_daemon(tmp_path / "rt", "--memory-budget", "40M")
    try:
        def settings(name, n_pos):  # 128 KiB frames, t chunk 16: 2 MiB per open chunk
            return AcquisitionSettings(
                root_path=str(tmp_path / name), dtype="uint16", overwrite=True, dimensions=[
                    Dimension(name="t", count=32, chunk_size=16), positions(n_pos),
                    Dimension(name="y", count=256), Dimension(name="x", count=256)])

        too_big = settings("big.ome.zarr", 30)  # (30 + 17) x 2 MiB
        with pytest.raises(ServiceError, match=r"its buffers may take 0\.09 GiB, which does not "
                                               r"fit in the daemon's memory budget of 0\.04 GiB.*"
                                               r"chunks of axis 't' span 16.*30 chunks \(30 "
                                               r"along 'p'\).*lower the chunk_size .* of 't'"):
            create_stream(too_big, endpoint=d.endpoint, token=d.token)
        assert not (tmp_path / "big.ome.zarr").exists()  # refused before anything was made
        first = settings("a.ome.zarr", 2)  # (2 + 17) x 2 MiB = 38 MiB: fits
        a = create_stream(first, endpoint=d.endpoint, token=d.token)
        assert a.status()["max_buffer_bytes"] == first.max_buffer_bytes == 38 * 2**20
        with pytest.raises(ServiceError, match=r"does not fit beside the open streams' 0\.04 "
                                               r"GiB in the daemon's memory budget"):
            create_stream(settings("b.ome.zarr", 2), endpoint=d.endpoint, token=d.token)
        for i in range(first.num_frames):
            a.append(frame_pixels(2, i, (256, 256), np.uint16))
        a.close()
        b = create_stream(settings("b.ome.zarr", 1), endpoint=d.endpoint, token=d.token)
        b.close()  # the budget came back with the first stream
        from ome_writers_service.client import daemon_status
        st = daemon_status(d.endpoint, d.token)
        assert st["memory_budget"] == 40 * 2**20 and st["memory_committed"] == 0
    finally:
        assert d.stop() == 0, d.log_text()


@pytest.mark.skipif(not IS_ROOT or not shutil.which("unshare"),
                    reason="needs root and unshare to give the daemon a small /dev/shm (Linux)")
def test_chunk_buffers_that_shared_memory_cannot_hold_are_said_to_be_volatile(tmp_path):
    """A daemon whose /dev/shm is 16 MiB (docker's default is 64): an inline OME-Zarr stream
    whose chunk buffers need more still writes every frame, but its buffers are the daemon's
    memory, and the client is told so at open (a RuntimeWarning; status buffers_durable)."""
    with daemon_with_small_shm(tmp_path / "rt") as d:
        settings = AcquisitionSettings(  # 512 KiB frames, chunks of 8: ~72 MiB worst case
            root_path=str(tmp_path / "v.ome.zarr"), dtype="uint16", overwrite=True,
            ring_slots=8, dimensions=[Dimension(name="t", count=16, chunk_size=8),
                                      Dimension(name="y", count=512), Dimension(name="x", count=512)])
        with pytest.warns(RuntimeWarning, match="cannot hold this stream's chunk buffers"):
            stream = create_stream(settings, endpoint=d.endpoint, token=d.token,
                                   transport="inline")
        assert stream.status()["buffers_durable"] is False
        for i in range(16):
            stream.append(frame_pixels(3, i, (512, 512), np.uint16))
        assert stream.close()["frames_written"] == 16
        want = np.stack([frame_pixels(3, i, (512, 512), np.uint16) for i in range(16)])
        np.testing.assert_array_equal(read_image(settings.output_path), want)
    assert "chunk buffers in the daemon's memory" in d.log, d.log
