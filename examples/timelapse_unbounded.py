"""A time-lapse that runs until stopped: the time axis is unbounded, and the final metadata
states how many time points were taken.

    python examples/timelapse_unbounded.py [OUT_DIR]
"""

import sys
from pathlib import Path

import numpy as np

from ome_writers_service import AcquisitionSettings, Dimension, create_stream

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/examples")
settings = AcquisitionSettings(
    root_path=str(out / "timelapse.ome.zarr"), dtype="uint16", overwrite=True,
    dimensions=[Dimension(name="t", count=None, chunk_size=8, type="time", scale=5, unit="s"),
                Dimension(name="c", count=2),
                Dimension(name="y", count=128), Dimension(name="x", count=128)],
)
stream = create_stream(settings)
stream.on("coords_expanded", lambda u: None)  # e.g. update a viewer's slider range
t = 0
while t < 13:   # "until the user presses stop"
    for c in range(2):
        stream.append(np.full((128, 128), 10 * t + c, np.uint16))
    t += 1
report = stream.close()
print(f"{report['frames_written']} frames: t ends at {t}", report["paths"])
