"""An acquisition written straight to an S3-compatible bucket (AWS S3, MinIO, Ceph).

    AWS_ENDPOINT_URL=http://minio.lab:9000 AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        python examples/s3_bucket.py [s3://BUCKET/PREFIX]

The daemon started on demand inherits this environment. With no endpoint configured, the
example runs against a local S3 server (moto, ``pip install "moto[server]"``) on 127.0.0.1,
so that it runs anywhere. It reads the data back from the bucket to check it.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import tensorstore as ts

from ome_writers_service import AcquisitionSettings, Dimension, OmeZarrFormat, create_stream

url = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1].startswith("s3://") else None
server = None
if url is None and not os.environ.get("AWS_ENDPOINT_URL"):  # a local S3 server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_REGION="us-east-1",
                      AWS_ACCESS_KEY_ID="example", AWS_SECRET_ACCESS_KEY="example")
    for _ in range(300):
        try:
            urllib.request.urlopen(os.environ["AWS_ENDPOINT_URL"] + "/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    import boto3
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(
        Bucket="microscopy")
    # this daemon must see the server's endpoint: a runtime dir of our own
    os.environ["OME_WRITERS_SERVICE_RUNTIME_DIR"] = f"/tmp/ows-s3-example-{port}"
    url = "s3://microscopy/examples"
try:
    settings = AcquisitionSettings(
        root_path=f"{url}/timelapse.ome.zarr", dtype="uint16", overwrite=True,
        format=OmeZarrFormat(levels=2),
        dimensions=[Dimension(name="t", count=5, chunk_size=1, type="time"),
                    Dimension(name="y", count=256, chunk_size=128),
                    Dimension(name="x", count=256, chunk_size=128)])
    with create_stream(settings) as stream:
        for t in range(5):
            stream.append(np.full((256, 256), 100 * t, np.uint16))
    # read it back from the bucket with tensorstore's s3 driver
    bucket, _, key = settings.output_path[len("s3://"):].partition("/")
    arr = ts.open({"driver": "zarr3", "kvstore": {
        "driver": "s3", "bucket": bucket, "path": f"{key}/0/",
        "endpoint": os.environ.get("AWS_ENDPOINT_URL"),
        "aws_region": os.environ.get("AWS_REGION", "us-east-1")}}).result()
    assert [int(arr[t, 0, 0].read().result()) for t in range(5)] == [0, 100, 200, 300, 400]
    print("verified", settings.output_path, arr.shape)
finally:
    if server is not None:
        rt = os.environ["OME_WRITERS_SERVICE_RUNTIME_DIR"]
        try:  # the daemon we started for this server
            import json
            import signal
            os.kill(json.load(open(f"{rt}/daemon.json"))["pid"], signal.SIGTERM)
        except (OSError, ValueError):
            pass
        server.terminate()
