from __future__ import annotations

import math

import numpy as np
import pytest

from acquisition.errors import HologramError, ReferenceMismatchError, SidebandNotFoundError
from acquisition.reconstruction import (
    ReconstructionConfig,
    Reconstructor,
    choose_reduced_shape,
    sample_window,
    validate_holograms,
)
from tests.conftest import LEFT_CELLS, Disk, make_scene, truth_on_map

# -- real data against the peer ---------------------------------------------------------


def qpretrieve_phase(hologram: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, tuple]:
    """qpretrieve 0.7.0, padding 0, disk filter 1/3 of the sideband distance; unwrapped
    with scikit-image, as qpretrieve's users do."""
    qpretrieve = pytest.importorskip("qpretrieve")
    from skimage.restoration import unwrap_phase

    holo = qpretrieve.OffAxisHologram(hologram, padding=0)
    holo.run_pipeline(filter_name="disk", filter_size=1 / 3)
    bg = qpretrieve.OffAxisHologram(background, padding=0)
    bg.process_like(holo)
    phase = unwrap_phase(np.angle(holo.field[0] / bg.field[0]))
    return phase, holo.pipeline_kws["sideband_freq"]


@pytest.fixture(scope="module")
def hl60(real_dir):
    data = np.load(real_dir / "hl60_hologram_with_bg.npz")
    # qpretrieve without padding needs a square frame: take the same 200x200 for both.
    return data["data"][:, :200], data["bg_data"][:, :200]


def test_hl60_phase_agrees_with_qpretrieve(hl60, backend):
    hologram, background = hl60
    reference_phase, sideband = qpretrieve_phase(hologram, background)
    config = ReconstructionConfig(
        # OPD in units of the wavelength over 2 pi is the phase in radians.
        wavelength_nm=2 * math.pi,
        carrier=(float(sideband[0]), float(sideband[1])),
        output="full",
        reference_background_order=0,
    )
    ours = Reconstructor(config, backend, reference=background).reconstruct(hologram).opd_nm[0]
    theirs = reference_phase - np.median(reference_phase)
    cell = theirs > 0.5
    assert cell.sum() > 5000, "the HL60 cell should cover thousands of pixels"
    diff = ours - theirs
    diff -= np.median(diff[~cell])
    rms = float(np.sqrt(np.mean(diff[cell] ** 2)))
    assert rms < 0.05, f"phase over the cell differs from qpretrieve by {rms:.4f} rad RMS"
    # The known facts of this hologram: the cell's phase spans about -0.5 to 5.1 rad.
    assert 4.3 < float(ours[cell].max()) < 5.5


