"""The camera the settings ask for, and the acquisition runner around it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from acquisition.backend import cpu_count, get_backend
from acquisition.cameras import (
    BaslerCamera,
    Camera,
    CameraConfig,
    CameraError,
    ReplayCamera,
    SimulatedCamera,
)
from acquisition.io import HOLOGRAM_SUFFIXES, read_hologram
from acquisition.simulator.phantoms import parse_lines

from .pipeline import AcquisitionRunner, ProcessingConfig
from .settings import Settings

if TYPE_CHECKING:
    from .state import ServiceState

logger = logging.getLogger(__name__)


def _lines(settings: Settings) -> list[str]:
    return parse_lines(settings.simulated_lines)  # checked when the settings were read


def _read_reference(path: Path, shift: int = 0) -> np.ndarray:
    try:
        frame = read_hologram(path).frames[0]
    except ValueError as exc:
        raise CameraError(f"reference hologram: {exc}") from None
    return frame >> shift if shift else frame


def camera_config(settings: Settings, image_source: Path | None = None) -> CameraConfig:
    return CameraConfig(
        serial=settings.camera_serial,
        exposure_us=settings.exposure_us,
        roi=settings.roi,
        pixel_format=settings.pixel_format,
        frame_rate_hz=settings.frame_rate_hz or None,
        trigger=settings.trigger,
        buffer_count=settings.buffer_count,
        grab_timeout_s=settings.grab_timeout_s,
        image_source=image_source,
    )


def make_camera(settings: Settings) -> tuple[Camera, np.ndarray | None]:
    """The configured camera and the cell-free reference hologram to reconstruct with
    (the settings' ``reference`` when set, else the one the source provides, if any)."""
    kind = settings.camera
    reference = _read_reference(settings.reference) if settings.reference else None
    rate = settings.frame_rate_hz or None
    camera: Camera
    if kind == "emulator":
        from acquisition.cameras.emulator import prepare_emulator_images
        from acquisition.simulator.scene import SceneConfig

        scene = SceneConfig()
        if settings.pixel_format == "Mono12":
            from dataclasses import replace

            scene = replace(scene, optics=replace(scene.optics, bit_depth=12))
        images = prepare_emulator_images(
            settings.emulator_images, _lines(settings), settings.emulator_frames, scene=scene
        )
        camera = BaslerCamera(camera_config(settings, images.frames), kind="emulator")
        if reference is None:
            # 12-bit frames are stored MSB-aligned; the camera delivers them unshifted.
            shift = 4 if settings.pixel_format == "Mono12" else 0
            reference = _read_reference(images.reference, shift)
    elif kind == "basler":
        camera = BaslerCamera(camera_config(settings), kind="basler")
    elif kind == "simulator":
        simulated = SimulatedCamera(
            _lines(settings), rate_hz=rate, pool_frames=settings.simulator_pool_frames
        )
        camera = simulated
        if reference is None:
            reference = simulated.reference
    elif kind.startswith("replay:"):
        path = Path(kind.removeprefix("replay:"))
        camera = ReplayCamera(path, rate_hz=rate, loop=settings.replay_loop)
        if reference is None and path.is_dir():
            found = [
                p
                for p in sorted(path.iterdir())
                if p.stem.lower() == "reference" and p.suffix.lower() in HOLOGRAM_SUFFIXES
            ]
            if found:
                reference = _read_reference(found[0])
    else:
        raise CameraError(f"unknown camera {kind!r}")
    return camera, reference


def build_runner(state: ServiceState) -> AcquisitionRunner:
    settings = state.settings
    workers = settings.pipeline_workers
    get_backend(settings.array_backend)  # logs the backend the workers will use
    processing = ProcessingConfig(
        settings.reconstruction_config(),
        settings.segmentation_config(),
        backend=settings.array_backend,
        # Each worker is a process of its own: share the cores rather than oversubscribe.
        fft_workers=max(1, cpu_count() // workers),
        processes=settings.worker_processes,
    )
    logger.info(
        "camera loop: %s, %d %s, queue of %d frames",
        settings.camera,
        workers,
        "worker processes" if settings.worker_processes else "worker threads",
        settings.frame_queue,
    )
    return AcquisitionRunner(
        settings.camera,
        lambda: make_camera(settings),
        processing,
        state,
        state.metrics,
        workers=workers,
        queue_size=settings.frame_queue,
        reconnect_max_s=settings.reconnect_max_s,
        trigger=settings.trigger,
    )
