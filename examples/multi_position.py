"""Three stage positions visited every time point: one image per position.

    python examples/multi_position.py [OUT_DIR]
"""

import sys
from pathlib import Path

import numpy as np

from ome_writers_service import (AcquisitionSettings, Dimension, Position, PositionDimension,
                                 create_stream)

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/examples")
settings = AcquisitionSettings(
    root_path=str(out / "positions.ome.tiff"), dtype="uint16", overwrite=True,
    dimensions=[
        Dimension(name="t", count=4, type="time", scale=60, unit="s"),
        PositionDimension(coords=[Position(name="left", x_coord=-500, y_coord=0),
                                  Position(name="center", x_coord=0, y_coord=0),
                                  Position(name="right", x_coord=500, y_coord=0)]),
        Dimension(name="c", coords=["brightfield", "GFP"]),
        Dimension(name="y", count=128, scale=0.325, unit="um"),
        Dimension(name="x", count=128, scale=0.325, unit="um"),
    ],
)
with create_stream(settings) as stream:
    for i in range(settings.num_frames):
        stream.append(np.full((128, 128), i, np.uint16))
# the directory positions/ holds positions_p000.ome.tiff ... (one file per position), each
# with the OME-XML of all three images (multi_file_metadata="redundant", the default)
print("wrote", stream.report["paths"])
