"""A real pymmcore-plus MDA (UniMMCore, pure-Python devices) written through the service by
`ServiceSink`, every frame checked at its event's place, and the dataset compared with what
pymmcore-plus' built-in sink writes with the real ome-writers 0.3.2 for the same sequence."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import useq
from pymmcore_plus.mda import MDAEngine
from pymmcore_plus.mda._runner import SkipEvent

from mda_devices import CHANNELS, make_core, stamp
from ome_writers_service.mda import ServiceSink
from service_util import start_daemon

FORMATS = [".ome.zarr", ".ome.tiff"]
#: frames checked at their storage index, per format (reported at the end of the module)
CHECKED: dict[str, int] = {}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("rt"))
    yield d
    assert d.stop() == 0, d.log_text()
    print(f"\npymmcore-plus frames checked at their storage index: {CHECKED}")


@pytest.fixture
def scope():
    return make_core()


def run(scope, seq, output, engine_cls=None):
    """Run ``seq`` to ``output``; the events that were snapped, in order, with the stamp
    their frame must carry."""
    core, camera = scope
    camera.count = 0
    if engine_cls is not None:
        core.mda.set_engine(engine_cls(core))
    snapped = []

    class Recorder:  # what the camera saw, independently of any writer
        def frameReady(self, img, event, meta):
            snapped.append((event, [int(v) for v in img[0, :5]]))

    core.mda.run(seq, output=[output, Recorder()] if not isinstance(output, (str, Path))
                 else [str(output), Recorder()], overwrite=True)
    return snapped


def reference(scope, seq, tmp_path, suffix, engine_cls=None) -> list[dict]:
    """What pymmcore-plus' built-in sink writes for ``seq`` with the real ome-writers 0.3.2."""
    import ome_writers
    assert ome_writers.__version__ == "0.3.2"
    root = tmp_path / "ref" / f"run{suffix}"
    run(scope, seq, root, engine_cls)
    return images(root if root.exists() else root.with_name("run"))


def images(path: Path) -> list[dict]:
    """Each image of a dataset in position order: name, axes, array, metadata."""
    if path.suffix == ".zarr":
        import tensorstore as ts
        root = json.loads((path / "zarr.json").read_text())["attributes"]
        if "plate" in root.get("ome", {}):
            groups = []
            for well in root["ome"]["plate"]["wells"]:
                wj = json.loads((path / well["path"] / "zarr.json").read_text())
                groups += [f"{well['path']}/{f['path']}"
                           for f in wj["attributes"]["ome"]["well"]["images"]]
        elif "bioformats2raw.layout" in root.get("ome", {}):
            groups = json.loads((path / "OME/zarr.json").read_text())["attributes"]["ome"]["series"]
        else:
            groups = [""]
        out = []
        for g in groups:
            attrs = json.loads((path / g / "zarr.json").read_text())["attributes"]
            ms = attrs["ome"]["multiscales"][0]
            arr = ts.open({"driver": "zarr3", "kvstore": {
                "driver": "file", "path": str(path / g / ms["datasets"][0]["path"])}}).result()
            out.append({"name": g, "axes": [a["name"] for a in ms["axes"]],
                        "data": arr.read().result(), "attrs": attrs, "multiscales": ms})
        return out
    files = [path] if path.is_file() else sorted(path.glob(f"{path.name}_p*.ome.tiff"))
    out = []
    for f in files:
        with tifffile.TiffFile(f) as tf:
            import ome_types
            ome = ome_types.from_xml(tf.ome_metadata)
            k = 0 if path.is_file() else int(f.name.rsplit("_p", 1)[1].split(".")[0])
            series = tf.series[k]
            out.append({"name": f.name, "axes": list(series.axes.lower()),
                        "data": series.asarray(), "ome": ome, "image": ome.images[k]})
    return out


def check_frames(snapped, imgs, position_of) -> int:
    """Every snapped frame carries its stamp at its event's index; the rest are zeros."""
    seen = {}
    for k, (event, pixels) in enumerate(snapped):
        channel = CHANNELS.index(event.channel.config) if event.channel else 0
        assert pixels == stamp(k, channel, event.z_pos or 0, event.x_pos or 0,
                               event.y_pos or 0), event  # the camera did as the event said
        img = imgs[position_of(event.index)]
        where = tuple(event.index.get(a, 0) for a in img["axes"][:-2])
        assert [int(v) for v in img["data"][where][0, :5]] == pixels, (img["name"], where)
        seen[(img["name"], where)] = k
    for img in imgs:  # planes no snapped frame went to hold the fill value
        for where in np.ndindex(*img["data"].shape[:-2]):
            if (img["name"], where) not in seen:
                assert not img["data"][where].any(), (img["name"], where)
    return len(snapped)


