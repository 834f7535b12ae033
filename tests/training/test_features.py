"""The features method: QPI features of known phantoms, their invariance, the ONNX
export, and the trained model through the command line and the service's runtime."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from acquisition.cropfile import CropDataset, write_crop_dataset
from acquisition.segmentation import REFRACTIVE_INCREMENT_UM3_PER_PG
from models.manifest import Normalization
from models.runtime import ModelRuntime
from service.cli import main
from training.features import (
    FEATURE_NAMES,
    FEATURE_NORMALIZATION,
    FEATURES,
    L2_GRID,
    FeatureClassifier,
    QPIFeatures,
    choose_l2,
    extract,
    fit_features,
    fit_logistic,
)
from training.metrics import ece_of

N, PX = 128, 0.25
C = (N - 1) / 2
YY, XX = np.mgrid[:N, :N]


def _features(opd: np.ndarray, norm: Normalization = FEATURE_NORMALIZATION) -> np.ndarray:
    module = QPIFeatures(N, PX, norm).eval()
    return extract(module, norm.apply(np.asarray(opd, np.float32).reshape(-1, N, N))[:, None])


def _named(row: np.ndarray) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, row.tolist(), strict=True))


def _ellipse(a_um: float, b_um: float, opd_nm: float, noise_nm: float, seed: int) -> np.ndarray:
    """A flat ellipse (semi-axes a along y, b along x) with white noise."""
    inside = ((YY - C) * PX / a_um) ** 2 + ((XX - C) * PX / b_um) ** 2 <= 1
    noise = np.random.default_rng(seed).normal(0, noise_nm, (N, N))
    return (inside * opd_nm + noise).astype(np.float32)


def _dome(radius_um: float, peak_nm: float, rng: np.random.Generator) -> np.ndarray:
    """A spherical-cap cell (OPD peak * sqrt(1 - (r/R)^2)), slightly off centre, with
    smoothed noise of 2 nm."""
    cy, cx = C + rng.uniform(-2, 2, 2)
    r2 = (((YY - cy) ** 2 + (XX - cx) ** 2) * PX**2) / radius_um**2
    noise = rng.normal(0, 2.0, (N, N))
    return (peak_nm * np.sqrt(np.clip(1 - r2, 0, None)) + noise).astype(np.float32)


def test_the_features_are_named_with_their_units():
    assert len(FEATURES) == len(set(FEATURE_NAMES)) == 17
    units = dict(FEATURES)
    assert units["area_um2"] == "um^2"
    assert units["dry_mass_pg"] == "pg"
    assert units["texture_0.5um_nm2"] == "nm^2"
    assert {units[n] for n in ("mean_opd_nm", "peak_opd_nm", "median_opd_nm", "opd_std_nm")} == {
        "nm"
    }


def test_a_disc_gives_its_area_dry_mass_and_opd():
    radius, height = 5.0, 200.0
    f = _named(_features(_ellipse(radius, radius, height, 1.0, seed=0))[0])
    area = math.pi * radius**2
    # The digital disc (pixels of 0.25 um) is within 1 % of the analytic area.
    assert f["area_um2"] == pytest.approx(area, rel=0.01)
    assert f["dry_mass_pg"] == pytest.approx(
        area * height * 1e-3 / REFRACTIVE_INCREMENT_UM3_PER_PG, rel=0.01
    )
    for key in ("mean_opd_nm", "median_opd_nm"):
        assert f[key] == pytest.approx(height, abs=0.2), key
    # 90th percentile of flat 200 nm plus N(0, 1) noise: 200 + 1.28.
    assert f["p90_opd_nm"] == pytest.approx(height + 1.28, abs=0.2)
    assert f["peak_opd_nm"] == pytest.approx(height + 3.5, abs=1.5)
    assert f["opd_std_nm"] == pytest.approx(1.0, abs=0.1)
    assert abs(f["opd_skewness"]) < 0.3
    assert abs(f["opd_excess_kurtosis"]) < 0.5
    assert f["aspect_ratio"] == pytest.approx(1.0, abs=0.01)
    assert f["gyration_ratio"] == pytest.approx(1.0, abs=0.01)
    # Flat: the texture is the noise's (1 nm^2 white noise, a little of it low-passed
    # away), the rings are at the plateau over the peak.
    assert 0.7 < f["texture_0.5um_nm2"] < 1.1
    assert 0.7 < f["texture_1.5um_nm2"] < 1.1
    for name in FEATURE_NAMES[-4:-1]:
        assert f[name] == pytest.approx(height / f["peak_opd_nm"], abs=0.01), name
    # The outer ring reaches the digital disc's equivalent radius, a hair beyond its
    # edge: a few background pixels.
    assert f[FEATURE_NAMES[-1]] == pytest.approx(height / f["peak_opd_nm"], abs=0.025)
    # Twice the height: twice the dry mass, the same area.
    g = _named(_features(_ellipse(radius, radius, 2 * height, 1.0, seed=0))[0])
    assert g["dry_mass_pg"] == pytest.approx(2 * f["dry_mass_pg"], rel=0.005)
    assert g["area_um2"] == f["area_um2"]


def test_shape_texture_and_profile_measure_what_they_say():
    ellipse = _named(_features(_ellipse(8.0, 4.0, 200.0, 1.0, seed=1))[0])
    assert ellipse["area_um2"] == pytest.approx(math.pi * 32, rel=0.01)
    assert ellipse["aspect_ratio"] == pytest.approx(2.0, rel=0.01)
    # Radius of gyration over the equal-area disc's: sqrt((a^2 + b^2) / (2 a b)).
    assert ellipse["gyration_ratio"] == pytest.approx(math.sqrt(80 / 64), rel=0.01)
    rng = np.random.default_rng(2)
    dome = _named(_features(_dome(6.0, 300.0, rng))[0])
    # A spherical cap falls from the centre outwards: the rings say so.
    rings = [dome[n] for n in FEATURE_NAMES[-4:]]
    assert rings == sorted(rings, reverse=True)
    assert rings[0] > 0.95
    assert rings[-1] < 0.6
    textured = _ellipse(6.0, 6.0, 200.0, 1.0, seed=3)
    textured += (20 * np.sin(2 * np.pi * XX * PX / 1.0)).astype(np.float32) * (textured > 100)
    t = _named(_features(textured)[0])
    assert t["texture_0.5um_nm2"] > 50 * ellipse["texture_0.5um_nm2"]
    # An empty crop gives finite values (the service warms a model up with zeros).
    assert np.isfinite(_features(np.zeros((N, N)))).all()


def test_the_features_are_invariant_to_rotations_and_reflections(data):
    from training.data import load_crops

    crops = load_crops([data / "cells.h5"]).opd[::6]
    rng = np.random.default_rng(4)
    lopsided = _dome(5.0, 250.0, rng) + np.roll(_dome(2.0, 150.0, rng), (12, 20), axis=(0, 1))
    opd = np.concatenate([crops, lopsided[None]])
    base = _features(opd)
    assert np.abs(base).max() > 0
    seen = set()
    for k in range(8):
        turned = np.rot90(opd, k % 4, axes=(1, 2))
        turned = np.flip(turned, axis=2) if k >= 4 else turned
        seen.add(turned[-1].tobytes())
        np.testing.assert_allclose(_features(np.ascontiguousarray(turned)), base, rtol=1e-4)
    assert len(seen) == 8, "the lopsided phantom has no symmetry of its own"


def test_the_module_undoes_the_normalisation_it_is_built_with():
    rng = np.random.default_rng(5)
    opd = np.stack([_dome(5.0, 300.0, rng), _ellipse(6.0, 3.0, 150.0, 2.0, seed=6)])
    norm = Normalization(-50.0, 600.0)
    np.testing.assert_allclose(_features(opd, norm), _features(opd), rtol=1e-3, atol=1e-3)


def _two_classes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small flat-ish cells against large tall ones, with random sizes and heights."""
    rng = np.random.default_rng(seed)
    opd, labels = [], []
    for i in range(2 * count):
        big = i % 2
        radius = rng.uniform(6.0, 7.5) if big else rng.uniform(3.5, 4.5)
        peak = rng.uniform(280, 350) if big else rng.uniform(120, 180)
        opd.append(_dome(radius, peak, rng))
        labels.append(big)
    return np.stack(opd), np.array(labels)