def test_hl60_sideband_found_like_qpretrieve(hl60, backend):
    hologram, background = hl60
    _, (fy, fx) = qpretrieve_phase(hologram, background)
    rec = Reconstructor(ReconstructionConfig(), backend)
    iy, ix = rec.find_carrier(hologram)
    h, w = hologram.shape
    ky = (iy if iy <= h // 2 else iy - h) / h
    found = np.array([ky, ix / w])
    # Either sideband of the pair is fine: the sign is settled afterwards.
    peer = np.array([fy, fx])
    nearest = min(np.abs(found - peer).max(), np.abs(found + peer).max())
    assert nearest <= 1.0 / h + 1e-9


def test_hl60_reduced_resolution_cell_positive(hl60, backend):
    hologram, background = hl60
    config = ReconstructionConfig(wavelength_nm=2 * math.pi)
    maps = Reconstructor(config, backend, reference=background).reconstruct(hologram)
    opd = maps.opd_nm[0]
    assert opd.shape[0] < 100, "the inverse FFT should run at the filter's reduced size"
    assert maps.sign in (1, -1)
    assert opd.max() > 4.3
    assert opd.min() > -1.5


# -- simulated flipping interferometer against the exact field -----------------------------


def cell_mask(truth: np.ndarray) -> np.ndarray:
    return truth > 50.0


@pytest.mark.parametrize("filter_name", ["disk", "smooth disk"])
def test_simulated_opd_within_5nm_inside_cells(flipping_scene, backend, filter_name):
    scene = flipping_scene
    config = ReconstructionConfig(
        wavelength_nm=scene.optics.wavelength_nm,
        pixel_size_um=scene.optics.pixel_size_um,
        sample_half="left",
        filter=filter_name,
    )
    rec = Reconstructor(config, backend, reference=scene.reference)
    maps = rec.reconstruct(scene.holograms)
    assert maps.opd_nm.shape[0] == 2
    assert maps.opd_nm.max() > 800, "cells must come out positive"
    for i in range(2):
        truth = truth_on_map(scene.opd_nm[i], maps.scale, maps.origin_px, maps.opd_nm.shape[1:])
        inside = cell_mask(truth)
        assert truth.max() > scene.optics.wavelength_nm, "cells must exceed one wavelength"
        err = maps.opd_nm[i] - truth
        rms = float(np.sqrt(np.mean(err[inside] ** 2)))
        assert rms <= 5.0, f"frame {i}: OPD error inside cells {rms:.2f} nm RMS"
        outside = ~cell_mask(truth)
        assert abs(float(np.median(err[outside]))) < 2.0


def test_simulated_without_reference_fits_background(backend):
    # Low-order aberrations only: what a background surface can model.
    scene = make_scene([LEFT_CELLS], aberration_rms_rad=0.0, seed=3)
    config = ReconstructionConfig(sample_half="left", pixel_size_um=scene.optics.pixel_size_um)
    maps = Reconstructor(config, backend).reconstruct(scene.holograms[0])
    truth = truth_on_map(scene.opd_nm[0], maps.scale, maps.origin_px, maps.opd_nm.shape[1:])
    err = maps.opd_nm[0] - truth
    rms = float(np.sqrt(np.mean(err[cell_mask(truth)] ** 2)))
    assert rms <= 8.0, f"OPD error inside cells without a reference: {rms:.2f} nm RMS"


@pytest.mark.parametrize(
    ("carrier", "mirror_axis", "half"),
    [
        ((0.0, 0.3), "x", "left"),  # fringes along x only
        ((0.3, 0.0), "y", "top"),  # along y only
        ((-0.22, 0.2), "x", "left"),  # the other diagonal
        ((0.25, -0.15), "x", "left"),
    ],
)
def test_sideband_found_in_any_direction(backend, carrier, mirror_axis, half):
    cells = [Disk(150.0, 130.0, 40.0, 800.0)]
    if mirror_axis == "y":
        cells = [Disk(130.0, 150.0, 40.0, 800.0)]
    scene = make_scene([cells], carrier=carrier, mirror_axis=mirror_axis, seed=5)
    config = ReconstructionConfig(sample_half=half)
    rec = Reconstructor(config, backend, reference=scene.reference)
    maps = rec.reconstruct(scene.holograms)
    found = np.array(maps.carrier)
    # The sideband's centre is the nominal carrier plus the aberrations' mean tilt.
    assert min(np.abs(found - carrier).max(), np.abs(found + carrier).max()) < 0.02
    truth = truth_on_map(scene.opd_nm[0], maps.scale, maps.origin_px, maps.opd_nm.shape[1:])
    err = maps.opd_nm[0] - truth
    assert float(np.sqrt(np.mean(err[cell_mask(truth)] ** 2))) <= 5.0


def test_configured_carrier_gives_the_same_maps(flipping_scene, backend):
    scene = flipping_scene
    auto = Reconstructor(ReconstructionConfig(sample_half="left"), backend, scene.reference)
    auto_maps = auto.reconstruct(scene.holograms)
    fixed = Reconstructor(
        ReconstructionConfig(sample_half="left", carrier=auto_maps.carrier),
        backend,
        scene.reference,
    )
    np.testing.assert_allclose(
        fixed.reconstruct(scene.holograms).opd_nm, auto_maps.opd_nm, atol=1e-3
    )
    nominal = Reconstructor(
        ReconstructionConfig(sample_half="left", carrier=scene.optics.carrier),
        backend,
        scene.reference,
    ).reconstruct(scene.holograms)
    diff = nominal.opd_nm - auto_maps.opd_nm
    assert float(np.sqrt(np.mean(diff**2))) < 2.0


def test_batch_equals_single_frames(flipping_scene, backend):
    scene = flipping_scene
    rec = Reconstructor(ReconstructionConfig(sample_half="left", sign=1), backend, scene.reference)
    batch = rec.reconstruct(scene.holograms).opd_nm
    for i, frame in enumerate(scene.holograms):
        np.testing.assert_allclose(rec.reconstruct(frame).opd_nm[0], batch[i], atol=1e-3)


def test_full_resolution_output(flipping_scene, backend):
    scene = flipping_scene
    config = ReconstructionConfig(sample_half="left", output="full")
    maps = Reconstructor(config, backend, scene.reference).reconstruct(scene.holograms[0])
    assert maps.opd_nm.shape == (1, 512, 256)
    assert maps.scale == (1.0, 1.0)
    truth = scene.opd_nm[0][:, :256]
    err = maps.opd_nm[0] - truth
    assert float(np.sqrt(np.mean(err[cell_mask(truth)] ** 2))) <= 5.0


def test_ghosts_are_negative_in_the_mirrored_half(flipping_scene, backend):
    scene = flipping_scene
    # Over the full frame cells and ghosts are equally strong, so the sign cannot be
    # told from the data: take it from the sample half, as an instrument's setting would.
    left = Reconstructor(ReconstructionConfig(sample_half="left"), backend, scene.reference)
    sign = left.reconstruct(scene.holograms[0]).sign
    config = ReconstructionConfig(sample_half="full", sign=sign)  # type: ignore[arg-type]
    maps = Reconstructor(config, backend, scene.reference).reconstruct(scene.holograms[0])
    opd = maps.opd_nm[0]
    w = opd.shape[1]
    assert opd[:, : w // 2].max() > 800  # the cells
    assert opd[:, w // 2 :].min() < -800  # their mirrored ghosts
    assert opd[:, w // 2 :].max() < 50


def test_reduced_grid_is_fast_and_isotropic():
    assert choose_reduced_shape((1024, 1280), (200, 250)) == (200, 250)
    my, mx = choose_reduced_shape((1024, 1024), (219, 219))
    assert my == mx
    assert my >= 219
    my, mx = choose_reduced_shape((294, 280), (100, 95))
    assert abs((294 / my) / (280 / mx) - 1) < 0.01


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((0, 0)), "empty"),
        (np.zeros(64), "1-D"),
        (np.zeros((2, 2, 64, 64)), "4-D"),
        (np.zeros((64, 64), dtype=complex), "dtype complex128"),
        (np.zeros((64, 64), dtype=bool), "dtype bool"),
        (np.array([["a"] * 64] * 64), "dtype <U1"),
        (np.zeros((8, 64)), "too small"),
        (None, "missing"),
    ],
)
def test_bad_holograms_are_refused_with_the_reason(value, message):
    with pytest.raises(HologramError, match=message):
        validate_holograms(value)


def test_nan_and_inf_are_refused(backend):
    frame = np.ones((64, 64), dtype=np.float32)
    frame[3, 4] = np.nan
    frame[5, 6] = np.inf
    with pytest.raises(HologramError, match="1 NaN and 1 Inf"):
        Reconstructor(ReconstructionConfig(), backend).reconstruct(frame)


def test_frame_without_fringes_is_refused(backend):
    rng = np.random.default_rng(1)
    flat = rng.poisson(100, size=(256, 256)).astype(np.uint8)
    with pytest.raises(SidebandNotFoundError, match="no sideband stands out"):
        Reconstructor(ReconstructionConfig(), backend).reconstruct(flat)
    with pytest.raises(SidebandNotFoundError):
        Reconstructor(ReconstructionConfig(), backend).reconstruct(np.full((64, 64), 7, np.uint8))


def test_reference_of_another_shape_is_refused(flipping_scene, backend):
    scene = flipping_scene
    rec = Reconstructor(ReconstructionConfig(), backend, reference=scene.reference[:, :400])
    with pytest.raises(
        ReferenceMismatchError, match=r"\(512, 400\) differs from the hologram shape"
    ):
        rec.reconstruct(scene.holograms[0])
    with pytest.raises(ReferenceMismatchError, match="one 2-D frame"):
        rec.set_reference(scene.holograms)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wavelength_nm": -1}, "wavelength_nm"),
        ({"filter_size": 1.5}, "filter_size"),
        ({"filter": "gauss"}, "filter"),
        ({"sample_half": "middle"}, "sample_half"),
        ({"carrier": (0.01, 0.0)}, "carrier"),
        ({"sign": 2}, "sign"),
    ],
)
def test_bad_config_names_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReconstructionConfig(**kwargs)