def compare_with_builtin(ours: list[dict], ref: list[dict]) -> None:
    """Same images, names, axes, pixels and metadata layout as the built-in sink's."""
    assert [i["name"] for i in ours] == [i["name"] for i in ref]
    for a, b in zip(ours, ref):
        assert a["axes"] == b["axes"], a["name"]
        assert a["data"].shape == b["data"].shape and a["data"].dtype == b["data"].dtype
        np.testing.assert_array_equal(a["data"], b["data"])
        if "attrs" in a:  # OME-Zarr
            ma, mb = a["multiscales"], b["multiscales"]
            assert ma["axes"] == mb["axes"]
            (ta,), (tb,) = (m["datasets"][0]["coordinateTransformations"] for m in (ma, mb))
            # a deliberate difference: 0.3.2 writes a scale of 0 for a time interval of 0 (a
            # degenerate transform); we write 1
            assert ta["scale"] == [1.0 if v == 0 else v for v in tb["scale"]]
            labels = [[c["label"] for c in x.get("omero", {}).get("channels", [])]
                      for x in (a["attrs"], b["attrs"])]
            assert labels[0] == labels[1]
            rows = [x["ome_writers"]["frame_metadata"] for x in (a["attrs"], b["attrs"])]
            assert [r["storage_index"] for r in rows[0]] == [r["storage_index"] for r in rows[1]]
            assert [sorted(r) for r in rows[0]] == [sorted(r) for r in rows[1]]
            for ra, rb in zip(*rows):
                for key in ("exposure_time", "position_x", "position_y", "position_z"):
                    assert ra.get(key) == pytest.approx(rb.get(key)), key
            sa, sb = (x["pymmcore_plus"]["summary_metadata"] for x in (a["attrs"], b["attrs"]))
            assert sorted(sa) == sorted(sb) and sa["mda_sequence"] == sb["mda_sequence"]
        else:  # OME-TIFF
            ia, ib = a["image"], b["image"]
            assert ia.name == ib.name
            pa, pb = ia.pixels, ib.pixels
            for attr in ("dimension_order", "type", "size_x", "size_y", "size_z", "size_c",
                         "size_t", "physical_size_x", "physical_size_z"):
                assert getattr(pa, attr) == getattr(pb, attr), attr
            assert [c.name for c in pa.channels] == [c.name for c in pb.channels]
            assert [(p.the_t, p.the_c, p.the_z, p.position_x, p.position_y, p.position_z)
                    for p in pa.planes] == \
                [(p.the_t, p.the_c, p.the_z, p.position_x, p.position_y, p.position_z)
                 for p in pb.planes]
            summaries = [[m for m in x["ome"].structured_annotations.map_annotations
                          if m.namespace == "pymmcore_plus"] for x in (a, b)]
            assert len(summaries[0]) == len(summaries[1]) == 1
            ja, jb = (json.loads(s[0].value.ms[0].value) for s in summaries)
            assert sorted(ja) == sorted(jb) and ja["mda_sequence"] == jb["mda_sequence"]


def by_position(n_grid: int = 1):
    return lambda index: index.get("p", 0) * n_grid + index.get("g", 0)


def write_and_compare(daemon, scope, tmp_path, suffix, seq, position_of, engine_cls=None):
    """``seq`` through a ServiceSink (daemon-backed): no error, every frame checked at its
    event's place, the dataset as the built-in sink writes it with ome-writers 0.3.2."""
    sink = ServiceSink(tmp_path / "ours" / f"run{suffix}", overwrite=True,
                       endpoint=daemon.endpoint, token=daemon.token)
    snapped = run(scope, seq, sink, engine_cls)
    assert sink.error is None and not sink.report["errors"]
    assert sink.report["frames_written"] == len(snapped)
    ours = images(Path(sink.settings.output_path))
    CHECKED[suffix] = CHECKED.get(suffix, 0) + check_frames(snapped, ours, position_of)
    compare_with_builtin(ours, reference(scope, seq, tmp_path, suffix, engine_cls))
    return snapped, ours


