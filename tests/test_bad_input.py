"""Bad input, in process and through a real daemon: a clear error naming the frame, field or
file at the call that brought it, and nothing already written lost (read back with
tensorstore/tifffile, metadata with yaozarrs/ome-types)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zmq

from ome_writers_service import (AcquisitionSettings, Dimension, create_stream,
                                 read_frame_metadata)
from ome_writers_service import protocol as P
from ome_writers_service.validate import validate, validate_all

from service_util import frame_pixels, read_image, running_daemon

FORMATS = [".ome.zarr", ".ome.tiff"]
YX = [Dimension(name="y", count=16), Dimension(name="x", count=16)]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("rt"))


def open_stream(settings, where, daemon):
    if where == "in-process":
        return create_stream(settings, in_process=True)
    return create_stream(settings, endpoint=daemon.endpoint, token=daemon.token)


def settings_of(tmp_path: Path, suffix: str, frames: int = 4, **kw) -> AcquisitionSettings:
    return AcquisitionSettings(root_path=str(tmp_path / f"run{suffix}"), dtype="uint16",
                               overwrite=True, dimensions=[Dimension(name="t", count=frames), *YX],
                               **kw)


def check_all_frames(settings, paths, seed, rows_gain):
    """Every frame appended is there, pixel-exact, with its metadata row; the dataset is
    valid for yaozarrs / ome-types."""
    want = np.stack([frame_pixels(seed, i, (16, 16), np.uint16)
                     for i in range(settings.num_frames)])
    np.testing.assert_array_equal(read_image(paths[0]), want)
    assert [r["gain"] for r in read_frame_metadata(paths[0])] == rows_gain
    for report in validate_all(settings.output_path):
        assert report.ok, report


@pytest.mark.parametrize("where", ["in-process", "daemon"])
@pytest.mark.parametrize("suffix", FORMATS)
def test_frame_metadata_over_the_limit_is_refused_at_append(daemon, tmp_path, suffix, where):
    settings = settings_of(tmp_path, suffix, ring_slots=2)
    stream = open_stream(settings, where, daemon)
    stream.append(frame_pixels(5, 0, (16, 16), np.uint16), frame_metadata={"gain": 0})
    huge = {"gain": 1, "blob": "x" * 1_100_000}
    for _ in range(3):  # more often than the ring has slots: no slot is ever taken
        with pytest.raises(ValueError, match=r"frame 1: frame_metadata is 1,100,\d+ bytes as "
                                             r"JSON: at most 1,000,000 bytes"):
            stream.append(frame_pixels(5, 1, (16, 16), np.uint16), frame_metadata=huge)
    # non-ASCII text travels escaped: its wire size is what counts
    with pytest.raises(ValueError, match="frame 1: frame_metadata is"):
        stream.append(frame_pixels(5, 1, (16, 16), np.uint16),
                      frame_metadata={"note": "µ" * 200_000})
    for i in range(1, 4):
        stream.append(frame_pixels(5, i, (16, 16), np.uint16), frame_metadata={"gain": i})
    stream.close()
    check_all_frames(settings, stream.paths, 5, [0, 1, 2, 3])


@pytest.mark.parametrize("where", ["in-process", "daemon"])
@pytest.mark.parametrize("suffix", FORMATS)
def test_a_lone_surrogate_is_refused_the_same_way_for_both_formats(daemon, tmp_path, suffix,
                                                                  where):
    settings = settings_of(tmp_path, suffix)
    stream = open_stream(settings, where, daemon)
    stream.append(frame_pixels(6, 0, (16, 16), np.uint16), frame_metadata={"gain": 0})
    for bad in ({"note": "\udc80"}, {"note": ["ok", {"deep": "a\ud800b"}]},
                {"note": {"k\udfff": 1}}):
        with pytest.raises(ValueError, match=r"frame 1: frame_metadata\['note'\] cannot be "
                                             "stored: it holds the surrogate code point"):
            stream.append(frame_pixels(6, 1, (16, 16), np.uint16), frame_metadata=bad)
    with pytest.raises(ValueError, match=r"global metadata 'lab'\['who'\] cannot be stored"):
        stream.set_global_metadata("lab", {"who": "\udc80"})
    for i in range(1, 4):  # real non-ASCII text is fine
        stream.append(frame_pixels(6, i, (16, 16), np.uint16),
                      frame_metadata={"gain": i, "note": "µm ✓ 🔬"})
    stream.close()
    check_all_frames(settings, stream.paths, 6, [0, 1, 2, 3])
    assert read_frame_metadata(stream.paths[0])[3]["note"] == "µm ✓ 🔬"


def test_an_oversized_frame_notice_from_a_raw_client_is_named_and_its_slot_returned(daemon,
                                                                                   tmp_path):
    """A client in another language that sends metadata over the limit: the daemon names
    the frame, hands the slot back, and the report counts the frame as not written."""
    settings = settings_of(tmp_path, ".ome.zarr", frames=3)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    P.authenticate(sock, daemon.token)
    sock.connect(daemon.endpoint)

    def recv():
        assert sock.poll(10000)
        return P.decode(sock.recv_multipart())[0]

    sock.send_multipart(P.encode({"type": "open", "token": daemon.token, "transport": "inline",
                                  "settings": settings.model_dump(mode="json")}))
    sid = recv()["stream"]
    frame = frame_pixels(7, 0, (16, 16), np.uint16).tobytes()
    header = b'{"type":"frame","stream":%d,"seq":0,"slot":0,"meta":{"blob":"%s"}}' % (
        sid, b"x" * (P.MAX_HEADER_BYTES + 10))
    sock.send_multipart([P.TAG, header, frame])
    got = [recv(), recv()]
    err = next(h for h in got if h["type"] == "error")
    assert err["message"].startswith("frame 0: its header is 1,048,") and "slot is released" \
        in err["message"]
    assert any(h["type"] == "release" and h["slots"] == [0] for h in got)
    for i in (1, 2):
        sock.send_multipart(P.encode({"type": "frame", "stream": sid, "seq": i, "slot": i % 2},
                                     frame_pixels(7, i, (16, 16), np.uint16).tobytes()))
    sock.send_multipart(P.encode({"type": "close", "stream": sid, "frames": 3}))
    while (h := recv())["type"] != "closed":
        pass
    sock.close(0)
    assert h["frames_written"] == 2 and h["frames_dropped"] == 1
    got = read_image(settings.output_path)
    assert not got[0].any()
    np.testing.assert_array_equal(got[1:], [frame_pixels(7, i, (16, 16), np.uint16)
                                            for i in (1, 2)])


@pytest.mark.parametrize("where", ["in-process", "daemon"])
@pytest.mark.parametrize("root", ["gs://b/run.ome.tiff", "file:///data/run.ome.zarr",
                                  "https://host/run.ome.zarr", "az://c/run.ome.zarr"])
def test_a_url_root_path_is_refused_naming_its_scheme(daemon, tmp_path, monkeypatch, root,
                                                      where):
    monkeypatch.chdir(tmp_path)
    scheme = root.split(":")[0]
    with pytest.raises(ValueError, match=f"the URL scheme '{scheme}' is not supported"):
        settings = AcquisitionSettings(root_path=root, dtype="uint8",
                                       dimensions=[Dimension(name="t", count=1), *YX])
        open_stream(settings, where, daemon)
    if where == "daemon":  # a client that skips our settings model: the daemon refuses too
        good = AcquisitionSettings(root_path=str(tmp_path / "x.ome.zarr"), dtype="uint8",
                                   dimensions=[Dimension(name="t", count=1), *YX])
        raw = {**good.model_dump(mode="json"), "root_path": root}
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        P.authenticate(sock, daemon.token)
        sock.connect(daemon.endpoint)
        sock.send_multipart(P.encode({"type": "open", "token": daemon.token, "settings": raw}))
        assert sock.poll(10000)
        reply = P.decode(sock.recv_multipart())[0]
        sock.close(0)
        assert reply["code"] == P.E_SETTINGS and f"'{scheme}' is not supported" in \
            reply["message"]
    assert list(tmp_path.iterdir()) == []  # no folder named "gs:" or alike (s3://: test_s3)


def test_overwrite_through_the_daemon_never_deletes_a_file_named_like_a_store(daemon,
                                                                             tmp_path):
    settings = settings_of(tmp_path, ".ome.zarr")
    Path(settings.output_path).write_text("notes")
    with pytest.raises(Exception, match="is a file, not a zarr store"):
        open_stream(settings, "daemon", daemon)
    assert Path(settings.output_path).read_text() == "notes"


@pytest.mark.parametrize("suffix", FORMATS)
def test_validate_fails_a_pixel_scale_of_zero(tmp_path, suffix):
    import tifffile

    settings = AcquisitionSettings(
        root_path=str(tmp_path / f"s{suffix}"), dtype="uint8", overwrite=True, dimensions=[
            Dimension(name="t", count=2), Dimension(name="y", count=8, scale=0.5, unit="um"),
            Dimension(name="x", count=8, scale=0.5, unit="um")])
    with create_stream(settings, in_process=True) as stream:
        for _ in range(2):
            stream.append(np.zeros((8, 8), np.uint8))
    assert validate(settings.root_path).ok
    if suffix == ".ome.zarr":  # an edit by another tool
        zj = Path(settings.root_path) / "zarr.json"
        doc = json.loads(zj.read_text())
        doc["attributes"]["ome"]["multiscales"][0]["datasets"][0][
            "coordinateTransformations"][0]["scale"][2] = 0.0
        zj.write_text(json.dumps(doc))
        failed = validate(settings.root_path).failed
        assert any("scales positive: axis 'x': 0.0" in f for f in failed), failed
    else:
        with tifffile.TiffFile(settings.root_path) as tf:
            xml = tf.ome_metadata.replace('PhysicalSizeX="0.5"', 'PhysicalSizeX="0.0"')
        tifffile.tiffcomment(settings.root_path, comment=xml.encode(), pageindex=0)
        failed = validate(settings.root_path).failed
        # the XSD's words differ by validator (xmlschema, or lxml when installed)
        assert any("PhysicalSizeX" in f and "0.0" in f and "greater than" in f
                   for f in failed), failed
