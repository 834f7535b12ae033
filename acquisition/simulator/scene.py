"""Frames of cells in flow through the flipping interferometer, with ground truth.

Each frame holds a Poisson number of cells of the requested line(s) at random
positions in the sample half (sometimes touching another cell, sometimes clipped
by the border) plus debris; its field is the illumination times the stationary
aberrations and speckle of the optics times the cells' phase, band-limited by
the objective; :func:`record_hologram` turns it into camera counts. A reference
hologram shares everything stationary and holds no cells. Frames are
independent (each is a fresh draw of the flow) and deterministic for a seed and
frame index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.ndimage as ndi

from .optics import OpticsConfig, band_limit, illumination, record_hologram, smooth_aberration
from .phantoms import check_line, render_cell


@dataclass(frozen=True)
class SceneConfig:
    """The simulated instrument and flow.

    Attributes
    ----------
    shape : (H, W) camera frame in pixels (Basler acA1300: 1024 x 1280)
    optics : the interferometer and camera
    sample_half : "left" or "right" (mirror axis x) or "top" / "bottom" (mirror y)
    cells_per_frame : Poisson mean of cells in a frame
    touching_probability : chance that a cell is placed against the previous one
    clipped_probability : chance that a cell is placed across the sample half's border
    debris_per_frame : Poisson mean of debris particles (0.5-3 um, 20-150 nm)
    aberration_rms_rad : stationary wavefront error of the optics
    speckle_rms_rad : stationary coherent noise (dust, scratches), fine grained
    frame_noise_rms_rad : coherent noise that changes from frame to frame
        (vibration, flow), unlike the stationary part it survives the reference
    illumination_nonuniformity : Gaussian beam fall-off across the frame
    aberration_drift_rad_per_frame : the wavefront error drifts by this much RMS per
        frame (a second smooth aberration, growing linearly with the frame index:
        thermal drift), so a reference recorded at frame 0 goes stale
    """

    shape: tuple[int, int] = (1024, 1280)
    optics: OpticsConfig = field(default_factory=OpticsConfig)
    sample_half: Literal["left", "right", "top", "bottom"] = "left"
    cells_per_frame: float = 4.0
    touching_probability: float = 0.06
    clipped_probability: float = 0.05
    debris_per_frame: float = 1.0
    aberration_rms_rad: float = 2.0
    speckle_rms_rad: float = 0.15
    frame_noise_rms_rad: float = 0.01
    illumination_nonuniformity: float = 0.6
    aberration_drift_rad_per_frame: float = 0.0

    def __post_init__(self) -> None:
        h, w = self.shape
        if h < 64 or w < 64:
            raise ValueError(f"shape must be at least 64x64, got {self.shape}")
        if self.sample_half not in ("left", "right", "top", "bottom"):
            raise ValueError(
                f"sample_half must be left, right, top or bottom, got {self.sample_half!r}"
            )
        axis = "x" if self.sample_half in ("left", "right") else "y"
        if self.optics.mirror_axis != axis:
            raise ValueError(
                f"sample_half {self.sample_half!r} needs optics.mirror_axis {axis!r}, "
                f"got {self.optics.mirror_axis!r}"
            )
        if self.cells_per_frame < 0 or self.debris_per_frame < 0:
            raise ValueError("cells_per_frame and debris_per_frame must not be negative")
        if self.aberration_drift_rad_per_frame < 0:
            raise ValueError(
                "aberration_drift_rad_per_frame must not be negative, got "
                f"{self.aberration_drift_rad_per_frame}"
            )

    @property
    def region(self) -> tuple[slice, slice]:
        """The sample half, in camera pixels."""
        h, w = self.shape
        return {
            "left": (slice(0, h), slice(0, w // 2)),
            "right": (slice(0, h), slice(w - w // 2, w)),
            "top": (slice(0, h // 2), slice(0, w)),
            "bottom": (slice(h - h // 2, h), slice(0, w)),
        }[self.sample_half]


@dataclass(frozen=True)
class TrueObject:
    """One object in a frame, as placed by the simulator (camera pixel coordinates)."""

    frame: int
    kind: Literal["cell", "debris"]
    line: str
    y_px: float
    x_px: float
    diameter_um: float
    peak_opd_nm: float
    dry_mass_pg: float
    touching: bool
    clipped: bool
    #: The cell's track in a continuous flow (:mod:`acquisition.simulator.flow`): the
    #: same in every frame it is seen in; -1 in independent frames.
    track: int = -1


@dataclass
class Frame:
    hologram: np.ndarray
    opd_nm: np.ndarray  # (H, W) float32, the sample-plane truth
    objects: list[TrueObject]
    defocus_um: float = 0.0  # how far out of focus the sample plane was


class FlowSimulator:
    """Generates holograms of one instrument; frames are reproducible by index."""

    def __init__(self, config: SceneConfig, lines: list[str], seed: int = 0) -> None:
        if not lines:
            raise ValueError("at least one cell line is needed")
        self.lines = [check_line(line) for line in lines]
        self.config = config
        self.seed = seed
        rng = np.random.default_rng([seed, 0x5EED])
        aberration = smooth_aberration(config.shape, rng, config.aberration_rms_rad)
        speckle = ndi.gaussian_filter(rng.normal(size=config.shape), 1.5)
        speckle *= config.speckle_rms_rad / max(float(speckle.std()), 1e-12)
        amplitude = illumination(config.shape, rng, config.illumination_nonuniformity)
        amplitude = amplitude * (1 + 0.02 * ndi.gaussian_filter(rng.normal(size=config.shape), 1.5))
        self._stationary = (amplitude * np.exp(1j * (aberration + speckle))).astype(np.complex64)
        # The drift's shape, from a generator of its own: the instrument's other draws
        # (and so every frame and reference of a seed) are those of before drift existed.
        drift_rng = np.random.default_rng([seed, 0xD21F7])
        drift = smooth_aberration(config.shape, drift_rng, 1.0)
        self._drift = (drift / max(float(drift.std()), 1e-12)).astype(np.float32)
        self.reference = record_hologram(
            band_limit(self._stationary, config.optics.cutoff_cycles_per_px), config.optics, rng
        )

    def frame(self, index: int, line: str | None = None) -> Frame:
        """Frame ``index``; its cells are of ``line`` (default: drawn from the lines)."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, index])
        opd = np.zeros(cfg.shape, dtype=np.float32)
        objects: list[TrueObject] = []
        occupied: list[tuple[float, float, float]] = []  # y, x, radius in px
        px = cfg.optics.pixel_size_um
        for _ in range(rng.poisson(cfg.cells_per_frame)):
            cell_line = line or self.lines[int(rng.integers(len(self.lines)))]
            phantom = render_cell(cell_line, rng, px)
            radius = phantom.params["extent_um"] / 2 / px
            placed = self._place(rng, radius, occupied)
            if placed is None:
                continue
            y, x, touching, clipped = placed
            self._paste(opd, phantom.opd_nm, y, x)
            occupied.append((y, x, radius))
            objects.append(
                TrueObject(
                    index,
                    "cell",
                    cell_line,
                    y,
                    x,
                    phantom.params["diameter_um"],
                    phantom.params["peak_opd_nm"],
                    phantom.params["dry_mass_pg"],
                    touching,
                    clipped,
                )
            )
        for _ in range(rng.poisson(cfg.debris_per_frame)):
            blob, diameter = self._debris(rng, px)
            placed = self._place(rng, diameter / 2 / px, occupied, allow_events=False)
            if placed is None:
                continue
            y, x, _, _ = placed
            self._paste(opd, blob, y, x)
            objects.append(
                TrueObject(
                    index,
                    "debris",
                    "debris",
                    y,
                    x,
                    diameter,
                    float(blob.max()),
                    float(blob.sum()) * 1e-3 * px**2 / 0.18,
                    False,
                    False,
                )
            )
        return Frame(self.render(opd, rng, index=index), opd, objects)

    def render(
        self,
        opd: np.ndarray,
        rng: np.random.Generator,
        defocus_um: float = 0.0,
        index: int = 0,
    ) -> np.ndarray:
        """The camera counts of frame ``index`` whose sample plane holds ``opd`` :
        (H, W) nm, ``defocus_um`` out of focus."""
        cfg = self.config
        phase = (2 * math.pi / cfg.optics.wavelength_nm) * opd
        phase += self._frame_noise(rng)
        if cfg.aberration_drift_rad_per_frame:
            phase += (cfg.aberration_drift_rad_per_frame * index) * self._drift
        phasor = np.empty(cfg.shape, dtype=np.complex64)
        phasor.real = np.cos(phase)
        phasor.imag = np.sin(phase)
        phasor *= self._stationary
        optics = cfg.optics
        field_ = band_limit(
            phasor,
            optics.cutoff_cycles_per_px,
            defocus_um,
            optics.wavelength_nm,
            optics.pixel_size_um,
        )
        return record_hologram(field_, cfg.optics, rng)

    def _place(
        self,
        rng: np.random.Generator,
        radius: float,
        occupied: list[tuple[float, float, float]],
        allow_events: bool = True,
    ) -> tuple[float, float, bool, bool] | None:
        """A position in the sample half: free, touching the last cell, or clipped."""
        cfg = self.config
        rows, cols = cfg.region
        y0, y1 = rows.start, rows.stop
        x0, x1 = cols.start, cols.stop
        if 2 * (radius + 8) >= min(y1 - y0, x1 - x0):
            return None  # the object does not fit in this sample region
        if allow_events and occupied and rng.random() < cfg.touching_probability:
            oy, ox, oradius = occupied[-1]
            phi = rng.uniform(0, 2 * math.pi)
            y = oy + (oradius + radius) * 0.97 * math.sin(phi)
            x = ox + (oradius + radius) * 0.97 * math.cos(phi)
            if y0 + radius < y < y1 - radius and x0 + radius < x < x1 - radius:
                return y, x, True, False
        if allow_events and rng.random() < cfg.clipped_probability:
            side = int(rng.integers(4))
            y = rng.uniform(y0 + radius, y1 - radius)
            x = rng.uniform(x0 + radius, x1 - radius)
            y, x = [
                (y0 + radius * 0.3, x),
                (y1 - radius * 0.3, x),
                (y, x0 + radius * 0.3),
                (y, x1 - radius * 0.3),
            ][side]
            return y, x, False, True
        margin = radius + 8
        for _ in range(50):
            y = rng.uniform(y0 + margin, y1 - margin)
            x = rng.uniform(x0 + margin, x1 - margin)
            if all(math.hypot(y - oy, x - ox) > radius + r + 12 for oy, ox, r in occupied):
                return y, x, False, False
        return None

    def _frame_noise(self, rng: np.random.Generator) -> np.ndarray:
        """Smooth coherent noise of this frame, radians: drawn on a 4x coarser grid
        (its correlation length is several pixels anyway) and interpolated."""
        cfg = self.config
        h, w = cfg.shape
        coarse = ndi.gaussian_filter(rng.standard_normal((h // 4 + 1, w // 4 + 1)), 0.75)
        noise = ndi.zoom(coarse.astype(np.float32), 4, order=1)[:h, :w]
        noise *= cfg.frame_noise_rms_rad / max(float(noise.std()), 1e-12)
        return noise

    @staticmethod
    def _paste(opd: np.ndarray, patch: np.ndarray, y: float, x: float) -> None:
        """Add ``patch`` centred at (y, x), sub-pixel shifted, cut at the frame's edge."""
        s = patch.shape[0]
        iy, ix = math.floor(y), math.floor(x)
        shifted = ndi.shift(patch, (y - iy, x - ix), order=1, mode="constant")
        top, left = iy - s // 2, ix - s // 2
        h, w = opd.shape
        ys, xs = max(top, 0), max(left, 0)
        ye, xe = min(top + s, h), min(left + s, w)
        if ye <= ys or xe <= xs:
            return
        opd[ys:ye, xs:xe] += shifted[ys - top : ye - top, xs - left : xe - left]

    @staticmethod
    def _debris(rng: np.random.Generator, px: float) -> tuple[np.ndarray, float]:
        """A small irregular particle: 0.5-3 um, 20-150 nm."""
        diameter = rng.uniform(0.5, 3.0)
        size = math.ceil((diameter + 2) / px) | 1
        c = (np.arange(size) - (size - 1) / 2) * px
        r = np.hypot(c[:, None] * rng.uniform(0.6, 1.4), c[None, :])
        blob = np.clip(1 - (r / (diameter / 2)) ** 2, 0, None) * rng.uniform(20, 150)
        return ndi.gaussian_filter(blob, 0.25 / px), diameter