def test_12_bit_frames_and_the_geometry_cache(backend):
    scene = make_scene([LEFT_CELLS], bit_depth=12, seed=21)
    assert scene.holograms.dtype == np.uint16
    assert scene.holograms.max() > 255
    rec = Reconstructor(ReconstructionConfig(sample_half="left"), backend, scene.reference)
    # Stored MSB-aligned as a Basler Mono12 TIFF would be: the scale does not matter.
    maps = rec.reconstruct(scene.holograms << 4)
    truth = truth_on_map(scene.opd_nm[0], maps.scale, maps.origin_px, maps.opd_nm.shape[1:])
    err = maps.opd_nm[0] - truth
    assert float(np.sqrt(np.mean(err[cell_mask(truth)] ** 2))) <= 5.0
    # The reference is processed once per geometry: later frames reuse it.
    geometry = rec.geometry((512, 512), scene.holograms[0])
    rec.reconstruct(scene.holograms[0])
    assert rec.geometry((512, 512), scene.holograms[0]) is geometry
    rec.set_reference(scene.reference)
    assert rec.geometry((512, 512), scene.holograms[0]) is not geometry


def test_small_maps_still_lose_their_tilt(backend):
    # A carrier between frequency bins leaves a tilt that the background fit must take
    # out even when the reduced map is only 15x15 pixels.
    y, x = np.mgrid[:64, :64]
    flat = (100 + 80 * np.cos(2 * np.pi * (0.2037 * y + 0.2519 * x))).astype(np.float32)
    opd = Reconstructor(ReconstructionConfig(sign=1), backend).reconstruct(flat).opd_nm[0]
    assert opd.shape == (15, 15)
    assert float(np.ptp(opd[2:-2, 2:-2])) < 15.0


