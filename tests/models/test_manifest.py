from __future__ import annotations

import numpy as np
import pytest

from models.manifest import ModelError, Normalization


def test_normalization_fits_the_data_in_10_nm_steps():
    opd = np.random.default_rng(0).normal(200, 60, (40, 16, 16)).astype(np.float32)
    norm = Normalization.fit(opd)
    assert norm.opd_min_nm == 0.0, "never above 0 nm at the low end"
    assert norm.opd_max_nm % 10 == 0
    assert norm.opd_max_nm >= float(np.percentile(opd, 99.9)) - 10
    assert (norm.out_min, norm.out_max) == (-1.0, 1.0)
    assert Normalization.fit(np.zeros((3, 4, 4), np.float32)) == Normalization(0.0, 10.0)


def test_normalization_is_what_training_always_computed():
    norm = Normalization(-20.0, 620.0)
    opd = np.random.default_rng(1).normal(200, 250, (8, 32, 32)).astype(np.float32)
    lo, hi = norm.opd_min_nm, norm.opd_max_nm
    expected = ((np.clip(opd, lo, hi) - lo) / (hi - lo) * 2 - 1).astype(np.float32)
    got = norm.apply(opd)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert norm.apply(np.array([-100.0, -20.0, 620.0, 900.0])).tolist() == [-1, -1, 1, 1]
    wide = Normalization(0.0, 100.0, 0.0, 10.0)
    assert wide.apply(np.array([50.0])).tolist() == [5.0]


def test_normalization_round_trips_through_its_dict():
    norm = Normalization(-10.0, 90.0)
    assert norm.to_dict() == {
        "kind": "linear",
        "opd_min_nm": -10.0,
        "opd_max_nm": 90.0,
        "out_min": -1.0,
        "out_max": 1.0,
    }
    assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(ModelError, match="range is empty"):
        Normalization.from_dict({"opd_min_nm": 5, "opd_max_nm": 5})
    with pytest.raises(ModelError, match="unknown normalization kind"):
        Normalization.from_dict({**norm.to_dict(), "kind": "log"})
