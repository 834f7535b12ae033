from __future__ import annotations

import numpy as np
import pytest

from acquisition.simulator.datasets import simulate_direct, simulate_full
from acquisition.simulator.scene import SceneConfig

SMALL = SceneConfig(shape=(512, 640), cells_per_frame=3)


def test_full_path_two_lines(backend):
    data = simulate_full(["sw480", "sw620"], 4, seed=3, scene=SMALL, backend=backend)
    assert data.opd.shape == (8, 128, 128)
    assert data.class_names == ["sw480", "sw620"]
    assert data.label.tolist() == [0] * 4 + [1] * 4
    assert "full path" in data.source
    assert "seed 3" in data.source
    assert np.isfinite(data.qc["true_diameter_um"]).all()
    # Each crop is a cell centred in its window, with a flat background around it.
    assert (data.opd[:, 54:74, 54:74].mean(axis=(1, 2)) > 100).all()
    again = simulate_full(["sw480", "sw620"], 4, seed=3, scene=SMALL, backend=backend)
    np.testing.assert_array_equal(again.opd, data.opd)


def test_full_path_sperm_pool_is_unlabeled(backend):
    data = simulate_full(["sperm"], 3, seed=1, scene=SMALL, backend=backend)
    assert data.class_names == []
    assert data.label.tolist() == [-1, -1, -1]


def test_direct_path_is_deterministic_and_recorded():
    a = simulate_direct(["sperm", "hs895-t"], 5, seed=2)
    b = simulate_direct(["sperm", "hs895-t"], 5, seed=2)
    np.testing.assert_array_equal(a.opd, b.opd)
    assert a.class_names == ["hs895-t"]
    assert a.label.tolist() == [-1] * 5 + [0] * 5
    assert "direct path" in a.source
    c = simulate_direct(["sperm", "hs895-t"], 5, seed=3)
    assert not np.array_equal(a.opd, c.opd)


def test_bad_counts():
    with pytest.raises(ValueError, match="count"):
        simulate_direct(["sw480"], 0)
    with pytest.raises(ValueError, match="unknown cell line"):
        simulate_direct(["hela"], 1)
