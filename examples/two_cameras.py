"""Two cameras streaming at once into two datasets: one daemon, one stream (and one writer
thread) per camera, so a slow disk for one does not stall the other.

    python examples/two_cameras.py [OUT_DIR]
"""

import sys
import threading
from pathlib import Path


from ome_writers_service import AcquisitionSettings, Dimension, create_stream

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/examples")


def camera(name: str, size: int, suffix: str) -> None:
    settings = AcquisitionSettings(
        root_path=str(out / f"{name}{suffix}"), dtype="uint16", overwrite=True,
        dimensions=[Dimension(name="t", count=50), Dimension(name="y", count=size),
                    Dimension(name="x", count=size)])
    with create_stream(settings) as stream:
        for i in range(50):
            with stream.claim() as slot:      # the "camera" writes straight into shared memory
                slot[...] = i
    print(name, stream.report["frames_written"], "frames written")


threads = [threading.Thread(target=camera, args=("camera1", 512, ".ome.zarr")),
           threading.Thread(target=camera, args=("camera2", 256, ".ome.tiff"))]
for t in threads:
    t.start()
for t in threads:
    t.join()