def test_onnx_export_matches_pytorch():
    import onnxruntime as ort

    from training.export import export_onnx

    opd, labels = _two_classes(6, seed=7)
    fitted, _ = fit_features(opd, labels, 2, PX, seed=0)
    x = FEATURE_NORMALIZATION.apply(opd)[:, None]
    data = export_onnx(fitted.model, N, torch.from_numpy(x[:4]), fitted.temperature)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    other, _ = _two_classes(5, seed=8)
    got = session.run(None, {"x": FEATURE_NORMALIZATION.apply(other)[:, None]})[0]
    np.testing.assert_allclose(got, fitted.predict_proba(other), atol=1e-4)
    assert not np.allclose(got, 0.5), "a trained model is not at chance"
    # The features themselves (before the regression) agree too.
    probe = FeatureClassifier(
        fitted.model.features, np.zeros(17), np.ones(17), np.eye(17), np.zeros(17)
    ).eval()
    with torch.no_grad():
        expected = probe(torch.from_numpy(FEATURE_NORMALIZATION.apply(other)[:, None])).numpy()
    program = torch.onnx.export(
        probe,
        (torch.zeros(2, 1, N, N),),
        dynamo=True,
        verbose=False,
        input_names=["x"],
        opset_version=18,
        dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=1024)}},
    )
    assert program is not None
    raw = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    features = raw.run(None, {"x": FEATURE_NORMALIZATION.apply(other)[:, None]})[0]
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-3)


