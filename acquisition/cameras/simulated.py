"""The instrument simulator as a camera, for frame rates above the emulator's.

Rendering one 1024x1280 frame takes about 0.14 s, far slower than a camera, so
the camera renders a pool of distinct frames when it opens and cycles through it
at the set rate. The pool is a continuous flow that loops cleanly (cells cross the
field over several frames; :func:`looping_flow`), or, without ``flow``, a fresh
draw per frame (its own cells and noise); frames repeat with period ``pool_frames``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from ..simulator.flow import FlowConfig, looping_flow
from ..simulator.scene import FlowSimulator, SceneConfig
from .base import GrabbedFrame, Pacer

logger = logging.getLogger(__name__)


class SimulatedCamera:
    """Simulated holograms of ``lines`` (``kind="simulator"``).

    Attributes
    ----------
    reference : the cell-free hologram of the same instrument (for the reconstructor)
    cells_per_frame : the true number of cells (not debris) in each pooled frame
    """

    kind = "simulator"

    def __init__(
        self,
        lines: list[str],
        scene: SceneConfig | None = None,
        rate_hz: float | None = 90.0,
        pool_frames: int = 32,
        seed: int = 0,
        flow: FlowConfig | None = None,
    ) -> None:
        if pool_frames < 1:
            raise ValueError(f"pool_frames must be at least 1, got {pool_frames}")
        self.scene = scene or SceneConfig()
        self.lines = lines
        self.rate_hz = rate_hz
        self.pool_frames = pool_frames
        self.seed = seed
        self.flow = flow
        self._simulator = FlowSimulator(self.scene, lines, seed=seed)
        self.reference: np.ndarray = self._simulator.reference
        self.bit_depth = self.scene.optics.bit_depth
        self._pool: list[np.ndarray] = []
        self.cells_per_frame: list[int] = []
        self._count = 0
        self._pacer = Pacer(rate_hz)

    def open(self) -> None:
        if not self._pool:
            start = time.perf_counter()
            frames = (
                looping_flow(self._simulator, self.flow, self.pool_frames, self.seed)
                if self.flow is not None
                else (self._simulator.frame(i) for i in range(self.pool_frames))
            )
            for frame in frames:
                self._pool.append(frame.hologram)
                self.cells_per_frame.append(sum(o.kind == "cell" for o in frame.objects))
            seconds = time.perf_counter() - start
            shape = "x".join(map(str, self.scene.shape))
            logger.info("simulator: %d frames of %s in %.1f s", self.pool_frames, shape, seconds)
        self._pacer = Pacer(self.rate_hz)

    def grab(self) -> GrabbedFrame:
        image = self._pool[self._count % len(self._pool)]
        self._pacer.wait()
        self._count += 1
        return GrabbedFrame(image, self._count, self.bit_depth, time.time(), time.monotonic())

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        h, w = self.scene.shape
        return {
            "kind": self.kind,
            "lines": self.lines,
            "width": w,
            "height": h,
            "rate_hz": self.rate_hz,
            "pool_frames": self.pool_frames,
            "seed": self.seed,
            "flow": asdict(self.flow) if self.flow is not None else None,
        }
