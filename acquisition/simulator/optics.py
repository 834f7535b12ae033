"""Forward model of the flipping interferometer: sample-plane OPD -> camera hologram.

The sample half of the field of view carries the cells; the interferometer
mirrors the field about the frame's centre line and tilts it, so the bare half
serves as the reference beam. The camera records

    I = |E|^2 + |E_m|^2 + 2 V Re(E conj(E_m) exp(-2 pi i k.r))

with E the band-limited sample field, E_m its mirror image, k the carrier and V
the fringe visibility; then shot noise, read noise and quantisation. The +1
sideband therefore holds E conj(E_m): the cells with positive OPD in the sample
half, their ghosts with negative OPD in the mirrored half.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.fft


@dataclass(frozen=True)
class OpticsConfig:
    """Instrument parameters of the simulated flipping interferometer.

    Attributes
    ----------
    wavelength_nm : illumination wavelength (He-Ne)
    pixel_size_um : camera pixel projected into the sample plane
    numerical_aperture : objective NA; the field is band-limited to NA / lambda
    carrier : (ky, kx) of the fringes in cycles per camera pixel
    mirror_axis : "x" mirrors left-right (sample half left or right), "y" top-bottom
    visibility : fringe visibility, 0..1
    full_well_e : electrons at the brightest mean intensity (sets the shot noise)
    read_noise_e : read noise in electrons RMS
    bit_depth : 8 or 12 (12-bit frames are stored in uint16)
    """

    wavelength_nm: float = 632.8
    pixel_size_um: float = 0.12
    numerical_aperture: float = 0.5
    carrier: tuple[float, float] = (0.2, 0.25)
    mirror_axis: Literal["x", "y"] = "x"
    visibility: float = 0.8
    full_well_e: float = 10000.0
    read_noise_e: float = 10.0
    bit_depth: int = 8

    @property
    def cutoff_cycles_per_px(self) -> float:
        """The objective's coherent cut-off frequency in cycles per camera pixel."""
        return self.numerical_aperture * self.pixel_size_um * 1000.0 / self.wavelength_nm


def defocus_phase_per_um(
    shape: tuple[int, int], wavelength_nm: float, pixel_size_um: float
) -> np.ndarray:
    """The angular-spectrum propagator's phase, radians per um of defocus, at each
    frequency of an (H, W) field's FFT: 2 pi / lambda (sqrt(1 - (lambda f)^2) - 1)
    (evanescent frequencies clipped to 0). ``exp(1j * dz_um * phase)`` times the
    field's spectrum propagates it by ``dz_um``; the -1 drops the plane-wave phase
    that every frequency shares, so an empty field stays as it is."""
    h, w = shape
    frequency = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]) / pixel_size_um
    wavelength_um = wavelength_nm * 1e-3
    axial = np.sqrt(np.clip(1 - (wavelength_um * frequency) ** 2, 0, None))
    phase: np.ndarray = (2 * math.pi / wavelength_um) * (axial - 1)
    return phase


def band_limit(
    field: np.ndarray,
    cutoff_cycles_per_px: float,
    defocus_um: float = 0.0,
    wavelength_nm: float = 632.8,
    pixel_size_um: float = 0.12,
) -> np.ndarray:
    """Low-pass ``field`` : (H, W) complex with the objective's circular pupil, the
    sample ``defocus_um`` out of focus (angular-spectrum propagation over that
    distance, in the medium of ``wavelength_nm``; 0: in focus).

    Returns complex64 (single precision is ample for 8- or 12-bit holograms).
    """
    h, w = field.shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    radius = np.hypot(ky, kx)
    pupil: np.ndarray = radius <= cutoff_cycles_per_px
    if defocus_um:
        phase = defocus_um * defocus_phase_per_um((h, w), wavelength_nm, pixel_size_um)
        pupil = pupil * np.exp(1j * phase).astype(np.complex64)
    workers = os.cpu_count() or 1
    spectrum = scipy.fft.fft2(field.astype(np.complex64, copy=False), workers=workers)
    spectrum *= pupil
    return scipy.fft.ifft2(spectrum, overwrite_x=True, workers=workers)


