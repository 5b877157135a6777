"""A pymmcore-plus-style acquisition loop: settings from a useq MDASequence, one append per
event, with the event's timing and stage position as per-frame metadata.

    python examples/mda_loop.py [OUT_DIR]      (needs useq-schema)
"""

import sys
import time
from pathlib import Path

import numpy as np
import useq

from ome_writers_service import AcquisitionSettings, create_stream, useq_to_acquisition_settings

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/examples")
seq = useq.MDASequence(
    axis_order="tpcz",
    stage_positions=[useq.Position(x=0, y=0, z=10, name="cell1"),
                     useq.Position(x=150, y=80, z=10, name="cell2")],
    channels=["DAPI", "FITC"],
    z_plan={"range": 4, "step": 1},
    time_plan={"interval": 0.05, "loops": 3},
)
settings = AcquisitionSettings(
    root_path=str(out / "mda.ome.zarr"), dtype="uint16", overwrite=True,
    **useq_to_acquisition_settings(seq, image_width=256, image_height=256, pixel_size_um=0.1),
)
camera = np.random.default_rng(0)
start = time.perf_counter()
with create_stream(settings) as stream:           # the local daemon, started if needed
    for event in seq:
        frame = camera.integers(0, 4096, (256, 256), dtype=np.uint16)   # snap
        stream.append(frame, frame_metadata={
            "delta_t": time.perf_counter() - start, "exposure_time": 0.01,
            "position_x": event.x_pos, "position_y": event.y_pos, "position_z": event.z_pos,
            "channel": event.channel.config if event.channel else None})
print("wrote", stream.report["paths"])
