"""Upstream's `ome_writers._stream` names, on our `create_stream`.

`OWS_UPSTREAM_MODE` picks the stream: "daemon" (the default daemon-backed stream, through
the daemon the test session started) or "in_process" (`create_stream(in_process=True)`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ome_writers_service as _ows
from ome_writers_service import OMEStream

__all__ = ["AVAILABLE_BACKENDS", "BACKENDS", "OMEStream", "create_stream",
           "get_format_for_backend"]


@dataclass(frozen=True)
class BackendMetadata:
    """A backend name and the format it writes (upstream's registry entry, minus the class)."""

    name: str
    format: str


#: The backends we write with, in upstream's 'auto' order.
BACKENDS = [
    BackendMetadata("tensorstore", "ome-zarr"),
    BackendMetadata("tifffile", "ome-tiff"),
    BackendMetadata("scratch", "scratch"),
]
VALID_BACKEND_NAMES = [b.name for b in BACKENDS] + ["auto"]
AVAILABLE_BACKENDS = {b.name: b for b in BACKENDS}


def get_format_for_backend(backend: str) -> str:
    if backend not in AVAILABLE_BACKENDS:
        raise ValueError(f"Unknown backend: {backend}")
    return AVAILABLE_BACKENDS[backend].format


class _HandlersBarrier:
    """What upstream's test helper wait_for_pending_callbacks() needs of upstream's private
    ``stream._callback_executor`` (submit a no-op, wait for its result: "the handlers saw
    every frame so far"), mapped onto our events thread's flush()."""

    def __init__(self, events) -> None:
        self._events = events

    def submit(self, fn):
        from concurrent.futures import Future
        self._events.flush(5.0)
        done = Future()
        done.set_result(fn())
        return done


def create_stream(settings):
    mode = os.environ.get("OWS_UPSTREAM_MODE", "daemon")
    stream = _ows.create_stream(settings, in_process=(mode == "in_process"))
    if not hasattr(stream, "_backend"):
        # upstream's test helper wait_for_frames(stream._backend) waits on upstream's own
        # backend classes and does nothing for others; a daemon-backed stream has no
        # backend in this process
        stream._backend = None
    if not hasattr(stream, "_callback_executor"):
        stream._callback_executor = _HandlersBarrier(stream._events)
    return stream