def test_configured_conjugate_carrier_gives_the_same_map(flipping_scene, backend):
    scene = flipping_scene
    auto = Reconstructor(ReconstructionConfig(sample_half="left"), backend, scene.reference)
    maps = auto.reconstruct(scene.holograms[0])
    ky, kx = maps.carrier
    # The other sideband of the pair has the opposite phase: the opposite sign undoes it.
    other = ReconstructionConfig(sample_half="left", carrier=(-ky, -kx), sign=-maps.sign)  # type: ignore[arg-type]
    conj = Reconstructor(other, backend, scene.reference).reconstruct(scene.holograms[0])
    assert conj.carrier == pytest.approx((-ky, -kx))
    np.testing.assert_allclose(conj.opd_nm, maps.opd_nm, atol=1e-2)


def test_regions_too_small_and_values_too_large_are_refused(backend):
    y, x = np.mgrid[:16, :16]
    tiny = (100 + 80 * np.cos(2 * np.pi * (0.1 * y + 0.1 * x))).astype(np.uint8)
    with pytest.raises(HologramError, match="reconstructs to only"):
        Reconstructor(
            ReconstructionConfig(sample_half="left", carrier=(0.1, 0.1)), backend
        ).reconstruct(tiny)
    huge = np.full((64, 64), 1e39)
    with pytest.raises(HologramError, match="beyond single precision"):
        validate_holograms(huge)


