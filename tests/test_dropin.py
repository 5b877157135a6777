"""Where ome-writers 0.3.2 scripts meet the daemon-backed stream: same exception types, same
thread safety, same metadata encodings, as the in-process stream and 0.3.2 (issue 13)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from ome_writers_service import AcquisitionSettings, Dimension, create_stream

from service_util import start_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("rt"))
    yield d
    assert d.stop() == 0, d.log_text()


def small(root, **kw) -> AcquisitionSettings:
    return AcquisitionSettings(root_path=str(root), dtype="uint16", overwrite=True, dimensions=[
        Dimension(name="t", count=4), Dimension(name="y", count=16),
        Dimension(name="x", count=16)], **kw)


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tiff"])
def test_global_metadata_from_another_thread_while_close_runs(daemon, tmp_path, suffix):
    # ZeroMQ sockets are not thread-safe: the stream serializes its socket, so a second
    # thread's set_global_metadata() lands either before close() or after it, never inside
    for run in range(10):
        s = small(tmp_path / f"r{run}{suffix}")
        stream = create_stream(s, endpoint=daemon.endpoint, token=daemon.token)
        for i in range(4):
            stream.append(np.full((16, 16), i, np.uint16))
        errors = []
        start = threading.Barrier(2)

        def late() -> None:
            start.wait()
            try:
                stream.set_global_metadata("late", {"run": run})
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        t = threading.Thread(target=late)
        t.start()
        start.wait()
        stream.close()
        t.join()
        assert not errors, errors
        assert stream.get_global_metadata() == {"late": {"run": run}}
        if suffix == ".ome.zarr":
            attrs = json.loads((tmp_path / f"r{run}{suffix}" / "zarr.json").read_text())
            assert attrs["attributes"]["late"] == {"run": run}
        else:
            import tifffile
            with tifffile.TiffFile(tmp_path / f"r{run}{suffix}") as tf:
                assert '"run"' in tf.ome_metadata or "run" in tf.ome_metadata


def test_appends_from_two_threads_are_serialized(daemon, tmp_path):
    s = AcquisitionSettings(root_path=str(tmp_path / "two.ome.zarr"), dtype="uint16",
                            dimensions=[Dimension(name="t", count=400), Dimension(name="y", count=8),
                                        Dimension(name="x", count=8)])
    stream = create_stream(s, endpoint=daemon.endpoint, token=daemon.token)

    def writer() -> None:
        for _ in range(200):
            stream.append(np.ones((8, 8), np.uint16))

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    stop = threading.Event()

    def poller() -> None:
        while not stop.is_set():
            stream.status()

    p = threading.Thread(target=poller)
    p.start()
    for t in threads:
        t.join()
    stop.set()
    p.join()
    report = stream.close()
    assert report["frames_written"] == 400 and not report["errors"]


def test_existing_dataset_is_file_exists_error_in_both_modes(daemon, tmp_path):
    s = small(tmp_path / "x.ome.tiff")
    with create_stream(s, in_process=True) as st:
        for i in range(4):
            st.append(np.zeros((16, 16), np.uint16))
    again = s.model_copy(update={"overwrite": False})
    for kw in ({"in_process": True}, {"endpoint": daemon.endpoint, "token": daemon.token}):
        with pytest.raises(FileExistsError, match="already exists"):
            create_stream(again, **kw)
