"""Clients on another machine: beyond loopback every connection is encrypted (ZeroMQ CURVE,
keys in the 0600 connection file). Tested on 127.0.0.1 with CURVE forced on (--curve);
only loopback addresses are ever connected to."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ome_writers_service import AcquisitionSettings, Dimension, create_stream
from ome_writers_service.client import ServiceError
from ome_writers_service.daemon import Daemon

from service_util import assert_private, frame_pixels, read_image, start_daemon, this_host_address


@pytest.fixture
def curve_daemon(tmp_path):
    d = start_daemon(tmp_path / "rt", "--endpoint", "tcp://127.0.0.1:0", "--curve")
    yield d
    assert d.stop() == 0, d.log_text()


def settings_of(tmp_path, n=4):
    return AcquisitionSettings(root_path=str(tmp_path / "r.ome.zarr"), dtype="uint16",
                               overwrite=True, dimensions=[
                                   Dimension(name="t", count=n), Dimension(name="y", count=16),
                                   Dimension(name="x", count=16)])


@pytest.mark.parametrize("transport", ["inline", "shm"])
def test_a_curve_daemon_serves_the_client_holding_its_connection_file(curve_daemon, tmp_path,
                                                                       transport):
    conn = curve_daemon.rt / "daemon.json"
    assert_private(conn)  # it holds the client's secret key
    info = json.loads(conn.read_text())
    assert set(info["curve"]) == {"server_public", "client_public", "client_secret"}
    settings = settings_of(tmp_path)
    with create_stream(settings, connection_file=conn, transport=transport) as stream:
        for i in range(4):
            stream.append(frame_pixels(1, i, (16, 16), np.uint16))
    np.testing.assert_array_equal(read_image(stream.paths[0]), np.stack(
        [frame_pixels(1, i, (16, 16), np.uint16) for i in range(4)]))


def test_plain_or_a_wrong_key_is_refused_by_a_curve_daemon(curve_daemon, tmp_path):
    settings = settings_of(tmp_path)
    # the token alone (PLAIN) no longer gets in
    with pytest.raises(ServiceError, match="another security mechanism"):
        create_stream(settings, endpoint=curve_daemon.endpoint, token=curve_daemon.token,
                      runtime_dir=tmp_path / "elsewhere")
    # a client key pair the daemon did not hand out
    import zmq

    info = json.loads((curve_daemon.rt / "daemon.json").read_text())
    public, secret = zmq.curve_keypair()
    info["curve"].update(client_public=public.decode(), client_secret=secret.decode())
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(info))
    with pytest.raises(ServiceError, match="did not accept the token or keys"):
        create_stream(settings, connection_file=forged)


def test_a_non_loopback_endpoint_needs_curve_keys(tmp_path):
    # refused before any connection is attempted (no traffic leaves this machine)
    with pytest.raises(ServiceError, match="not a loopback address: its connection must be "
                                           "encrypted"):
        create_stream(settings_of(tmp_path), endpoint="tcp://scope-pc.invalid:5555",
                      token="secret", runtime_dir=tmp_path / "rt")
    # a daemon exposed to the network always encrypts (built, never bound here)
    assert Daemon("tcp://0.0.0.0:5555", rt_dir=tmp_path / "rt2", allow_remote=True).curve
    assert Daemon("tcp://127.0.0.1:5555", rt_dir=tmp_path / "rt3").curve is None


def test_a_client_reaching_the_daemon_over_the_network_is_watched_by_heartbeats(tmp_path):
    """A daemon bound to this machine's network address (--allow-remote: CURVE always) serves
    a client connecting there as one on another host does. Such a client's pid means nothing
    to the daemon (another host's initial pid namespace has the same id as ours), so the
    daemon watches it by heartbeats, which travel encrypted on a socket of their own."""
    host = this_host_address()
    if host is None:
        pytest.skip("this machine has no non-loopback address")
    d = start_daemon(tmp_path / "rt", "--endpoint", f"tcp://{host}:0", "--allow-remote")
    try:
        conn = d.rt / "daemon.json"
        assert json.loads(conn.read_text())["curve"], "a network endpoint always encrypts"
        settings = settings_of(tmp_path, n=6)
        with create_stream(settings, connection_file=conn, transport="inline") as stream:
            assert stream._heartbeat is not None, "watched by its pid, not heartbeats"
            for i in range(6):
                stream.append(frame_pixels(2, i, (16, 16), np.uint16))
            assert stream.status()["frames_written"] >= 0
        assert stream.report["frames_written"] == 6, stream.report
        np.testing.assert_array_equal(read_image(stream.paths[0]), np.stack(
            [frame_pixels(2, i, (16, 16), np.uint16) for i in range(6)]))
        with pytest.raises(ServiceError, match="not a loopback address"):
            create_stream(settings, endpoint=d.endpoint, token=d.token,
                          runtime_dir=tmp_path / "elsewhere")
    finally:
        assert d.stop() == 0, d.log_text()
