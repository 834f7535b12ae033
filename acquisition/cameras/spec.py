"""Which camera to build, as one typed value, and the builder.

The service's settings parse ``--camera emulator|basler|simulator|replay:PATH`` and
the camera options into a :class:`CameraSpec`; :func:`build_camera` turns it into a
:class:`Camera` and the cell-free reference hologram to reconstruct with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from ..io import HOLOGRAM_SUFFIXES, read_camera_tiff, read_hologram
from ..simulator.flow import FlowConfig
from .base import BIT_DEPTH, Camera, CameraConfig, CameraError

CameraKind = Literal["emulator", "basler", "simulator", "replay"]
CAMERA_KINDS: tuple[str, ...] = ("emulator", "basler", "simulator", "replay")


@dataclass(frozen=True)
class CameraSpec:
    """A camera to build.

    Attributes
    ----------
    kind : emulator (pylon's camera emulator streaming simulated holograms), basler,
        simulator (rendered in process) or replay (recorded frames)
    config : what the operator sets for any camera
    replay_path : the folder or stack file a replay reads
    replay_loop : a replay starts again after its last frame
    reference : a hologram recorded without cells; when None the source's own is
        used (the emulator's and simulator's, a replay folder's ``reference.*``)
    simulated_lines : the cell lines of the emulator's and the simulator's holograms
    emulator_images : where the emulator's holograms are rendered (once)
    emulator_frames : how many holograms the emulator cycles
    simulator_pool_frames : frames the simulator renders before it streams
    simulated_flow : the emulator's and simulator's cells flow across the field
        (continuous flow, looped cleanly); None: every frame a fresh draw
    """

    kind: CameraKind
    config: CameraConfig = field(default_factory=CameraConfig)
    replay_path: Path | None = None
    replay_loop: bool = True
    reference: Path | None = None
    simulated_lines: tuple[str, ...] = ("sw480", "sw620")
    emulator_images: Path = Path("data/emulator")
    emulator_frames: int = 48
    simulator_pool_frames: int = 32
    simulated_flow: FlowConfig | None = None

    def __post_init__(self) -> None:
        if self.kind not in CAMERA_KINDS:
            raise ValueError(f"kind must be one of {', '.join(CAMERA_KINDS)}, got {self.kind!r}")
        if self.kind == "replay" and self.replay_path is None:
            raise ValueError("a replay camera needs replay_path (replay:PATH)")

    @property
    def name(self) -> str:
        """The kind as the command line writes it (``replay:PATH`` for a replay)."""
        return f"replay:{self.replay_path}" if self.kind == "replay" else self.kind


def parse_camera(camera: str) -> tuple[CameraKind, Path | None]:
    """``emulator``, ``basler``, ``simulator`` or ``replay:PATH`` as (kind, replay path)."""
    if camera.startswith("replay:") and len(camera) > len("replay:"):
        return "replay", Path(camera.removeprefix("replay:"))
    if camera == "emulator":
        return "emulator", None
    if camera == "basler":
        return "basler", None
    if camera == "simulator":
        return "simulator", None
    raise ValueError(
        f"camera must be one of emulator, basler, simulator or replay:PATH, got {camera!r}"
    )


def _reference(path: Path, bit_depth: int | None = None) -> np.ndarray:
    try:
        if bit_depth is not None:
            return read_camera_tiff(path, bit_depth)
        return read_hologram(path).frames[0]
    except ValueError as exc:
        raise CameraError(f"reference hologram: {exc}") from None


def _folder_reference(folder: Path) -> np.ndarray | None:
    found = [
        p
        for p in sorted(folder.iterdir())
        if p.stem.lower() == "reference" and p.suffix.lower() in HOLOGRAM_SUFFIXES
    ]
    return _reference(found[0]) if found else None


def build_camera(spec: CameraSpec) -> tuple[Camera, np.ndarray | None]:
    """The camera of ``spec`` and the reference hologram to reconstruct with: the
    spec's ``reference`` when set, else the one its source provides, if any.

    Raises :class:`CameraError` when a reference cannot be read.
    """
    reference = _reference(spec.reference) if spec.reference else None
    rate = spec.config.frame_rate_hz
    lines = list(spec.simulated_lines)
    camera: Camera
    if spec.kind == "emulator":
        from ..simulator.scene import SceneConfig
        from .basler import BaslerCamera
        from .emulator import prepare_emulator_images

        scene = SceneConfig()
        depth = BIT_DEPTH[spec.config.pixel_format]
        scene = replace(scene, optics=replace(scene.optics, bit_depth=depth))
        try:
            images = prepare_emulator_images(
                spec.emulator_images,
                lines,
                spec.emulator_frames,
                scene=scene,
                flow=spec.simulated_flow,
            )
        except ValueError as exc:  # too few frames for the flow
            raise CameraError(f"emulator: {exc}") from None
        camera = BaslerCamera(replace(spec.config, image_source=images.frames), kind="emulator")
        if reference is None:
            reference = _reference(images.reference, depth)
    elif spec.kind == "basler":
        from .basler import BaslerCamera

        camera = BaslerCamera(spec.config, kind="basler")
    elif spec.kind == "simulator":
        from .simulated import SimulatedCamera

        simulated = SimulatedCamera(
            lines, rate_hz=rate, pool_frames=spec.simulator_pool_frames, flow=spec.simulated_flow
        )
        camera = simulated
        if reference is None:
            reference = simulated.reference
    else:
        from .replay import ReplayCamera

        assert spec.replay_path is not None
        camera = ReplayCamera(spec.replay_path, rate_hz=rate, loop=spec.replay_loop)
        if reference is None and spec.replay_path.is_dir():
            reference = _folder_reference(spec.replay_path)
    return camera, reference
