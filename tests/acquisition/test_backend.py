from __future__ import annotations

import logging

import numpy as np
import pytest

from acquisition.backend import BackendUnavailableError, get_backend
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


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs CuPy with a CUDA device")
def test_gpu_path_matches_cpu(flipping_scene):
    scene = flipping_scene
    config = ReconstructionConfig(sample_half="left")
    cpu = Reconstructor(config, get_backend("numpy"), scene.reference).reconstruct(scene.holograms)
    gpu = Reconstructor(config, get_backend("cupy"), scene.reference).reconstruct(scene.holograms)
    np.testing.assert_allclose(gpu.opd_nm, cpu.opd_nm, atol=0.5)
