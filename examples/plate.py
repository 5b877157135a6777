"""A 2x3-well plate, two fields per well, two channels: an OME-Zarr HCS plate.

    python examples/plate.py [OUT_DIR]
"""

import sys
from pathlib import Path

import numpy as np

from ome_writers_service import (AcquisitionSettings, Dimension, Plate, Position,
                                 PositionDimension, create_stream)

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/examples")
fields = [Position(name=f"{row}{col}-{f}", plate_row=row, plate_column=col)
          for row in "AB" for col in ("1", "2", "3") for f in range(2)]
settings = AcquisitionSettings(
    root_path=str(out / "plate.ome.zarr"), dtype="uint16", overwrite=True,
    plate=Plate(name="drug screen", row_names=["A", "B"], column_names=["1", "2", "3"]),
    dimensions=[PositionDimension(coords=fields),
                Dimension(name="c", coords=["DAPI", "Cy5"]),
                Dimension(name="y", count=96), Dimension(name="x", count=96)],
)
with create_stream(settings) as stream:
    for i in range(settings.num_frames):
        stream.append(np.full((96, 96), i, np.uint16))
print("wrote", settings.root_path, "wells A/1 .. B/3, fields 0-1")
