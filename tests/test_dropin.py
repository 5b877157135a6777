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


def test_plate_position_outside_the_plate_warns_as_0_3_2(tmp_path):
    from ome_writers_service import Plate, Position
    import ome_types

    def plate_settings(suffix):
        return AcquisitionSettings(
            root_path=str(tmp_path / f"plate{suffix}"), dtype="uint16", overwrite=True,
            dimensions=[Dimension(name="p", type="position", coords=[
                Position(name="f0", plate_row="A", plate_column="1"),
                Position(name="f0", plate_row="C", plate_column="3")]),
                Dimension(name="y", count=8), Dimension(name="x", count=8)],
            plate=Plate(row_names=["A"], column_names=["1"]))

    for suffix in (".ome.zarr", ".ome.tiff"):
        with pytest.warns(UserWarning, match="not in the plate definition: \\['f0'\\]"):
            s = plate_settings(suffix)
    with pytest.raises(ValueError, match=r"positions \['f0'\] lie outside the plate"):
        with pytest.warns(UserWarning):
            zarr = plate_settings(".ome.zarr")
        create_stream(zarr, in_process=True)
    assert not (tmp_path / "plate.ome.zarr").exists()
    with create_stream(s, in_process=True) as st:  # OME-TIFF: written, left out of the Plate
        st.append(np.ones((8, 8), np.uint16))
        st.append(np.full((8, 8), 2, np.uint16))
    ome = ome_types.from_tiff(st.paths[0])
    assert len(ome.images) == 2
    (plate,) = ome.plates
    assert [ws.image_ref.id for w in plate.wells for ws in w.well_samples] == [ome.images[0].id]


def test_tiff_global_metadata_values_are_json_as_0_3_2(tmp_path):
    import ome_types
    s = small(tmp_path / "g.ome.tiff")
    with create_stream(s, in_process=True) as st:
        st.set_global_metadata("lab", {"who": "Ada", "n": 3, "µ": "5 µm", "nested": {"a": [1]}})
        for i in range(4):
            st.append(np.zeros((16, 16), np.uint16))
    (ann,) = [a for a in ome_types.from_tiff(st.paths[0]).structured_annotations.map_annotations
              if a.namespace == "lab"]
    values = {m.k: json.loads(m.value) for m in ann.value.ms}  # every value is JSON
    assert values == {"who": "Ada", "n": 3, "µ": "5 µm", "nested": {"a": [1]}}
    assert st.get_global_metadata()["lab"]["who"] == "Ada"


def test_on_demand_daemon_is_detached_and_warns_nothing(tmp_path):
    # upstream's suite runs with warnings as errors: starting the daemon on demand must not
    # leave a Popen behind ("subprocess N is still running"), nor a zombie when it exits
    import os
    import signal
    import subprocess
    import sys
    import time
    rt = tmp_path / "rt"
    code = f"""
import gc, os, warnings, numpy as np
warnings.simplefilter("error")
from ome_writers_service import AcquisitionSettings, Dimension, create_stream
s = AcquisitionSettings(root_path={str(tmp_path / "a.ome.zarr")!r}, dtype="uint8", dimensions=[
    Dimension(name="t", count=2), Dimension(name="y", count=4), Dimension(name="x", count=4)])
with create_stream(s, runtime_dir={str(rt)!r}) as st:
    st.append(np.zeros((4, 4), np.uint8))
gc.collect()
print(os.getpid())
"""
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ResourceWarning" not in out.stderr
    info = json.loads((rt / "daemon.json").read_text())
    try:
        with open(f"/proc/{info['pid']}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        assert ppid != int(out.stdout.strip())  # not the client's child
    finally:
        os.kill(info["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # gone, or a zombie of whoever adopted it
            try:
                with open(f"/proc/{info['pid']}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.05)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("compression", [None, "lzw"])
@pytest.mark.parametrize("frames", [4, 2])  # complete, and ended early
def test_view_after_close_of_tiff_in_both_modes(daemon, tmp_path, compression, frames):
    import gc
    import warnings
    for mode in ({"in_process": True}, {"endpoint": daemon.endpoint, "token": daemon.token}):
        s = small(tmp_path / f"v{len(mode)}.ome.tiff", compression=compression)
        st = create_stream(s, **mode)
        for i in range(frames):
            st.append(np.full((16, 16), i + 1, np.uint16))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "unclosed file" when the view goes
            st.close()
            view = st.view()
            assert view.shape == (frames, 16, 16)
            assert [int(view[i, 0, 0]) for i in range(frames)] == list(range(1, frames + 1))
            del st, view
            gc.collect()


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tiff"])
def test_a_stream_dropped_unclosed_is_finalized_with_a_warning(tmp_path, suffix):
    import gc
    from ome_writers_service import dataset_info
    s = small(tmp_path / f"dropped{suffix}")
    stream = create_stream(s, in_process=True)
    stream.append(np.full((16, 16), 7, np.uint16))
    with pytest.warns(UserWarning, match="OMEStream was not closed"):
        del stream
        gc.collect()
    assert not list(tmp_path.glob("*.ows-journal"))  # finalized: nothing to recover
    assert dataset_info(str(tmp_path / f"dropped{suffix}"))["images"]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unused = create_stream(s, in_process=True)  # nothing appended: no warning
        del unused
        gc.collect()
