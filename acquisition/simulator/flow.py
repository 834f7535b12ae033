"""Continuous flow: cells that enter the sample half, cross it over several frames
and leave, with the ground truth of which cell is where.

Unlike :meth:`FlowSimulator.frame` (every frame a fresh draw), a
:class:`ContinuousFlow` keeps its cells between frames: they enter at the upstream
edge of the sample half at ``cells_per_second`` (Poisson), each in a lane across the
channel, and move downstream at the speed of a parabolic (Poiseuille) profile, from
``wall_speed_fraction`` of the peak at the channel's walls to ``flow_speed_um_s`` in
its centre; a faster cell overtakes a slower one in another lane. A cell follows
another in an overlapping lane only once that one has cleared the entrance and only
if it is not faster (it would catch it up): cells never overlap. Everything
stationary (optics, reference) is the simulator's; frames are deterministic for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from .phantoms import render_cell
from .scene import FlowSimulator, Frame, TrueObject

#: Larger than any simulated cell, um (how far past the field a cell may reach).
MAX_CELL_UM = 40.0
#: A cell enters a lane behind another once that one is this far clear of the
#: entrance, pixels (and only if it is not faster: it would catch it up).
LANE_GAP_PX = 8


@dataclass(frozen=True)
class FlowConfig:
    """The flow.

    Attributes
    ----------
    flow_speed_um_s : speed in the channel's centre, um/s
    frame_rate_hz : the camera's frame rate
    cells_per_second : mean rate of cells entering the field
    axis : the flow's axis in camera pixels ("y": along rows, "x": along columns)
    direction : +1 (towards larger coordinates) or -1
    wall_speed_fraction : speed at the channel's walls as a fraction of the peak
    rotation_deg_per_frame : cells turn slowly as they flow, each at a rate drawn
        uniformly within plus or minus this (0: they do not)
    focus_drift_um : the focus drifts slowly, sinusoidally, by up to this much either
        side of the sample plane (0: always in focus)
    focus_period_frames : the period of that drift
    """

    flow_speed_um_s: float = 2000.0
    frame_rate_hz: float = 90.0
    cells_per_second: float = 40.0
    axis: Literal["x", "y"] = "y"
    direction: Literal[1, -1] = 1
    wall_speed_fraction: float = 0.25
    rotation_deg_per_frame: float = 0.0
    focus_drift_um: float = 0.0
    focus_period_frames: float = 300.0

    def __post_init__(self) -> None:
        for name in ("flow_speed_um_s", "frame_rate_hz"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.cells_per_second < 0:
            raise ValueError(f"cells_per_second must be >= 0, got {self.cells_per_second}")
        if self.axis not in ("x", "y") or self.direction not in (1, -1):
            raise ValueError(f"axis must be x or y and direction +1 or -1, got {self}")
        if not 0 < self.wall_speed_fraction <= 1:
            raise ValueError(
                f"wall_speed_fraction must be in (0, 1], got {self.wall_speed_fraction}"
            )
        for name in ("rotation_deg_per_frame", "focus_drift_um"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.focus_period_frames > 0:
            raise ValueError(
                f"focus_period_frames must be positive, got {self.focus_period_frames}"
            )


@dataclass
class _Cell:
    track: int
    line: str
    opd_nm: np.ndarray
    radius_px: float
    lateral_px: float  # across the flow, in the sample region
    along_px: float  # downstream distance from the upstream edge of the region
    speed_px: float  # per frame
    params: dict[str, float]
    spin_deg: float = 0.0  # per frame
    angle_deg: float = 0.0


class ContinuousFlow:
    """Frames of one continuous flow through ``simulator``'s instrument.

    ``frame()`` returns the next frame (0, 1, ...); its objects carry the ``track``
    of their cell (1, 2, ...), the same in every frame the cell is seen in. From frame
    ``drain_from`` on (if set) no cell enters: the field empties, as a sample ends.
    """

    def __init__(
        self,
        simulator: FlowSimulator,
        config: FlowConfig,
        seed: int = 0,
        drain_from: int | None = None,
    ) -> None:
        self.simulator = simulator
        self.config = config
        self.drain_from = drain_from
        self._rng = np.random.default_rng([simulator.seed, seed, 0xF10])
        # Spins from a stream of their own: turning cells flow where still ones would.
        self._spin_rng = np.random.default_rng([simulator.seed, seed, 0x5B1])
        self._cells: list[_Cell] = []
        self._tracks = 0
        self._index = -1  # frames count from 0, as FlowSimulator.frame's do
        rows, cols = simulator.config.region
        lengths = {"y": rows.stop - rows.start, "x": cols.stop - cols.start}
        self.length_px = lengths[config.axis]
        self.width_px = lengths["x" if config.axis == "y" else "y"]
        pixel = simulator.config.optics.pixel_size_um
        self.peak_px = config.flow_speed_um_s / config.frame_rate_hz / pixel

    def _speed(self, lateral_px: float) -> float:
        u = 2 * lateral_px / self.width_px - 1
        return self.peak_px * max(1 - u * u, self.config.wall_speed_fraction)

    def _enter(self) -> None:
        cfg, rng = self.config, self._rng
        pixel = self.simulator.config.optics.pixel_size_um
        for _ in range(rng.poisson(cfg.cells_per_second / cfg.frame_rate_hz)):
            line = self.simulator.lines[int(rng.integers(len(self.simulator.lines)))]
            phantom = render_cell(line, rng, pixel)
            radius = phantom.params["extent_um"] / 2 / pixel
            lateral = rng.uniform(radius + 8, self.width_px - radius - 8)
            speed = self._speed(lateral)
            if any(
                abs(c.lateral_px - lateral) < c.radius_px + radius  # the lanes overlap
                and (c.along_px - c.radius_px <= radius + LANE_GAP_PX or speed > c.speed_px)
                for c in self._cells
            ):
                continue  # it would overlap a cell ahead in its lane, or catch it up
            self._tracks += 1
            self._cells.append(
                _Cell(
                    self._tracks,
                    line,
                    phantom.opd_nm,
                    radius,
                    lateral,
                    -radius,  # just upstream of the field: it enters during its first move
                    speed,
                    dict(phantom.params),
                    spin_deg=float(self._spin_rng.uniform(-1, 1)) * cfg.rotation_deg_per_frame,
                )
            )

    def frame(self) -> Frame:
        """The next frame of the flow."""
        self._index += 1
        index = self._index
        for cell in self._cells:
            cell.along_px += cell.speed_px
            cell.angle_deg += cell.spin_deg
        self._cells = [c for c in self._cells if c.along_px - c.radius_px < self.length_px]
        if self.drain_from is None or index < self.drain_from:
            self._enter()
        sim = self.simulator
        cfg = sim.config
        rows, cols = cfg.region
        opd = np.zeros(cfg.shape, dtype=np.float32)
        region = opd[rows, cols]  # a view: cells never reach the reference half
        objects: list[TrueObject] = []
        for cell in self._cells:
            along = cell.along_px if self.config.direction > 0 else self.length_px - cell.along_px
            y, x = (along, cell.lateral_px) if self.config.axis == "y" else (cell.lateral_px, along)
            patch = cell.opd_nm
            if cell.angle_deg:
                patch = ndi.rotate(patch, cell.angle_deg, reshape=False, order=1, mode="constant")
            FlowSimulator._paste(region, patch, y, x)
            clipped = not cell.radius_px <= cell.along_px <= self.length_px - cell.radius_px
            objects.append(
                TrueObject(
                    index,
                    "cell",
                    cell.line,
                    y + rows.start,
                    x + cols.start,
                    cell.params["diameter_um"],
                    cell.params["peak_opd_nm"],
                    cell.params["dry_mass_pg"],
                    False,
                    clipped,
                    track=cell.track,
                )
            )
        rng = np.random.default_rng([sim.seed, 0xF10, index])
        defocus = 0.0
        if self.config.focus_drift_um:
            phase = 2 * math.pi * index / self.config.focus_period_frames
            defocus = self.config.focus_drift_um * math.sin(phase)
        return Frame(sim.render(opd, rng, defocus, index), opd, objects, defocus)

    def drain_frames(self) -> int:
        """Frames after which every cell in view has left: the slowest lane's
        crossing, the largest cell's size included."""
        slowest = self.peak_px * self.config.wall_speed_fraction
        largest = MAX_CELL_UM / self.simulator.config.optics.pixel_size_um
        return math.ceil((self.length_px + largest) / slowest) + 1

    @property
    def views_per_cell(self) -> tuple[float, float]:
        """Frames a cell is in view, (fastest lane, slowest lane)."""
        fastest = self.length_px / self.peak_px
        return fastest, fastest / self.config.wall_speed_fraction


def looping_flow(
    simulator: FlowSimulator, config: FlowConfig, frames: int, seed: int = 0
) -> Iterator[Frame]:
    """``frames`` frames (rendered one at a time as they are taken) of a flow that a
    camera can cycle without a jump: cells
    enter during the first frames only, so the field is empty again at the last
    (as at the first), and no cell vanishes or appears mid-field when it wraps.

    Raises ``ValueError`` when ``frames`` is too short for the slowest cell to cross.
    """
    probe = ContinuousFlow(simulator, config, seed)
    drain = probe.drain_frames()
    if frames < 2 * drain:
        raise ValueError(
            f"a continuous flow that loops cleanly needs at least {2 * drain} frames at "
            f"{config.flow_speed_um_s:g} um/s and {config.frame_rate_hz:g} frames/s "
            f"(the slowest cell crosses in {drain}), got {frames}"
        )
    flow = ContinuousFlow(simulator, config, seed, drain_from=frames - drain)
    return (flow.frame() for _ in range(frames))
