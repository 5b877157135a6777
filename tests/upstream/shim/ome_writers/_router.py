"""Upstream's `ome_writers._router.FrameRouter`: ours (same iteration: (position, index))."""

from ome_writers_service.router import FrameRouter  # noqa: F401
