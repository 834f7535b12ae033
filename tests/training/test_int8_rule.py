"""The one int8 rule (training.quantize.int8_kept), as training and the report use it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.models.onnx_model import small_classifier
from training.quantize import INT8_TOLERANCE, Int8Check, check_int8, int8_kept
from training.report import int8_section


def test_int8_is_kept_when_it_loses_at_most_half_a_point():
    assert INT8_TOLERANCE == 0.005
    assert int8_kept(0.9, 0.9)
    assert int8_kept(0.9, 0.95), "a gain is kept"
    # Exactly half a point, 1 crop in 200: 181/200 - 180/200 is a hair over 0.005 in
    # floating point, and is kept all the same.
    assert 181 / 200 - 180 / 200 > 0.005
    assert int8_kept(181 / 200, 180 / 200)
    assert not int8_kept(0.905, 0.8999)
    assert not int8_kept(147 / 160, 146 / 160), "one crop in 160 is 0.625 points"
    check = Int8Check(b"", 0.8313, 0.8313)
    assert check.kept
    assert not Int8Check(b"", 0.9, 0.89).kept


def _row(size: int, fold: int, fp32: float, int8: float) -> dict[str, object]:
    return {
        "method": "cnn",
        "train_size": size,
        "fold": fold,
        "accuracy_onnx_fp32": fp32,
        "accuracy_int8": int8,
    }


def test_the_report_says_within_tolerance_by_the_same_rule():
    results = [
        # Mean loss exactly half a point: within.
        _row(10, 0, 181 / 200, 180 / 200),
        _row(10, 1, 181 / 200, 180 / 200),
        # Mean loss of 0.6 points (one fold loses 1.2): not within.
        _row(20, 0, 0.9, 0.888),
        _row(20, 1, 0.9, 0.9),
    ]
    rows = [line for line in int8_section(results) if line.startswith("| cnn |")]
    assert rows == [
        "| cnn | 10 | 90.5 | 90.0 | 0.5 | yes |",
        "| cnn | 20 | 90.0 | 89.4 | 1.2 | no |",
    ]
    assert "Kept when int8 loses at most 0.5 points." in "\n".join(int8_section(results))
    assert int8_section([{"method": "knn", "train_size": 10, "accuracy": 0.5}]) == []


def test_check_int8_scores_both_models_on_held_out_crops():
    rng = np.random.default_rng(0)
    fp32 = small_classifier(seed=3)
    calibration = rng.uniform(-1, 1, (40, 1, 128, 128)).astype(np.float32)
    x = rng.uniform(-1, 1, (30, 1, 128, 128)).astype(np.float32)
    y = rng.integers(0, 2, 30)
    check = check_int8(fp32, calibration, x, y)
    assert check.int8 != fp32
    assert 0 <= check.accuracy_fp32 <= 1
    assert check.accuracy_int8 == pytest.approx(check.accuracy_fp32, abs=0.2)
    assert check.kept == int8_kept(check.accuracy_fp32, check.accuracy_int8)