def test_smooth_disk_may_not_reach_dc():
    ReconstructionConfig(filter="smooth disk", filter_size=0.6)
    with pytest.raises(ValueError, match="would reach DC"):
        ReconstructionConfig(filter="smooth disk", filter_size=0.7)


@pytest.mark.parametrize("visibility", [0.3, 0.6, 0.9])
def test_fringe_contrast_is_the_fringes_modulation_depth(visibility):
    """I = A (1 + V cos(carrier)) with shot noise: the measured contrast is V."""
    from acquisition.backend import get_backend
    from acquisition.reconstruction import ReconstructionConfig, Reconstructor

    y, x = np.mgrid[0:512, 0:640]
    mean = 100 * (1 + visibility * np.cos(2 * np.pi * (0.2 * y + 0.25 * x)))
    hologram = np.random.default_rng(0).poisson(mean).astype(np.uint16)
    reconstructor = Reconstructor(ReconstructionConfig(sample_half="left"), get_backend("numpy"))
    contrast = reconstructor.reconstruct(np.stack([hologram, hologram // 2])).fringe_contrast
    assert contrast is not None
    np.testing.assert_allclose(contrast, visibility, atol=0.02)


@pytest.mark.parametrize("drift", [(0.0, 0.0), (0.002, -0.003), (-0.001, 0.0015)])
def test_carrier_drift_is_measured_against_the_reference(drift):
    """The reference's fringes at (0.2, 0.25) cycles/px, the frame's moved by ``drift``:
    the measured drift is the move, to a few 1e-5 cycles/px."""
    from acquisition.backend import get_backend

    y, x = np.mgrid[0:512, 0:640]

    def hologram(ky: float, kx: float, seed: int) -> np.ndarray:
        mean = 100 * (1 + 0.6 * np.cos(2 * np.pi * (ky * y + kx * x)))
        return np.random.default_rng(seed).poisson(mean).astype(np.uint16)

    reference = hologram(0.2, 0.25, 0)
    config = ReconstructionConfig(sample_half="left")
    reconstructor = Reconstructor(config, get_backend("numpy"), reference)
    maps = reconstructor.reconstruct(hologram(0.2 + drift[0], 0.25 + drift[1], 1))
    assert maps.carrier_drift is not None
    np.testing.assert_allclose(maps.carrier_drift[0], drift, atol=3e-5)
    assert maps.unwrap_residues is not None
    assert maps.unwrap_residues.tolist() == [0], "plain fringes leave no phase residue"


def test_phase_residues_are_counted_where_the_phase_has_a_vortex(backend):
    from acquisition.unwrap import LeastSquaresUnwrapper

    y, x = np.mgrid[0:64, 0:80].astype(np.float64)
    smooth = 0.05 * x + 0.02 * y
    vortices = np.angle((x - 20.3) + 1j * (y - 30.6)) - np.angle((x - 55.7) + 1j * (y - 10.2))
    stack = np.stack([np.angle(np.exp(1j * smooth)), np.angle(np.exp(1j * (smooth + vortices)))])
    unwrapper = LeastSquaresUnwrapper((64, 80), backend)
    phase, residues = unwrapper.unwrap(backend.asarray(stack), residues=True)
    assert backend.to_numpy(residues).tolist() == [0, 2]
    np.testing.assert_allclose(
        backend.to_numpy(phase), backend.to_numpy(unwrapper(backend.asarray(stack))), atol=1e-6
    )
    assert unwrapper.unwrap(backend.asarray(stack))[1] is None


# -- the sample half's window -------------------------------------------------------------


def test_the_window_holds_the_sample_half_and_keeps_the_whole_frames_pixel():
    whole = (slice(0, 1024), slice(0, 1280))
    # 1280 columns reduced to 300: 768 of them reduce to 180, the same pixel.
    assert sample_window((1024, 1280), "left", 128, (240, 300)) == (whole[0], slice(0, 768))
    assert sample_window((1024, 1280), "right", 128, (240, 300)) == (whole[0], slice(512, 1280))
    assert sample_window((1280, 1024), "top", 0, (300, 240)) == (slice(0, 640), whole[0])
    assert sample_window((1280, 1024), "bottom", 16, (300, 240)) == (slice(512, 1280), whole[0])
    assert sample_window((1024, 1280), "full", 128, (240, 300)) == whole
    assert sample_window((1024, 1280), "left", None, (240, 300)) == whole
    assert sample_window((1024, 1280), "left", 600, (240, 300)) == whole  # nothing shorter
    with pytest.raises(ValueError, match="sample_margin_px"):
        ReconstructionConfig(sample_margin_px=-1)


#: A large cell beside the mirror line: its ghost in the other half reaches past the
#: window's edge (column 768 of 1280), which cuts it.
BESIDE_THE_LINE = [
    [
        Disk(800.0, 545.0, 90.0, 700.0),
        Disk(200.0, 60.0, 40.0, 800.0),
        Disk(500.0, 320.0, 45.0, 900.0),
    ],
    [
        Disk(250.0, 550.0, 85.0, 800.0),
        Disk(300.0, 55.0, 38.0, 700.0),
        Disk(600.0, 300.0, 40.0, 800.0),
    ],
]


def _error_nm(scene, maps) -> float:
    """RMS of the maps against the true OPD, the outermost rows and columns aside."""
    errors = []
    for opd, truth in zip(maps.opd_nm, scene.opd_nm, strict=True):
        e = opd - truth_on_map(truth, maps.scale, maps.origin_px, opd.shape)
        errors.append((e - np.median(e))[4:-4, 2:-2])
    return float(np.sqrt(np.mean(np.square(errors))))


def test_the_window_reconstructs_the_sample_half_as_well_as_the_whole_frame(backend):
    scene = make_scene(BESIDE_THE_LINE, shape=(1024, 1280), seed=1)
    maps = {}
    for margin in (None, 0, 128):
        config = ReconstructionConfig(sample_half="left", sample_margin_px=margin)
        maps[margin] = Reconstructor(config, backend, scene.reference).reconstruct(scene.holograms)
    whole = maps[None]
    for margin in (0, 128):
        m = maps[margin]
        assert m.opd_nm.shape == whole.opd_nm.shape == (2, 240, 150)
        assert m.scale == whole.scale
        assert m.origin_px == whole.origin_px
        # The ghost cut by the 768-column window is faded out, not rung in: without
        # the fade this error was 2.9 nm against the whole frame's 1.05.
        assert _error_nm(scene, m) <= _error_nm(scene, whole) + 0.1
        diff = (m.opd_nm - whole.opd_nm)[:, :, 10:]  # the far edge's wrap aside
        assert float(np.sqrt(np.mean(diff**2))) < 0.5


def test_a_window_of_the_right_half_lands_where_the_whole_frame_does(backend):
    cells = [[Disk(c.y, 511.0 - c.x, c.radius, c.peak_opd_nm) for c in LEFT_CELLS]]
    scene = make_scene(cells, shape=(512, 512), seed=5)
    frames = scene.holograms.astype(np.float32)
    before = frames.copy()
    maps = {
        margin: Reconstructor(
            ReconstructionConfig(sample_half="right", sample_margin_px=margin),
            backend,
            scene.reference,
        ).reconstruct(frames)
        for margin in (None, 64)
    }
    np.testing.assert_array_equal(frames, before)  # the fade works on its own copy
    window, whole = maps[64], maps[None]
    assert window.opd_nm.shape == whole.opd_nm.shape
    assert window.origin_px == pytest.approx(whole.origin_px)
    assert window.origin_px[1] > 200  # camera columns of the right half
    assert _error_nm(scene, window) <= _error_nm(scene, whole) + 0.1
    truth = truth_on_map(scene.opd_nm[0], window.scale, window.origin_px, window.opd_nm.shape[1:])
    assert float(truth.max()) > 600  # the maps' pixels are where the cells are
