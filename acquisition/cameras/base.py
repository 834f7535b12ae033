"""The camera protocol every frame source follows, and its errors.

A camera is opened once (which also starts the stream), then ``grab()`` is called
from one thread until ``close()``. Each error says whether the stream goes on:

- :class:`GrabTimeout`: no frame within the grab timeout (no trigger, a stalled link);
- :class:`GrabFailed`: one frame was lost (an incomplete buffer); the stream goes on;
- :class:`CameraLost`: the device is gone; close it and open it again;
- :class:`EndOfStream`: a replay that does not loop has no more frames;
- :class:`CameraError` itself: the camera cannot be opened or configured as asked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

PixelFormat = Literal["Mono8", "Mono12"]
Trigger = Literal["free", "software", "hardware"]
BIT_DEPTH: dict[str, int] = {"Mono8": 8, "Mono12": 12}


class CameraError(RuntimeError):
    """A camera that cannot be opened, configured or read; the message says why."""


class GrabTimeout(CameraError):
    """No frame arrived within the grab timeout."""


class GrabFailed(CameraError):
    """One frame was lost (an incomplete or corrupt buffer); the stream goes on."""


class CameraLost(CameraError):
    """The device disappeared: it must be closed and opened again."""


class EndOfStream(CameraError):
    """A replay without looping has delivered its last frame."""


@dataclass(frozen=True)
class CameraConfig:
    """What the operator sets for any camera (each kind uses what applies to it).

    Attributes
    ----------
    serial : the Basler serial number (None: the first camera of the kind)
    exposure_us : exposure time in microseconds
    roi : (offset_x, offset_y, width, height) in pixels, None for the full sensor
        (or, on the emulator, the size of the streamed images)
    pixel_format : Mono8 or Mono12 (12-bit values in uint16, not MSB-aligned)
    frame_rate_hz : frames per second in free run; None streams as fast as it can
    trigger : free run, software trigger (one per grab) or hardware (Line1)
    buffer_count : the driver's frame buffers
    grab_timeout_s : how long one grab waits for a frame
    image_source : the emulator's image file or folder (cycled by name)
    """

    serial: str | None = None
    exposure_us: float = 2000.0
    roi: tuple[int, int, int, int] | None = None
    pixel_format: PixelFormat = "Mono8"
    frame_rate_hz: float | None = 90.0
    trigger: Trigger = "free"
    buffer_count: int = 16
    grab_timeout_s: float = 1.0
    image_source: Path | None = None

    def __post_init__(self) -> None:
        if self.pixel_format not in BIT_DEPTH:
            raise ValueError(f"pixel_format must be Mono8 or Mono12, got {self.pixel_format!r}")
        if self.frame_rate_hz is not None and not self.frame_rate_hz > 0:
            raise ValueError(f"frame_rate_hz must be positive, got {self.frame_rate_hz}")
        if not self.grab_timeout_s > 0:
            raise ValueError(f"grab_timeout_s must be positive, got {self.grab_timeout_s}")
        if self.buffer_count < 1:
            raise ValueError(f"buffer_count must be at least 1, got {self.buffer_count}")


@dataclass
class GrabbedFrame:
    """One frame as it left the camera.

    Attributes
    ----------
    image : (H, W) uint8 or uint16 camera counts (``bit_depth`` significant bits)
    index : the camera's frame counter (gaps are frames the camera skipped)
    grabbed_at : wall-clock time of the grab (Unix seconds)
    monotonic : ``time.monotonic()`` of the grab, for latencies
    """

    image: np.ndarray
    index: int
    bit_depth: int
    grabbed_at: float = field(default_factory=time.time)
    monotonic: float = field(default_factory=time.monotonic)


class Camera(Protocol):
    """A frame source. ``open`` starts streaming; ``close`` is idempotent."""

    kind: str

    def open(self) -> None: ...

    def grab(self) -> GrabbedFrame: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class Pacer:
    """Releases frames at a fixed rate (None: at once), without bursts after a stall."""

    def __init__(self, rate_hz: float | None) -> None:
        self.period = 1.0 / rate_hz if rate_hz else 0.0
        self._next = 0.0

    def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        elif now - self._next > self.period:
            # A stall (a slow disk) restarts the schedule instead of a catch-up burst.
            self._next = now
        self._next += self.period
