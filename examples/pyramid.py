"""A large-frame acquisition written with resolution levels, so that viewers (napari, Fiji,
QuPath, neuroglancer) open it fast: 4 levels in OME-Zarr and in OME-TIFF (SubIFDs).

    python examples/pyramid.py [OUT_DIR]
"""

import sys
from pathlib import Path

import numpy as np
import tifffile

from ome_writers_service import (AcquisitionSettings, Dimension, OmeTiffFormat, OmeZarrFormat,
                                 create_stream)

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/examples")
dims = [Dimension(name="t", count=3, type="time"),
        Dimension(name="c", count=2, type="channel", coords=["DAPI", "GFP"]),
        Dimension(name="y", count=512, chunk_size=128, scale=0.1, unit="um"),
        Dimension(name="x", count=512, chunk_size=128, scale=0.1, unit="um")]
yy, xx = np.mgrid[:512, :512]
for fmt, name in ((OmeZarrFormat(levels=4, downsampling="mean"), "pyramid.ome.zarr"),
                  (OmeTiffFormat(levels=4), "pyramid.ome.tiff")):
    settings = AcquisitionSettings(root_path=str(out / name), dimensions=dims, dtype="uint16",
                                   format=fmt, overwrite=True)
    with create_stream(settings) as stream:  # the daemon computes the levels
        for t in range(3):
            for c in range(2):
                stream.append(((xx + yy + 40 * t) % 256 * (c + 1)).astype(np.uint16))
    print(name, "written with", fmt.levels, "levels")

with tifffile.TiffFile(out / "pyramid.ome.tiff") as tf:
    print("OME-TIFF levels:", [level.shape for level in tf.series[0].levels])