def mirror(field: np.ndarray, axis: Literal["x", "y"]) -> np.ndarray:
    """Mirror image of ``field`` about the frame's centre line."""
    return field[:, ::-1] if axis == "x" else field[::-1, :]


def smooth_aberration(
    shape: tuple[int, int], rng: np.random.Generator, rms_rad: float
) -> np.ndarray:
    """A stationary, smooth random wavefront error (low-order modes plus ripple), radians."""
    h, w = shape
    y = np.linspace(-1, 1, h)[:, None]
    x = np.linspace(-1, 1, w)[None, :]
    modes = [x * y, x**2 - y**2, x**2 + y**2, x**3 - x * y**2, y**3 - x**2 * y]
    phase = sum(rng.normal() * m for m in modes)
    for _ in range(4):  # a few weak fringes from dust and reflections in the optics
        fy, fx = rng.uniform(-6, 6, size=2)
        phase = phase + 0.2 * rng.normal() * np.cos(
            math.pi * (fy * y + fx * x) + rng.uniform(0, 6.3)
        )
    phase = np.asarray(phase, dtype=np.float64)
    phase -= phase.mean()
    return phase * (rms_rad / max(float(phase.std()), 1e-12))


def illumination(
    shape: tuple[int, int], rng: np.random.Generator, nonuniformity: float
) -> np.ndarray:
    """Amplitude of a slightly off-centre Gaussian beam, max 1."""
    h, w = shape
    cy, cx = rng.uniform(0.4, 0.6, size=2)
    y = np.linspace(0, 1, h)[:, None] - cy
    x = np.linspace(0, 1, w)[None, :] - cx
    amp = np.exp(-(x**2 + y**2) * nonuniformity * 2)
    return amp / amp.max()


#: Fraction of the full well that unit-amplitude beams reach in full constructive
#: interference.
EXPOSURE = 0.7


def record_hologram(
    field: np.ndarray,
    config: OpticsConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Interfere ``field`` with its tilted mirror image and record it with the camera.

    Parameters
    ----------
    field : (H, W) complex ndarray
        The sample-plane field, already band-limited, amplitude at most about 1.
    config : OpticsConfig
    rng : numpy Generator for the noise

    Returns
    -------
    (H, W) ndarray of uint8 (8 bit) or uint16 (12-bit values, not shifted)
    """
    if config.bit_depth not in (8, 12):
        raise ValueError(f"bit_depth must be 8 or 12, got {config.bit_depth}")
    h, w = field.shape
    ky, kx = config.carrier
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    field = field.astype(np.complex64, copy=False)
    ref = mirror(field, config.mirror_axis)
    # exp(-2 pi i (ky y + kx x)) as an outer product of two 1-D phasors: cheap.
    fringes = np.exp(-2j * np.pi * ky * y).astype(np.complex64) * np.exp(
        -2j * np.pi * kx * x
    ).astype(np.complex64)
    intensity = (
        np.abs(field) ** 2
        + np.abs(ref) ** 2
        + (2 * config.visibility) * np.real(field * np.conj(ref) * fringes)
    )
    # A fixed exposure, whatever the frame holds (as with a real camera), with
    # headroom for the bright spots that defocused cells focus light into.
    electrons = intensity * (EXPOSURE * config.full_well_e / (2 * (1 + config.visibility)))
    np.clip(electrons, 0, None, out=electrons)
    # Shot noise (Gaussian limit of Poisson: thousands of electrons) and read noise.
    sigma = np.sqrt(electrons + config.read_noise_e**2)
    electrons += sigma * rng.standard_normal(electrons.shape, dtype=np.float32)
    levels = 2**config.bit_depth - 1
    counts = np.clip(np.rint(electrons * (levels / config.full_well_e)), 0, levels)
    return counts.astype(np.uint8 if config.bit_depth == 8 else np.uint16)