def test_the_logistic_regression_is_at_its_optimum_and_cv_picks_from_the_grid():
    rng = np.random.default_rng(9)
    z = rng.normal(0, 1, (200, 3))
    y = (z[:, 0] + 0.5 * rng.normal(0, 1, 200) > 0).astype(np.int64)
    l2 = 0.1
    weight, bias = fit_logistic(z, y, 2, l2)
    w = torch.tensor(weight, requires_grad=True)
    b = torch.tensor(bias, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(z) @ w.T + b, torch.from_numpy(y))
    (loss + 0.5 * l2 * (w**2).sum()).backward()
    assert w.grad is not None
    assert b.grad is not None
    assert float(w.grad.abs().max()) < 1e-6
    assert float(b.grad.abs().max()) < 1e-6
    # The informative feature carries the weight.
    assert abs(weight[1, 0] - weight[0, 0]) > 3 * abs(weight[1, 2] - weight[0, 2])
    chosen, accuracy, log_loss = choose_l2(z, y, 2, seed=0)
    assert chosen in L2_GRID
    assert accuracy is not None
    assert accuracy > 0.7
    assert log_loss is not None
    assert log_loss < np.log(2)
    # One crop of a class: no cross-validation, the default.
    assert choose_l2(z[:6], np.array([0, 1, 1, 1, 1, 1]), 2, seed=0)[1] is None


def test_train_classifier_features_is_served_and_separates_the_classes(tmp_path):
    opd, labels = _two_classes(10, seed=10)
    data = tmp_path / "cells.h5"
    write_crop_dataset(
        data, CropDataset(opd, labels, ["small", "large"], PX, 632.8, "test phantoms")
    )
    model = tmp_path / "model"
    args = ["-q", "train", "classifier", "--method", "features", "--data", str(data)]
    assert main([*args, "--out", str(model), "--int8"]) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["method"] == "features"
    assert manifest["input"]["normalization"] == FEATURE_NORMALIZATION.to_dict()
    listed = manifest["training"]["features"]
    assert [(f["name"], f["unit"]) for f in listed] == list(FEATURES)
    assert all(len(f["coefficients"]) == 2 and f["std"] > 0 for f in listed)
    assert manifest["metrics"]["precision"] == "fp32"
    assert manifest["metrics"]["l2"] in L2_GRID
    # The temperature from the cross-validation's out-of-fold logits of all 20 crops.
    calibration = manifest["calibration"]
    assert (calibration["method"], calibration["folds"], calibration["crops"]) == (
        "out-of-fold",
        5,
        20,
    )
    assert calibration["temperature"] > 0
    assert b"QuantizeLinear" not in (model / "model.onnx").read_bytes()
    runtime = ModelRuntime(model, "cpu")
    test_opd, test_labels = _two_classes(15, seed=11)
    probabilities = runtime.predict(test_opd)
    assert probabilities.shape == (30, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    assert (probabilities.argmax(1) == test_labels).all()


def test_evaluate_takes_features_but_not_for_int8(data, tmp_path):
    out = tmp_path / "eval"
    args = ["-q", "evaluate", "--data", str(data / "cells.h5"), "--train-sizes", "6"]
    args += ["--folds", "2", "--out", str(out)]
    assert main([*args, "--methods", "knn,features"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert sorted(r["method"] for r in results) == ["features", "features", "knn", "knn"]
    assert all(0 <= r["accuracy"] <= 1 for r in results)
    report = (out / "report.md").read_text()
    assert "| features | 6 |" in report
    # Calibration: each fold's ECE is that of its reliability table; knn keeps T = 1.
    for r in results:
        table = np.array(r["reliability"])
        assert table.shape == (15, 3)
        assert table[:, 0].sum() == 12  # the test fold's crops
        assert r["ece"] == pytest.approx(ece_of(table))
        assert r["ece_uncalibrated"] == pytest.approx(
            ece_of(np.array(r["reliability_uncalibrated"]))
        )
    knn = [r for r in results if r["method"] == "knn"]
    assert all(r["temperature"] == 1.0 and r["ece"] == r["ece_uncalibrated"] for r in knn)
    assert "## Calibration" in report
    assert (out / "reliability.png").stat().st_size > 1000
    assert main([*args, "--methods", "features", "--int8", "features"]) == 2
