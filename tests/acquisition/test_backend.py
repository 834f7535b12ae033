from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from acquisition.backend import ArrayBackend, BackendUnavailableError, get_backend, median
from acquisition.reconstruction import ReconstructionConfig, Reconstructor


def _cupy_device_answers() -> bool:
    try:
        get_backend("cupy")
    except BackendUnavailableError:
        return False
    return True


HAS_GPU = _cupy_device_answers()


def test_numpy_backend_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="acquisition.backend"):
        backend = get_backend("numpy", workers=2)
    assert backend.name == "numpy"
    assert backend.workers == 2
    assert "array backend: numpy on CPU (2 FFT workers)" in caplog.text


def test_auto_picks_what_runs(caplog):
    with caplog.at_level(logging.INFO, logger="acquisition.backend"):
        backend = get_backend("auto")
    assert backend.name == ("cupy" if HAS_GPU else "numpy")
    assert f"array backend: {backend.name}" in caplog.text


@pytest.mark.skipif(HAS_GPU, reason="a CUDA device answers here")
def test_cupy_without_a_device_says_why():
    with pytest.raises(BackendUnavailableError, match="CuPy"):
        get_backend("cupy")


def test_bad_backend_settings():
    with pytest.raises(ValueError, match="backend must be"):
        get_backend("opencl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        get_backend("numpy", workers=0)


class _CountingBackend(ArrayBackend):
    """NumPy, recording the shape of every array :meth:`to_numpy` brings to the host."""

    moved: list[tuple[int, ...]]

    def to_numpy(self, array):
        self.moved.append(tuple(array.shape))
        return super().to_numpy(array)


@pytest.mark.parametrize("with_reference", [True, False])
def test_only_the_maps_and_a_few_numbers_leave_the_device(flipping_scene, with_reference):
    """Every transfer to the host goes through ``to_numpy`` (CuPy refuses implicit
    conversion): between the upload and the result, nothing of a frame's size leaves
    the device: the OPD and amplitude maps and three per-frame measures come back."""
    scene = flipping_scene
    numpy = get_backend("numpy")
    backend = _CountingBackend(
        **{f.name: getattr(numpy, f.name) for f in dataclasses.fields(numpy)}
    )
    object.__setattr__(backend, "moved", [])
    reference = scene.reference if with_reference else None
    rec = Reconstructor(ReconstructionConfig(sample_half="left"), backend, reference)
    rec.reconstruct(scene.holograms[0])  # the geometry is built once, then cached
    backend.moved.clear()
    maps = rec.reconstruct(scene.holograms)
    n, h, w = maps.opd_nm.shape
    assert n == 2
    assert sorted(backend.moved) == sorted([(n, h, w), (n, h, w), (n,), (n, 2), (n,)])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs CuPy with a CUDA device")
@pytest.mark.parametrize("with_reference", [True, False])
def test_gpu_path_matches_cpu(flipping_scene, with_reference):
    """The CuPy path gives the NumPy path's maps and measures: with a reference and
    without one (the background surface then fitted on the device)."""
    scene = flipping_scene
    config = ReconstructionConfig(sample_half="left")
    reference = scene.reference if with_reference else None
    cpu = Reconstructor(config, get_backend("numpy"), reference).reconstruct(scene.holograms)
    gpu = Reconstructor(config, get_backend("cupy"), reference).reconstruct(scene.holograms)
    assert isinstance(gpu.opd_nm, np.ndarray)
    assert gpu.opd_nm.dtype == np.float32
    assert gpu.opd_nm.shape == cpu.opd_nm.shape
    assert gpu.sign == cpu.sign
    np.testing.assert_allclose(gpu.opd_nm, cpu.opd_nm, atol=0.5)
    np.testing.assert_allclose(gpu.amplitude, cpu.amplitude, rtol=1e-3, atol=1e-4)
    measures = []
    for maps in (gpu, cpu):
        contrast, drift, residues = maps.fringe_contrast, maps.carrier_drift, maps.unwrap_residues
        assert contrast is not None
        assert drift is not None
        assert residues is not None
        measures.append((contrast, drift, residues))
    (gpu_contrast, gpu_drift, gpu_residues), (cpu_contrast, cpu_drift, cpu_residues) = measures
    np.testing.assert_allclose(gpu_contrast, cpu_contrast, rtol=1e-4)
    np.testing.assert_allclose(gpu_drift, cpu_drift, atol=1e-6)
    # A wrapped difference within rounding of pi may fall on either side: a residue or two.
    assert np.abs(gpu_residues - cpu_residues).max() <= 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 36000, 36001])
def test_median_is_numpys_median(dtype, n):
    """The one-pivot median gives np.median's value, bit for bit and in its dtype."""
    rng = np.random.default_rng(n)
    for _ in range(5):
        values = (rng.normal(size=(n,)) * 100).astype(dtype).reshape(-1, 1)
        expected, got = np.median(values), median(values)
        assert got == expected
        assert np.asarray(got).dtype == np.asarray(expected).dtype


def test_median_of_nan_is_nan():
    values = np.arange(101, dtype=np.float32)
    values[3] = np.nan
    assert np.isnan(median(values))
