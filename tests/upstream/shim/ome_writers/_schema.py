"""Upstream's `ome_writers._schema` names: ours."""

from typing import Literal

from ome_writers_service.schema import (  # noqa: F401
    AcquisitionSettings,
    Channel,
    Dimension,
    OmeTiffFormat,
    OmeZarrFormat,
    Plate,
    Position,
    PositionDimension,
    ScratchFormat,
    StandardAxis,
    dims_from_standard_axes,
)

BackendName = Literal["tensorstore", "acquire-zarr", "zarr-python", "zarrs-python", "tifffile",
                      "scratch"]
