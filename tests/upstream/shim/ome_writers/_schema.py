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
# upstream's public type aliases of the compressions it accepts (we accept these and more)
TiffCompression = Literal["lzw", "none"]
ZarrCompression = Literal["blosc-zstd", "blosc-lz4", "zstd", "none"]
Compression = Literal["blosc-zstd", "blosc-lz4", "zstd", "lzw", "none"]
