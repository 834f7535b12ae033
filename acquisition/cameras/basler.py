"""Basler cameras through pypylon, and pylon's camera emulator.

The emulator (``PYLON_CAMEMU=1``, shipped inside the pypylon wheel) is the same
SDK path as a real camera: :class:`BaslerCamera` opens it like any device and, with
``CameraConfig.image_source`` set, makes it stream image files (a folder is cycled
by name; 16-bit TIFF is read MSB-aligned).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

from .base import (
    BIT_DEPTH,
    CameraConfig,
    CameraError,
    CameraLost,
    GrabbedFrame,
    GrabFailed,
    GrabTimeout,
)

logger = logging.getLogger(__name__)

EMULATOR_CLASS = "BaslerCamEmu"
#: pylon's TL factory is process-wide; device creation is serialised.
_PYLON_LOCK = threading.Lock()


def _pylon() -> Any:
    try:
        from pypylon import genicam, pylon
    except ImportError as exc:  # pragma: no cover - pypylon is a dependency
        raise CameraError(f"pypylon is not installed ({exc}); pip install pypylon") from None
    return pylon, genicam


def enable_emulator(count: int = 1) -> None:
    """Ask pylon for ``count`` emulated cameras. Must run before pylon's transport
    layers are first enumerated in this process (setting it later has no effect)."""
    os.environ.setdefault("PYLON_CAMEMU", str(count))


class BaslerCamera:
    """A Basler camera (``kind="basler"``) or the pylon emulator (``kind="emulator"``).

    Every grab result is released; a failed buffer raises :class:`GrabFailed`, a
    timeout :class:`GrabTimeout`, a removed device :class:`CameraLost`.
    """

    def __init__(self, config: CameraConfig, kind: Literal["basler", "emulator"] = "basler"):
        self.config = config
        self.kind: str = kind
        self.bit_depth = BIT_DEPTH[config.pixel_format]
        self._camera: Any = None
        self._described: dict[str, Any] = {"kind": kind}
        if kind == "emulator":
            enable_emulator()
            source = config.image_source
            if source is not None and not Path(source).exists():
                raise CameraError(f"emulator image source {source} does not exist")

    # -- life cycle -----------------------------------------------------------------

    def open(self) -> None:
        pylon, genicam = _pylon()
        with _PYLON_LOCK:
            try:
                device = self._create_device(pylon)
                camera = pylon.InstantCamera(device)
                camera.Open()
            except genicam.GenericException as exc:
                raise CameraError(f"cannot open the {self.kind} camera: {_one_line(exc)}") from None
        self._camera = camera
        try:
            self._configure(camera, pylon, genicam)
            camera.MaxNumBuffer.Value = self.config.buffer_count
            camera.StartGrabbing(pylon.GrabStrategy_OneByOne)
        except genicam.GenericException as exc:
            self.close()
            raise CameraError(
                f"cannot configure the {self.kind} camera: {_one_line(exc)}"
            ) from None
        except CameraError:
            self.close()
            raise
        info = camera.GetDeviceInfo()
        self._described = {
            "kind": self.kind,
            "model": info.GetModelName(),
            "serial": info.GetSerialNumber(),
            "width": int(camera.Width.Value),
            "height": int(camera.Height.Value),
            "pixel_format": str(camera.PixelFormat.Value),
            "trigger": self.config.trigger,
            "frame_rate_hz": self.config.frame_rate_hz,
            "image_source": str(self.config.image_source) if self.config.image_source else None,
        }
        logger.info("camera open: %s", self._described)

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        _, genicam = _pylon()
        try:
            if camera.IsGrabbing():
                camera.StopGrabbing()
            camera.Close()
            camera.DestroyDevice()
        except genicam.GenericException as exc:  # a removed device cannot be closed cleanly
            logger.warning("closing the camera: %s", _one_line(exc))

    def describe(self) -> dict[str, Any]:
        return dict(self._described)

    # -- grabbing -------------------------------------------------------------------

    def grab(self) -> GrabbedFrame:
        camera = self._camera
        if camera is None:
            raise CameraLost("the camera is not open")
        pylon, genicam = _pylon()
        timeout_ms = max(1, round(self.config.grab_timeout_s * 1000))
        try:
            if self.config.trigger == "software" and camera.WaitForFrameTriggerReady(
                timeout_ms, pylon.TimeoutHandling_Return
            ):
                camera.ExecuteSoftwareTrigger()
            result = camera.RetrieveResult(timeout_ms, pylon.TimeoutHandling_Return)
        except genicam.GenericException as exc:
            if camera.IsCameraDeviceRemoved():
                raise CameraLost(f"the camera was removed: {_one_line(exc)}") from None
            raise CameraLost(f"grabbing failed: {_one_line(exc)}") from None
        grabbed_at, now = time.time(), time.monotonic()
        if result is None or not result.IsValid():
            if camera.IsCameraDeviceRemoved():
                raise CameraLost("the camera was removed")
            if not camera.IsGrabbing():
                raise CameraLost("the camera stopped grabbing")
            raise GrabTimeout(f"no frame within {self.config.grab_timeout_s:g} s")
        try:
            if not result.GrabSucceeded():
                raise GrabFailed(
                    f"failed buffer: {result.GetErrorDescription()} "
                    f"(error {result.GetErrorCode():#x})"
                )
            image = result.GetArray()  # a copy: the buffer goes back to the driver
            index = int(result.GetImageNumber())
        finally:
            result.Release()
        return GrabbedFrame(image, index, self.bit_depth, grabbed_at, now)

    def force_failed_buffers(self, count: int) -> None:
        """Emulator only: make the next ``count`` grabs deliver failed buffers (the
        emulator's ``ForceFailedBuffer``), for fault tests and drills."""
        if self.kind != "emulator" or self._camera is None:
            raise CameraError("failed buffers can only be forced on an open emulator")
        self._camera.ForceFailedBufferCount.Value = count
        self._camera.ForceFailedBuffer.Execute()

    # -- helpers --------------------------------------------------------------------

    def _create_device(self, pylon: Any) -> Any:
        factory = pylon.TlFactory.GetInstance()
        devices = factory.EnumerateDevices()
        emulated = [d.GetDeviceClass() == EMULATOR_CLASS for d in devices]
        wanted = [
            d for d, emu in zip(devices, emulated, strict=True) if emu == (self.kind == "emulator")
        ]
        serial = self.config.serial
        if serial is not None:
            wanted = [d for d in wanted if d.GetSerialNumber() == serial]
        if not wanted:
            found = ", ".join(f"{d.GetModelName()} {d.GetSerialNumber()}" for d in devices)
            what = f"serial {serial}" if serial else "any serial"
            hint = " (the emulator needs PYLON_CAMEMU=1)" if self.kind == "emulator" else ""
            raise CameraError(
                f"no {self.kind} camera with {what}{hint}; found: {found or 'no devices'}"
            )
        return factory.CreateDevice(wanted[0])

    def _configure(self, camera: Any, pylon: Any, genicam: Any) -> None:
        cfg = self.config
        if self.kind == "emulator" and cfg.image_source is not None:
            camera.TestImageSelector.Value = "Off"
            camera.ImageFileMode.Value = "On"
            camera.ImageFilename.Value = str(Path(cfg.image_source).resolve())
        roi = cfg.roi
        if roi is None and self.kind == "emulator" and cfg.image_source is not None:
            height, width = _image_shape(Path(cfg.image_source))
            roi = (0, 0, width, height)
        camera.PixelFormat.Value = cfg.pixel_format
        if roi is not None:
            x, y, width, height = roi
            camera.OffsetX.Value = 0
            camera.OffsetY.Value = 0
            if width > camera.Width.Max or height > camera.Height.Max:
                raise CameraError(
                    f"ROI {width}x{height} exceeds the sensor "
                    f"({camera.Width.Max}x{camera.Height.Max})"
                )
            camera.Width.Value = width
            camera.Height.Value = height
            camera.OffsetX.Value = x
            camera.OffsetY.Value = y
        _set_float(camera, ("ExposureTime", "ExposureTimeAbs"), cfg.exposure_us, genicam)
        if cfg.trigger == "free":
            camera.TriggerMode.Value = "Off"
            if cfg.frame_rate_hz is not None:
                camera.AcquisitionFrameRateEnable.Value = True
                rate = ("AcquisitionFrameRate", "AcquisitionFrameRateAbs")
                _set_float(camera, rate, cfg.frame_rate_hz, genicam)
            else:
                camera.AcquisitionFrameRateEnable.Value = False
        else:
            camera.TriggerSelector.Value = "FrameStart"
            camera.TriggerMode.Value = "On"
            camera.TriggerSource.Value = "Software" if cfg.trigger == "software" else "Line1"


def _set_float(camera: Any, names: tuple[str, ...], value: float, genicam: Any) -> None:
    """Set the first writable feature of ``names`` (SFNC and older GigE names)."""
    for name in names:
        node = getattr(camera, name, None)
        if node is not None and genicam.IsWritable(node):
            low, high = node.Min, node.Max
            if not low <= value <= high:
                raise CameraError(
                    f"{name} {value:g} is outside the camera's range {low:g}..{high:g}"
                )
            node.Value = value
            return
    raise CameraError(f"the camera has no writable {' or '.join(names)}")


def _image_shape(source: Path) -> tuple[int, int]:
    """(H, W) of the first image the emulator will stream from ``source``."""
    from ..io import read_hologram

    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png"))
        if not files:
            raise CameraError(f"emulator image folder {source} holds no TIFF or PNG files")
        source = files[0]
    try:
        frames = read_hologram(source).frames
    except ValueError as exc:
        raise CameraError(str(exc)) from None
    return int(frames.shape[1]), int(frames.shape[2])


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
