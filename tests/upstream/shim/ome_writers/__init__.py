"""Test-only shim: ome-writers 0.3.2's public API, served by ome_writers_service.

Never installed, never shipped: `tests/upstream/runner.py` puts this directory on
PYTHONPATH only while it runs ome-writers 0.3.2's own test suite against our package. It
re-exports our public names under upstream's module layout. The few pure helper modules
upstream's tests import (`_util`, `_units`, `_frame_encoder`, `_memory`) are loaded from the
unpacked sdist at run time (`_sdist.py`); nothing of upstream's is committed here.
"""

from ome_writers_service import (
    AcquisitionSettings,
    Channel,
    CoordUpdate,
    Dimension,
    OMEStream,
    OmeTiffFormat,
    OmeZarrFormat,
    Plate,
    Position,
    PositionDimension,
    ScratchFormat,
    StandardAxis,
    dims_from_standard_axes,
    dims_from_useq,
    useq_to_acquisition_settings,
)

from ._stream import create_stream

__version__ = "0.3.2"

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
    "ScratchFormat",
    "StandardAxis",
    "__version__",
    "create_stream",
    "dims_from_standard_axes",
    "dims_from_useq",
    "useq_to_acquisition_settings",
]
