"""Upstream's `ome_writers._stream_view.StreamView`: ours."""

from ome_writers_service.stream import StreamView  # noqa: F401
