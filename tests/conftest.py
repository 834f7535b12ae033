"""Shared fixtures: the real holograms (see tests/realdata.py) and simulated scenes
built from an exact optical field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from acquisition.backend import ArrayBackend, get_backend
from acquisition.simulator.optics import (
    OpticsConfig,
    band_limit,
    illumination,
    record_hologram,
    smooth_aberration,
)
from tests.realdata import RealDataError, real_data_dir


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """The real holograms: $TOPGAN_REAL_DATA, ../shared/data/real, or fetched once."""
    try:
        return real_data_dir()
    except RealDataError as e:
        reason = str(e)
    pytest.fail(reason, pytrace=False)  # outside the handler: one message, no traceback


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    """Two small ONNX models, m1 and m2, under one models root."""
    from tests.models.onnx_model import write_small_model

    root = tmp_path_factory.mktemp("models")
    write_small_model(root / "m1", seed=1, name="small", version="1")
    write_small_model(root / "m2", seed=2, name="small", version="2")
    return root


@pytest.fixture(scope="session")
def backend() -> ArrayBackend:
    return get_backend("numpy")


@dataclass(frozen=True)
class Disk:
    """A round cell phantom: smoothed sphere of OPD, centre and radius in camera px."""

    y: float
    x: float
    radius: float
    peak_opd_nm: float


@dataclass
class Scene:
    """Holograms of one simulated instrument plus the exact OPD they were made from."""

    holograms: np.ndarray  # (N, H, W) uint8
    reference: np.ndarray  # (H, W) uint8, no cells
    opd_nm: np.ndarray  # (N, H, W) float64, the cells' OPD in the sample plane
    cells: list[list[Disk]]
    optics: OpticsConfig


#: Edge softness of the phantoms, camera px: real cells have no sharp rim, and the
#: objective passes only what its NA allows.
EDGE_SIGMA_PX = 8.0


def disk_opd(shape: tuple[int, int], cells: list[Disk]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    opd = np.zeros(shape)
    for c in cells:
        r2 = ((yy - c.y) ** 2 + (xx - c.x) ** 2) / c.radius**2
        opd += c.peak_opd_nm * np.sqrt(np.clip(1 - r2, 0, None))
    return ndi.gaussian_filter(opd, EDGE_SIGMA_PX)


def make_scene(
    cells_per_frame: list[list[Disk]],
    shape: tuple[int, int] = (512, 512),
    carrier: tuple[float, float] = (0.2, 0.25),
    mirror_axis: str = "x",
    seed: int = 0,
    aberration_rms_rad: float = 3.0,
    bit_depth: int = 8,
) -> Scene:
    """Flipping-interferometer holograms of ``cells_per_frame`` with a shared reference.

    The field is exact: unit-modulus cell phase times a stationary aberration and
    a non-uniform illumination, band-limited by the objective; the camera adds
    shot and read noise and quantises.
    """
    rng = np.random.default_rng(seed)
    optics = OpticsConfig(carrier=carrier, mirror_axis=mirror_axis, bit_depth=bit_depth)  # type: ignore[arg-type]
    aberration = smooth_aberration(shape, rng, aberration_rms_rad)
    amplitude = illumination(shape, rng, nonuniformity=0.6)
    bare = amplitude * np.exp(1j * aberration)
    reference = record_hologram(band_limit(bare, optics.cutoff_cycles_per_px), optics, rng)
    frames, truths = [], []
    for cells in cells_per_frame:
        opd = disk_opd(shape, cells)
        phase = 2 * math.pi * opd / optics.wavelength_nm
        field = band_limit(bare * np.exp(1j * phase), optics.cutoff_cycles_per_px)
        frames.append(record_hologram(field, optics, rng))
        truths.append(opd)
    return Scene(np.stack(frames), reference, np.stack(truths), cells_per_frame, optics)


def truth_on_map(
    truth: np.ndarray,
    maps_scale: tuple[float, float],
    origin: tuple[float, float],
    shape: tuple[int, int],
) -> np.ndarray:
    """The exact OPD sampled where the reconstruction's pixels lie (cubic spline)."""
    ys = origin[0] + np.arange(shape[0]) * maps_scale[0]
    xs = origin[1] + np.arange(shape[1]) * maps_scale[1]
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return ndi.map_coordinates(truth, [gy, gx], order=3, mode="nearest")


#: Three well separated cells in the left (sample) half of a 512x512 frame, OPD up
#: to 900 nm: well above one wavelength, so unwrapping matters.
LEFT_CELLS = [
    Disk(130.0, 120.0, 45.0, 900.0),
    Disk(300.0, 90.0, 38.0, 700.0),
    Disk(400.0, 190.0, 40.0, 800.0),
]


@pytest.fixture(scope="session")
def flipping_scene() -> Scene:
    shifted = [Disk(c.y + 10, c.x - 8, c.radius, c.peak_opd_nm) for c in LEFT_CELLS[:2]]
    return make_scene([LEFT_CELLS, shifted])


#: A frame whose objects are rejected for two reasons besides one cell kept: a pair of
#: cells pressed together (touching) and a cell cut by the frame's edge (clipped).
REJECTED_CELLS = [
    Disk(120.0, 90.0, 40.0, 800.0),
    Disk(120.0, 168.0, 40.0, 800.0),
    Disk(400.0, 4.0, 40.0, 800.0),
    Disk(400.0, 130.0, 40.0, 800.0),
]


@pytest.fixture(scope="session")
def rejecting_scene() -> Scene:
    """Two frames: :data:`REJECTED_CELLS`, then the one cell they keep alone."""
    return make_scene([REJECTED_CELLS, [REJECTED_CELLS[-1]]], seed=7)
