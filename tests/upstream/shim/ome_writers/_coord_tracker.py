"""Upstream's `ome_writers._coord_tracker.CoordUpdate` (a public class): ours."""

from ome_writers_service.stream import CoordUpdate  # noqa: F401
