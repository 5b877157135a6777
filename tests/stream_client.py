"""A client process for the service tests: streams deterministic frames to a daemon.

    python stream_client.py SETTINGS_JSON ENDPOINT TOKEN SEED [--transport inline] [--claim]

Frame i is ``frame_pixels(seed, i, shape, dtype)``; the test regenerates the same pixels to
compare what the daemon wrote. Prints the final report as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from service_util import frame_pixels  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("settings")
    ap.add_argument("endpoint")
    ap.add_argument("token")
    ap.add_argument("seed", type=int)
    ap.add_argument("--transport", default="shm")
    ap.add_argument("--claim", action="store_true")
    ap.add_argument("--hang-after", type=int, default=None,
                    help="after this many frames print 'ready' and wait to be killed")
    ap.add_argument("--foreign-pidns", action="store_true",
                    help="pretend to live in another pid namespace (heartbeat liveness)")
    a = ap.parse_args()
    if a.foreign_pidns:
        import ome_writers_service.client as client

        client._pid_namespace = lambda: "pid:[elsewhere]"

    from ome_writers_service import AcquisitionSettings, create_stream

    settings = AcquisitionSettings.model_validate_json(open(a.settings).read())
    shape, dtype = settings.frame_shape, np.dtype(settings.dtype)
    buf = np.empty(shape, dtype)
    with create_stream(settings, endpoint=a.endpoint, token=a.token,
                       transport=a.transport) as stream:
        for i in range(settings.num_frames):
            if i == a.hang_after:
                print("ready", flush=True)
                import time

                time.sleep(3600)
            if a.claim:
                with stream.claim() as slot:
                    slot[...] = frame_pixels(a.seed, i, shape, dtype)
            else:
                buf[...] = frame_pixels(a.seed, i, shape, dtype)
                stream.append(buf, frame_metadata={"delta_t": i * 0.5})
                buf[...] = 0  # reuse the buffer at once, as a camera would
        report = stream.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
