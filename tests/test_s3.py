"""OME-Zarr straight to S3-compatible object storage, against a local S3 server.

``moto[server]`` runs on 127.0.0.1 (a free port) with authentication on: the test creates a
user and its access key, then the bucket. Datasets are written through real daemons, read
back with tensorstore's s3 driver and zarr-python, and validated (yaozarrs, ome-zarr-models)
from a copy of the bucket's objects."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from ome_writers_service import (AcquisitionSettings, Dimension, OmeZarrFormat,
                                 PositionDimension, create_stream)
from ome_writers_service.recover import recover

from service_util import expected_images, frame_pixels, start_daemon

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

BUCKET = "ows-test-bucket"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1, a user with an access key, and a bucket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}  # then every request is signed
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="microscope")
    iam.put_user_policy(UserName="microscope", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*",
                                                 "Resource": "*"}]}))
    key = iam.create_access_key(UserName="microscope")["AccessKey"]
    env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY":
           key["SecretAccessKey"], "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=BUCKET)
    yield {"endpoint": endpoint, "env": env, "client": client}
    proc.terminate()
    proc.wait(30)


@pytest.fixture
def aws_env(s3, monkeypatch, tmp_path):
    for k, v in s3["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("OME_WRITERS_SERVICE_JOURNAL_DIR", str(tmp_path / "journals"))
    return s3


def settings_of(url: str, **kw) -> AcquisitionSettings:
    dims = kw.pop("dimensions", None) or [
        Dimension(name="t", count=4, chunk_size=2, type="time"),
        PositionDimension(coords=["A", "B"]),
        Dimension(name="c", count=2, type="channel"),
        Dimension(name="y", count=32, chunk_size=16, scale=0.25, unit="um"),
        Dimension(name="x", count=24, chunk_size=16, scale=0.25, unit="um")]
    return AcquisitionSettings(root_path=url, dimensions=dims, dtype="uint16", overwrite=True,
                               **kw)


def write_all(stream, settings, seed, frames=None):
    for i in range(settings.num_frames if frames is None else frames):
        stream.append(frame_pixels(seed, i, settings.frame_shape, "uint16"))


def mirror(client, url: str, dest: Path) -> Path:
    """Every object under ``url`` copied to ``dest`` (to validate with local tools)."""
    prefix = url[len(f"s3://{BUCKET}/"):].rstrip("/") + "/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, obj["Key"], str(target))
    return dest


def check_in_bucket(s3, settings, seed, tmp_path, frames=None) -> None:
    """Pixel-exact through tensorstore's s3 driver and zarr-python; metadata validated."""
    import yaozarrs
    import zarr

    prefix = settings.output_path[len(f"s3://{BUCKET}/"):]
    groups = ["A", "B"] if settings.position_dimension else [""]
    levels = settings.format.levels
    local = mirror(s3["client"], settings.output_path, tmp_path / "mirror.ome.zarr")
    yaozarrs.validate_zarr_store(str(local))
    for group, want in zip(groups, expected_images(settings, seed, frames=frames)):
        for k in range(levels):
            key = "/".join(p for p in (prefix, group, str(k)) if p) + "/"
            arr = ts.open({"driver": "zarr3", "kvstore": {
                "driver": "s3", "bucket": BUCKET, "path": key, "endpoint": s3["endpoint"],
                "aws_region": "us-east-1"}}).result().read().result()
            if k == 0:
                np.testing.assert_array_equal(arr, want)
            assert arr.shape[:-2] == want.shape[:-2]
            np.testing.assert_array_equal(
                zarr.open_array(str(local / group / str(k)), mode="r")[...], arr)
        if levels > 1:
            from ome_zarr_models.v05.image import Image
            Image.from_zarr(zarr.open_group(str(local / group), mode="r"))


def test_s3_dataset_through_an_on_demand_daemon(aws_env, tmp_path):
    """The daemon the client starts inherits its environment (endpoint, region, keys)."""
    settings = settings_of(f"s3://{BUCKET}/runs/day1/cells.ome.zarr",
                           format=OmeZarrFormat(levels=2), compression="blosc-zstd")
    rt = tmp_path / "rt"
    try:
        with create_stream(settings, runtime_dir=rt) as stream:
            write_all(stream, settings, 1)
            np.testing.assert_array_equal(stream.view()[0, 0, 0], frame_pixels(
                1, 0, settings.frame_shape, "uint16"))  # the live view reads the bucket
            assert stream.paths == [f"s3://{BUCKET}/runs/day1/cells.ome.zarr/A",
                                    f"s3://{BUCKET}/runs/day1/cells.ome.zarr/B"]
        report = stream.report
        assert report["errors"] == []
        check_in_bucket(aws_env, settings, 1, tmp_path)
        assert not list((tmp_path / "journals").rglob("*.ows-journal"))  # finalized
        secret = aws_env["env"]["AWS_SECRET_ACCESS_KEY"]
        log = (rt / "daemon.log").read_text(errors="replace")
        assert secret not in log and secret not in json.dumps(report)
        assert secret not in repr(settings) and secret not in settings.model_dump_json()
    finally:
        info = json.loads((rt / "daemon.json").read_text())
        os.kill(info["pid"], signal.SIGTERM)


