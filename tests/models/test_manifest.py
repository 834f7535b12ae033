from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.manifest import (
    Manifest,
    ModelError,
    Normalization,
    read_model_dir,
    sha256_of,
    write_model_dir,
)


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


REPO = Path(__file__).resolve().parents[2]
CONTRACT = [
    "name",
    "version",
    "created",
    "classes",
    "input",
    "method",
    "training",
    "metrics",
    "calibration",
    "onnx_sha256",
]


@pytest.mark.parametrize(
    "model", ["sw480-sw620", "hs895", "sw480-sw620-features", "hs895-features"]
)
def test_the_bundled_manifests_are_what_manifest_writes(model):
    text = (REPO / "models" / model / "manifest.json").read_text()
    manifest = Manifest.from_dict(json.loads(text))
    assert list(manifest.to_dict()) == CONTRACT  # every bundled model is calibrated
    assert list(manifest.to_dict()["input"]) == ["shape", "pixel_size_um", "normalization"]
    assert json.dumps(manifest.to_dict(), indent=2) + "\n" == text


def test_write_model_dir_fills_in_the_checksum(tmp_path):
    from tests.models.onnx_model import small_classifier

    manifest = Manifest(
        name="m",
        version="1",
        created="2026-11-22T00:00:00Z",
        classes=["a", "b"],
        input_shape=(1, 128, 128),
        pixel_size_um=0.25,
        normalization=Normalization(-50.0, 750.0),
        method="knn",
        training={"seed": 1},
        metrics={"validation_accuracy": 0.5},
    )
    write_model_dir(tmp_path / "m", small_classifier(), manifest)
    read, onnx_path = read_model_dir(tmp_path / "m")
    assert read.onnx_sha256 == sha256_of(onnx_path)
    assert read == replace(manifest, onnx_sha256=read.onnx_sha256)
    assert list(json.loads((tmp_path / "m" / "manifest.json").read_text())) == [
        k for k in CONTRACT if k != "calibration"
    ]  # an uncalibrated model (knn) has none
