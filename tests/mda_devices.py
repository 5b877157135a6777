"""Pure-Python devices for a real pymmcore-plus MDA on UniMMCore (no device adapters).

The camera stamps each frame with what the microscope was doing when it was snapped, so a
test can check every frame at the place it was stored: pixel [0, 0] the frame counter,
[0, 1] the filter wheel's state (the channel), [0, 2] z in tenths of a µm, [0, 3] x and
[0, 4] y in µm; the rest of the frame is a pattern of the counter.
"""

from __future__ import annotations

import numpy as np
from pymmcore_plus.experimental.unicore import (SimpleCameraDevice, StageDevice, StateDevice,
                                                UniMMCore, XYStageDevice)

HEIGHT, WIDTH = 24, 40
CHANNELS = ("DAPI", "FITC")
PIXEL_SIZE_UM = 0.5


class FocusStage(StageDevice):
    def __init__(self) -> None:
        super().__init__()
        self.z = 0.0

    def set_position_um(self, val: float) -> None:
        self.z = float(val)

    def get_position_um(self) -> float:
        return self.z

    def set_origin(self) -> None:
        self.z = 0.0

    def home(self) -> None:
        self.z = 0.0

    def stop(self) -> None:
        pass


class Stage(XYStageDevice):
    def __init__(self) -> None:
        super().__init__()
        self.xy = (0.0, 0.0)

    def set_position_um(self, x: float, y: float) -> None:
        self.xy = (float(x), float(y))

    def get_position_um(self) -> tuple[float, float]:
        return self.xy

    def set_origin_x(self) -> None:
        pass

    def set_origin_y(self) -> None:
        pass

    def home(self) -> None:
        pass

    def stop(self) -> None:
        pass


class FilterWheel(StateDevice):
    def __init__(self) -> None:
        super().__init__(dict(enumerate(CHANNELS)))
        self.state = 0

    def get_state(self) -> int:
        return self.state

    def set_state(self, position: int) -> None:
        self.state = int(position)


class StampCamera(SimpleCameraDevice):
    def __init__(self, focus: FocusStage, stage: Stage, wheel: FilterWheel) -> None:
        super().__init__()
        self.count = 0
        self._focus, self._stage, self._wheel = focus, stage, wheel

    def sensor_shape(self) -> tuple[int, int]:
        return (HEIGHT, WIDTH)

    def dtype(self):
        return np.uint16

    def get_exposure(self) -> float:
        return 10.0

    def set_exposure(self, exposure: float) -> None:
        pass

    def snap(self, buffer: np.ndarray) -> dict:
        buffer[:] = pattern(self.count)
        buffer[0, :5] = stamp(self.count, self._wheel.state, self._focus.z, *self._stage.xy)
        self.count += 1
        return {}


def stamp(count: int, channel: int, z: float, x: float, y: float) -> list[int]:
    return [count, channel, round(z * 10), round(x), round(y)]


def pattern(count: int) -> np.ndarray:
    return ((np.arange(HEIGHT * WIDTH, dtype=np.uint32).reshape(HEIGHT, WIDTH) * 7 + count)
            % 65521).astype(np.uint16)


def make_core() -> tuple[UniMMCore, StampCamera]:
    core = UniMMCore()
    focus, stage, wheel = FocusStage(), Stage(), FilterWheel()
    camera = StampCamera(focus, stage, wheel)
    for label, device in (("Camera", camera), ("Z", focus), ("XY", stage), ("Wheel", wheel)):
        core.loadPyDevice(label, device)
    core.initializeAllDevices()
    core.setCameraDevice("Camera")
    core.setFocusDevice("Z")
    core.setXYStageDevice("XY")
    for name in CHANNELS:
        core.defineConfig("Channel", name, "Wheel", "Label", name)
    core.setChannelGroup("Channel")
    core.setAutoShutter(False)  # no shutter device
    # a pixel size the C++ core can match (its own AutoShutter property)
    core.definePixelSizeConfig("res", "Core", "AutoShutter", "0")
    core.setPixelSizeUm("res", PIXEL_SIZE_UM)
    return core, camera