def test_two_daemons_write_two_datasets_into_one_bucket_at_once(aws_env, tmp_path):
    daemons = [start_daemon(tmp_path / f"rt{i}") for i in range(2)]
    try:
        runs = [settings_of(f"s3://{BUCKET}/shared/scope{i}.ome.zarr") for i in range(2)]
        streams = [create_stream(s, endpoint=d.endpoint, token=d.token)
                   for s, d in zip(runs, daemons)]
        for i in range(runs[0].num_frames):  # interleaved: both write at once
            for k, (s, st) in enumerate(zip(runs, streams)):
                st.append(frame_pixels(10 + k, i, s.frame_shape, "uint16"))
        for st in streams:
            assert st.close()["errors"] == []
        for k, s in enumerate(runs):
            check_in_bucket(aws_env, s, 10 + k, tmp_path / f"m{k}")
    finally:
        for d in daemons:
            assert d.stop() == 0, d.log_text()


@pytest.mark.parametrize("fault", ["missing bucket", "wrong credentials"])
def test_a_bad_bucket_or_key_fails_create_stream_clearly(aws_env, tmp_path, monkeypatch, fault):
    d = start_daemon(tmp_path / "rt")  # started with what the fault leaves of the environment
    url = f"s3://{BUCKET}/x/bad.ome.zarr"
    if fault == "missing bucket":
        url = "s3://no-such-bucket-here/x/bad.ome.zarr"
        match = "the bucket does not exist"
    else:
        match = "the credentials were refused"
    try:
        if fault == "wrong credentials":
            d.stop()
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
            d = start_daemon(tmp_path / "rt")
        t0 = time.monotonic()
        with pytest.raises(Exception, match=match) as err:
            create_stream(settings_of(url), endpoint=d.endpoint, token=d.token)
        assert time.monotonic() - t0 < 20  # an answer, not a hang
        assert url in str(err.value)
        with pytest.raises(Exception, match=match) as err2:  # in process, the same words
            create_stream(settings_of(url), in_process=True)
        secret = os.environ["AWS_SECRET_ACCESS_KEY"]  # (refused or not: never shown)
        for text in (str(err.value), str(err2.value), d.log_text()):
            assert secret not in text
    finally:
        assert d.stop() == 0, d.log_text()


def test_s3_dataset_recovered_after_daemon_sigkill(aws_env, tmp_path):
    """Chunks in the bucket stay; the frames the daemon released into its chunk buffers
    (shared memory on the writing machine) are written by recover, lower levels included."""
    d = start_daemon(tmp_path / "rt")
    settings = settings_of(f"s3://{BUCKET}/crash/k.ome.zarr", format=OmeZarrFormat(levels=2),
                           ring_slots=4,
                           dimensions=[Dimension(name="t", count=30, chunk_size=4),
                                       Dimension(name="y", count=16),
                                       Dimension(name="x", count=16)])
    stream = create_stream(settings, endpoint=d.endpoint, token=d.token)
    # 4 slots: the 23rd frame's slot frees only once frame 18 is released (t chunk 4 holds
    # 16-19: frames 16-18 in the daemon's chunk buffers)
    write_all(stream, settings, 3, frames=23)
    prefix = "crash/k.ome.zarr/"

    def chunks(level: int) -> int:
        got = aws_env["client"].list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}{level}/c/")
        return got.get("KeyCount", 0)

    deadline = time.monotonic() + 30  # four whole t chunks in the bucket, at both levels
    while (chunks(0), chunks(1)) != (4, 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    d.stop(signal.SIGKILL)
    journal = tmp_path / "journals" / "s3" / BUCKET / "crash" / "k.ome.zarr.ows-journal"
    assert journal.is_file()  # on local disk: the bucket cannot be appended to
    summary = recover(settings.output_path)
    assert not journal.exists()
    assert summary["frames_from_buffers"] >= 3 and summary["extent"] >= 19, summary
    check_in_bucket(aws_env, settings, 3, tmp_path, frames=summary["extent"])
    units = -(-summary["extent"] // 4)  # the buffered frames' level 1 computed by recover
    assert (chunks(0), chunks(1)) == (units, units)
    try:
        stream.close(timeout=1)
    except Exception:  # noqa: BLE001 - its daemon is gone
        pass


def test_urls_the_service_cannot_write_are_refused_at_settings_time():
    with pytest.raises(ValueError, match="only OME-Zarr can be written to object storage"):
        settings_of(f"s3://{BUCKET}/x/run.ome.tiff")
    with pytest.raises(ValueError, match="the URL scheme 'gs' is not supported"):
        settings_of("gs://bucket/x/run.ome.zarr")
    with pytest.raises(ValueError, match="not an S3 bucket name"):
        settings_of("s3://Bad_Bucket/run.ome.zarr")
