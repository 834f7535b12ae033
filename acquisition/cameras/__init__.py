"""Frame sources behind one protocol: Basler (pypylon) and its emulator, replay of
recorded frames, and the live simulator."""

from .base import (
    BIT_DEPTH,
    Camera,
    CameraConfig,
    CameraError,
    CameraLost,
    EndOfStream,
    GrabbedFrame,
    GrabFailed,
    GrabTimeout,
)
from .basler import BaslerCamera
from .replay import ReplayCamera
from .simulated import SimulatedCamera

__all__ = [
    "BIT_DEPTH",
    "BaslerCamera",
    "Camera",
    "CameraConfig",
    "CameraError",
    "CameraLost",
    "EndOfStream",
    "GrabFailed",
    "GrabTimeout",
    "GrabbedFrame",
    "ReplayCamera",
    "SimulatedCamera",
]
