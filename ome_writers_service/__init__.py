"""Stream microscope camera frames into OME-Zarr v0.5 and OME-TIFF without blocking the camera.

Drop-in for the public ``ome_writers`` API: the same names, fields and defaults.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .schema import (  # noqa: E402
    AcquisitionSettings,
    Channel,
    Dimension,
    OmeTiffFormat,
    OmeZarrFormat,
    Plate,
    Position,
    PositionDimension,
    StandardAxis,
    dims_from_standard_axes,
)
from .stream import CoordUpdate, OMEStream, StreamView  # noqa: E402
from .api import create_stream  # noqa: E402

__all__ = [
    "AcquisitionSettings",
    "Channel",
    "CoordUpdate",
    "Dimension",
    "OMEStream",
    "OmeTiffFormat",
    "OmeZarrFormat",
    "Plate",
    "Position",
    "PositionDimension",
    "StandardAxis",
    "StreamView",
    "__version__",
    "create_stream",
    "dims_from_standard_axes",
]
