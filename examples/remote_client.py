"""A client on another machine than the writer daemon: every connection encrypted (CURVE).

On the machine with the disks (the daemon's), bound to its network address:

    ome-writers-service serve --endpoint tcp://192.168.1.20:5555 --allow-remote \\
        --runtime-dir ~/ows-remote

and copy its connection file ``~/ows-remote/daemon.json`` (mode 0600: it holds the token and
the client's key pair) to the acquisition machine. There:

    python examples/remote_client.py OUT_DIR path/to/daemon.json [tcp://scope-pc:5555]

OUT_DIR is a directory on the daemon's machine (the daemon writes the files); the optional
endpoint is how this machine reaches the daemon when the file's address does not say it
(a daemon bound to tcp://0.0.0.0:5555). With no connection file, the example starts such a
daemon itself, on 127.0.0.1 with encryption forced on (``--curve``), so that it runs anywhere.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ome_writers_service import AcquisitionSettings, Dimension, create_stream

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
connection_file = Path(sys.argv[2]) if len(sys.argv) > 2 else None
endpoint = sys.argv[3] if len(sys.argv) > 3 else None
daemon = None
if connection_file is None:  # a local stand-in for the remote daemon
    rt = Path(tempfile.mkdtemp(prefix="ows-remote-"))
    daemon = subprocess.Popen([sys.executable, "-m", "ome_writers_service", "serve",
                               "--runtime-dir", str(rt), "--endpoint", "tcp://127.0.0.1:0",
                               "--curve"])
    connection_file = rt / "daemon.json"
    while not connection_file.exists() and daemon.poll() is None:
        time.sleep(0.05)

try:
    info = json.loads(connection_file.read_text())
    print(f"daemon at {endpoint or info['endpoint']}, "
          f"{'encrypted (CURVE)' if info.get('curve') else 'PLAIN (loopback only)'}")
    settings = AcquisitionSettings(
        root_path=str(out / "remote.ome.zarr"), dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=10), Dimension(name="c", count=2),
                    Dimension(name="y", count=256, scale=0.65, unit="micrometer"),
                    Dimension(name="x", count=256, scale=0.65, unit="micrometer")])
    # inline: the pixels travel inside the (encrypted) messages, since shared memory does
    # not cross machines
    with create_stream(settings, connection_file=connection_file, endpoint=endpoint,
                       transport="inline") as stream:
        rng = np.random.default_rng(0)
        for _ in range(20):
            stream.append(rng.integers(0, 4096, (256, 256), dtype=np.uint16))
    print(f"wrote {stream.report['frames_written']} frames to {stream.paths[0]} "
          "on the daemon's machine")
finally:
    if daemon is not None:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(rt, ignore_errors=True)
