"""`create_stream`: the one entry point that picks an in-process or a daemon-backed stream."""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping

from .schema import AcquisitionSettings, ScratchFormat
from .stream import OMEStream


def create_stream(
    settings: AcquisitionSettings | Mapping[str, Any],
    *,
    endpoint: str | None = None,
    token: str | None = None,
    transport: Literal["shm", "inline"] = "shm",
    in_process: bool = False,
    runtime_dir: str | os.PathLike | None = None,
    s3_endpoint: str | None = None,
    connection_file: str | os.PathLike | None = None,
):
    """Open a stream for ``settings``.

    By default frames go to the local writer daemon through shared memory, and a daemon is
    started when none runs. ``endpoint`` (e.g. ``"tcp://127.0.0.1:5555"``) uses a running
    daemon; its token comes from ``token``, ``$OME_WRITERS_SERVICE_TOKEN`` or the local
    connection file. ``transport="inline"`` sends pixels inside the messages (no shared
    memory: another machine or a container without shared IPC). ``in_process=True`` writes
    from this process instead, as ome-writers does. A scratch stream (`ScratchFormat`:
    arrays in this process's memory) always runs in process. ``connection_file``: a copy of
    a daemon's ``daemon.json`` (endpoint, token and, for a daemon reachable from the network,
    its CURVE keys: connections beyond loopback are always encrypted).

    An ``s3://bucket/prefix/name.ome.zarr`` root_path is written to that bucket: at
    ``s3_endpoint`` (an S3-compatible store, e.g. ``"http://minio.lab:9000"``), else at
    ``$AWS_ENDPOINT_URL``, else AWS; credentials and region come from the writing process's
    environment (the daemon's: one started on demand inherits this process's).
    """
    if not isinstance(settings, AcquisitionSettings):
        settings = AcquisitionSettings.model_validate(settings)
    if in_process or isinstance(settings.format, ScratchFormat):
        return OMEStream(settings, s3_endpoint=s3_endpoint)
    from .client import connect_stream

    return connect_stream(settings, endpoint=endpoint, token=token, transport=transport,
                          runtime_dir_path=runtime_dir, s3_endpoint=s3_endpoint,
                          connection_file=connection_file)
