"""Stream microscope camera frames into OME-Zarr v0.5 and OME-TIFF without blocking the camera.

Drop-in for the public ``ome_writers`` API: the same names, fields and defaults.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .schema import (  # noqa: E402
    AcquisitionSettings,
    Channel,
    Dimension,
    Instrument,
    Objective,
    OmeTiffFormat,
    OmeZarrFormat,
    Plate,
    Position,
    PositionDimension,
    ScratchFormat,
    StandardAxis,
    dims_from_standard_axes,
)
from .stream import CoordUpdate, OMEStream, StreamView  # noqa: E402
from .api import create_stream  # noqa: E402
from .useq_support import dims_from_useq, useq_to_acquisition_settings  # noqa: E402
from .metadata import dataset_info, read_frame_metadata  # noqa: E402

__all__ = [
    "AcquisitionSettings",
    "Channel",
    "CoordUpdate",
    "Dimension",
    "Instrument",
    "OMEStream",
    "Objective",
    "OmeTiffFormat",
    "OmeZarrFormat",
    "Plate",
    "Position",
    "PositionDimension",
    "ScratchFormat",
    "StandardAxis",
    "StreamView",
    "__version__",
    "create_stream",
    "dataset_info",
    "dims_from_standard_axes",
    "dims_from_useq",
    "read_frame_metadata",
    "useq_to_acquisition_settings",
]
