from __future__ import annotations

import numpy as np
import pytest

from acquisition.unwrap import LeastSquaresUnwrapper, wrap


def test_recovers_a_smooth_phase_with_many_wraps(backend):
    yy, xx = np.mgrid[:96, :120]
    true = 30 * np.exp(-((yy - 40) ** 2 + (xx - 70) ** 2) / 900.0) + 0.05 * xx
    assert true.max() - true.min() > 4 * np.pi
    unwrapper = LeastSquaresUnwrapper(true.shape, backend)
    got = unwrapper(wrap(true, np))
    err = (got - got.mean()) - (true - true.mean())
    assert np.abs(err).max() < 1e-3


def test_batches_and_wrong_shapes(backend):
    rng = np.random.default_rng(0)
    phases = rng.normal(size=(3, 32, 40)).cumsum(axis=-1) * 0.3
    unwrapper = LeastSquaresUnwrapper((32, 40), backend)
    batch = unwrapper(wrap(phases, np))
    for i in range(3):
        np.testing.assert_allclose(batch[i], unwrapper(wrap(phases[i], np)), atol=1e-4)
    with pytest.raises(ValueError, match="built for"):
        unwrapper(np.zeros((33, 40)))
    with pytest.raises(ValueError, match="at least 2x2"):
        LeastSquaresUnwrapper((1, 40), backend)


def test_wrap_range():
    values = np.linspace(-20, 20, 1001)
    wrapped = wrap(values, np)
    assert wrapped.min() >= -np.pi
    assert wrapped.max() < np.pi
    np.testing.assert_allclose(np.exp(1j * wrapped), np.exp(1j * values), atol=1e-9)