@pytest.mark.parametrize("suffix", FORMATS)
def test_mda_10t_2c_5z_2p_matches_the_builtin_sink(daemon, scope, tmp_path, suffix):
    seq = useq.MDASequence(
        time_plan={"interval": 0, "loops": 10}, channels=list(CHANNELS),
        z_plan={"range": 0.8, "step": 0.2}, axis_order="tpcz",
        stage_positions=[(100, 200, 1.0), (300, 400, 2.0)])
    snapped, _ = write_and_compare(daemon, scope, tmp_path, suffix, seq, by_position())
    assert len(snapped) == 10 * 2 * 5 * 2


@pytest.mark.parametrize("suffix", FORMATS)
def test_grid_plan_positions_match_the_builtin_sink(daemon, scope, tmp_path, suffix):
    seq = useq.MDASequence(
        time_plan={"interval": 0, "loops": 2}, channels=["DAPI"], axis_order="tpgcz",
        stage_positions=[useq.Position(x=1000, y=500, name="A"),
                         useq.Position(x=2000, y=500, name="B")],
        grid_plan=useq.GridRowsColumns(rows=2, columns=2, fov_width=40, fov_height=24))
    snapped, ours = write_and_compare(daemon, scope, tmp_path, suffix, seq, by_position(4))
    assert len(snapped) == 2 * 2 * 4
    if suffix == ".ome.zarr":  # grid positions are named <name>_<row>_<column>, as 0.3.2
        assert sorted(i["name"] for i in ours) == [f"{p}_{r}_{c}" for p in "AB"
                                                   for r in range(2) for c in range(2)]


class SkippingEngine(MDAEngine):
    """Skips events as a failed autofocus does: z index 2 at t 1, and the very last event."""

    def setup_event(self, event):
        if event.index.get("t") == 1 and event.index.get("z") == 2 or \
                event.index == {"t": 2, "p": 1, "c": 1, "z": 2}:
            raise SkipEvent(reason="autofocus failed")
        return super().setup_event(event)


@pytest.mark.parametrize("suffix", FORMATS)
def test_skipped_events_keep_the_fill_value_as_the_builtin_sink(daemon, scope, tmp_path, suffix):
    seq = useq.MDASequence(
        time_plan={"interval": 0, "loops": 3}, channels=list(CHANNELS),
        z_plan={"range": 0.4, "step": 0.2}, axis_order="tpcz",
        stage_positions=[(10, 20, 1.0), (30, 40, 1.0)])
    snapped, ours = write_and_compare(daemon, scope, tmp_path, suffix, seq, by_position(),
                                      SkippingEngine)
    assert len(snapped) == 3 * 2 * 2 * 3 - 2 * 2 - 1
    assert ours[0]["data"].shape[0] == 3  # the trailing skip did not cut the time axis


@pytest.mark.parametrize("suffix", FORMATS)
def test_an_event_generator_is_written_along_an_unbounded_t_as_the_builtin_sink(
        daemon, scope, tmp_path, suffix):
    def events():
        for i in range(5):
            yield useq.MDAEvent(index={"t": i}, x_pos=100 + i, y_pos=50)

    class Replay:  # a fresh generator per run, as a sequence would give
        def __iter__(self):
            return events()

    snapped, ours = write_and_compare(daemon, scope, tmp_path, suffix, Replay(), by_position())
    assert len(snapped) == 5
    assert ours[0]["data"].shape[0] == 5  # the unbounded t grew to the frames that came


