"""Simulated holograms on disk for the pylon camera emulator to stream.

The emulator reads image files (a folder is cycled by name); uncompressed TIFF is
the fast format. 12-bit frames are stored MSB-aligned in uint16, as pylon reads
16-bit TIFF. The folder is reused while its stamp matches the request.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io import write_camera_tiff
from ..simulator.flow import FlowConfig, looping_flow
from ..simulator.scene import FlowSimulator, SceneConfig

logger = logging.getLogger(__name__)
STAMP = "emulator.json"


@dataclass(frozen=True)
class EmulatorImages:
    frames: Path  # the folder the emulator streams
    reference: Path  # the cell-free hologram, outside that folder


def prepare_emulator_images(
    folder: Path,
    lines: list[str],
    frames: int = 48,
    seed: int = 0,
    scene: SceneConfig | None = None,
    flow: FlowConfig | None = None,
) -> EmulatorImages:
    """Write ``frames`` simulated holograms of ``lines`` under ``folder`` (unless the
    same request already did) and return where they are: independent frames, or a
    continuous ``flow`` that loops cleanly (:func:`looping_flow`; ``ValueError``
    when ``frames`` is too short for it)."""
    scene = scene or SceneConfig()
    request = {
        "lines": lines,
        "frames": frames,
        "seed": seed,
        "scene": asdict(scene),
        "flow": asdict(flow) if flow is not None else None,
        "format": 1,
    }
    request = json.loads(json.dumps(request))
    out = EmulatorImages(folder / "frames", folder / "reference.tiff")
    stamp = folder / STAMP
    if stamp.is_file() and out.reference.is_file():
        try:
            if json.loads(stamp.read_text()) == request:
                return out
        except ValueError:
            pass
    start = time.perf_counter()
    logger.info(
        "rendering %d simulated holograms (%s%s) for the camera emulator in %s",
        frames,
        ",".join(lines),
        f", cells in flow at {flow.flow_speed_um_s:g} um/s" if flow else "",
        folder,
    )
    simulator = FlowSimulator(scene, lines, seed=seed)
    flowing = looping_flow(simulator, flow, frames, seed) if flow is not None else None
    if out.frames.exists():
        shutil.rmtree(out.frames)
    out.frames.mkdir(parents=True)
    stamp.unlink(missing_ok=True)
    depth = scene.optics.bit_depth
    write_camera_tiff(out.reference, simulator.reference, depth)
    for i in range(frames):
        frame = next(flowing) if flowing is not None else simulator.frame(i)
        write_camera_tiff(out.frames / f"frame_{i:05d}.tif", frame.hologram, depth)
    stamp.write_text(json.dumps(request, indent=1))
    logger.info("rendered %d holograms in %.1f s", frames, time.perf_counter() - start)
    return out