# the sink raises in the handler; pymmcore-plus' relay thread reports it as unhandled
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_error_is_raised_recorded_and_logged_not_only_logged(daemon, scope, tmp_path,
                                                                  caplog):
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 6}, channels=["DAPI"])
    root = tmp_path / "gone.ome.zarr"
    sink = ServiceSink(root, endpoint=daemon.endpoint, token=daemon.token)
    import shutil

    class Vandal:  # the dataset disappears while it is written
        def frameReady(self, img, event, meta):
            if event.index["t"] == 2:
                shutil.rmtree(root)

    core, camera = scope
    with caplog.at_level(logging.ERROR, logger="ome_writers_service.mda"):
        core.mda.run(seq, output=[sink, Vandal()])
    assert sink.error is not None and str(root) in str(sink.error)
    assert sink.report is not None and sink.report["errors"]
    assert any("ServiceSink" in r.message and r.levelno == logging.ERROR for r in caplog.records)
    # an existing dataset without overwrite: refused before the acquisition starts
    root = tmp_path / "exists.ome.zarr"
    root.mkdir()
    (root / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(FileExistsError, match="already exists"):
        ServiceSink(root, endpoint=daemon.endpoint, token=daemon.token)
    # ... and if it appears after the sink was made: refused when the sequence starts
    late = tmp_path / "late.ome.zarr"
    sink = ServiceSink(late, endpoint=daemon.endpoint, token=daemon.token)
    late.mkdir()
    (late / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    core.mda.run(seq, output=sink)
    assert isinstance(sink.error, FileExistsError) and sink.report is None


def test_memory_output_and_import_isolation(scope):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import sys, ome_writers_service; "
                          "print('pymmcore_plus' in sys.modules)"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 3}, channels=list(CHANNELS))
    sink = ServiceSink("memory")
    snapped = run(scope, seq, sink)
    assert sink.error is None and sink.settings.format.name == "scratch"
    assert sink.report["frames_written"] == len(snapped) == 6


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_daemon_error_raises_in_the_next_frame_ready(daemon, scope, tmp_path, caplog):
    import subprocess
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], check=True)
    try:
        seq = useq.MDASequence(time_plan={"interval": 0, "loops": 400})
        # a small ring: the camera cannot run far ahead of the disk, so frames still come
        # after the daemon's error (else it surfaces at the end, see the test above)
        from ome_writers_service import AcquisitionSettings
        sink = ServiceSink(AcquisitionSettings(root_path=str(mnt / "full.ome.tiff"), ring_slots=8),
                           endpoint=daemon.endpoint, token=daemon.token)
        raised = []
        real = sink.frameReady

        def frame_ready(img, event, meta):  # what pymmcore-plus' relay sees
            try:
                real(img, event, meta)
            except Exception as e:
                raised.append((event.index["t"], e))
                raise
        sink.frameReady = frame_ready
        core, _ = scope
        with caplog.at_level(logging.ERROR, logger="ome_writers_service.mda"):
            core.mda.run(seq, output=sink)
        assert raised and "space" in str(raised[0][1]).lower()  # raised in frameReady
        assert sink.error is raised[0][1] and sink.report["errors"]
        assert 0 < sink.report["frames_written"] < 400
        assert any(r.levelno == logging.ERROR for r in caplog.records)
        # what was written before the disk filled is a valid, readable dataset
        with tifffile.TiffFile(mnt / "full.ome.tiff") as tf:
            assert len(tf.pages) >= 1
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_several_cameras_add_a_cam_axis_as_the_builtin_sink(daemon, scope, tmp_path):
    # UniMMCore has no multi-camera device without adapters: the handlers get what the
    # runner hands them for two cameras (each event's frames, one per camera, in order)
    from pymmcore_plus.mda._sink import OmeWritersSink  # the built-in sink, ome-writers 0.3.2
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 3}, channels=list(CHANNELS))
    core, _ = scope
    meta = core.mda.engine.setup_sequence(seq)
    meta["image_infos"][0]["num_camera_adapter_channels"] = 2
    frames = [(np.full((24, 40), 10 * k + cam, np.uint16), event)
              for k, event in enumerate(seq) for cam in range(2)]
    frame_meta = {"runner_time_ms": 1.0, "exposure_ms": 10.0}
    sink = ServiceSink(tmp_path / "ours" / "run.ome.zarr", endpoint=daemon.endpoint,
                       token=daemon.token)
    with pytest.warns(UserWarning, match="channel axis and a custom axis"):
        sink.sequenceStarted(seq, meta)
    for img, event in frames:
        sink.frameReady(img, event, frame_meta)
    sink.sequenceFinished(seq)
    assert sink.error is None and sink.report["frames_written"] == 12
    ref = OmeWritersSink.from_output(tmp_path / "ref" / "run.ome.zarr")
    with pytest.warns(UserWarning):
        ref.setup(seq, meta)
    for img, event in frames:
        ref.append(img, event, frame_meta)
    ref.close()
    ours, theirs = images(tmp_path / "ours" / "run.ome.zarr"), images(tmp_path / "ref" / "run.ome.zarr")
    assert ours[0]["axes"] == ["t", "c", "cam", "y", "x"]
    for k, event in enumerate(seq):
        for cam in range(2):
            where = (event.index["t"], event.index["c"], cam)
            assert ours[0]["data"][where][0, 0] == 10 * k + cam
    compare_with_builtin(ours, theirs)
