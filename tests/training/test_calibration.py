"""Calibrated probabilities: the temperature fit, the ECE, the temperature inside the
exported ONNX graph, and the manifests and evaluations that carry them."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.manifest import read_model_dir
from service.cli import main
from training.calibration import BOUNDS, TemperatureFit, fit_temperature, nll, softmax
from training.classifier import result_lines
from training.export import export_onnx
from training.metrics import (
    ECE_BINS,
    ece_floor,
    ece_of,
    expected_calibration_error,
    reliability,
)


def _sampled(temperature: float, n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits / temperature): a model whose
    right temperature is ``temperature``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, classes))
    p = softmax(logits, temperature)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_the_fit_recovers_a_known_temperature(true_t):
    logits, labels = _sampled(true_t, 3000, 3, seed=int(10 * true_t))
    plain = fit_temperature(logits, labels, prior_sd=None)
    assert plain == pytest.approx(true_t, rel=0.08)
    # On 3000 crops the prior toward T = 1 moves it by little.
    assert fit_temperature(logits, labels) == pytest.approx(plain, rel=0.02)
    # The minimum: the NLL is higher a little to either side.
    assert nll(logits, labels, plain) < min(
        nll(logits, labels, plain * 1.05), nll(logits, labels, plain / 1.05)
    )


def test_the_prior_holds_a_tiny_split_near_one_and_the_bounds_hold_without_it():
    # Two validation crops, both right: the NLL falls without end as T goes to 0.
    logits = np.array([[2.0, -1.0], [-0.5, 1.5]])
    labels = np.array([0, 1])
    assert fit_temperature(logits, labels, prior_sd=None) == pytest.approx(BOUNDS[0])
    held = fit_temperature(logits, labels)
    assert 0.5 < held < 1.0
    # One of them wrong: the other way, to the upper bound without the prior.
    wrong = np.array([1, 1])
    assert fit_temperature(logits, wrong, prior_sd=None) > 5
    assert 1.0 < fit_temperature(logits, wrong) < 2.5
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, np.int64)) == 1.0
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros((3, 2)), np.zeros(2, np.int64))


def test_the_ece_of_a_hand_computed_case():
    # Confidences 0.95, 0.95, 0.75, 0.75, 0.55 (two classes), right: yes, no, yes,
    # yes, no. 15 bins: (14/15, 1] holds the 0.95s (accuracy 0.5), (11/15, 12/15]
    # the 0.75s (accuracy 1), (8/15, 9/15] the 0.55 (accuracy 0):
    # 2/5 * 0.45 + 2/5 * 0.25 + 1/5 * 0.55 = 0.39.
    confidence = np.array([0.95, 0.95, 0.75, 0.75, 0.55])
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.array([0, 1, 0, 0, 1])
    assert ECE_BINS == 15
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.39)
    table = reliability(probabilities, probabilities.argmax(1) == labels)
    assert table.shape == (15, 3)
    assert table[14].tolist() == pytest.approx([2, 1.9, 1])
    assert table[11].tolist() == pytest.approx([2, 1.5, 2])
    assert table[8].tolist() == pytest.approx([1, 0.55, 0])
    assert table[:, 0].sum() == 5
    # Tables of two folds sum to the table of both.
    correct = probabilities.argmax(1) == labels
    both = reliability(np.concatenate([probabilities] * 2), np.concatenate([correct] * 2))
    np.testing.assert_allclose(both, 2 * table)
    assert ece_of(np.zeros((15, 3))) != ece_of(np.zeros((15, 3)))  # NaN: no crops
    # A perfectly calibrated bin has no error.
    half = np.full((4, 2), 0.5)
    assert expected_calibration_error(half, np.array([0, 1, 1, 0])) == pytest.approx(0.0)


@pytest.mark.parametrize("crops", [40, 160, 800])
def test_the_ece_floor_is_a_calibrated_models_mean_ece(crops):
    """Labels drawn from the confidences themselves (a perfectly calibrated model)
    score, on average over many draws, the ECE the floor predicts from the table."""
    rng = np.random.default_rng(crops)
    confidence = np.clip(rng.beta(8, 1.5, size=crops), 0.5, 1.0)
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    draws = [rng.random(crops) < confidence for _ in range(4000)]
    simulated = np.mean([ece_of(reliability(probabilities, right)) for right in draws])
    floor = ece_floor(reliability(probabilities, draws[0]))
    assert floor == pytest.approx(simulated, rel=0.05)
    assert 0.0 < floor < 0.2


def test_the_ece_floor_of_certain_answers_is_zero_and_falls_with_more_crops():
    certain = reliability(np.array([[1.0, 0.0]] * 50), np.ones(50, bool))
    assert ece_floor(certain) == 0.0
    assert ece_floor(np.zeros((ECE_BINS, 3))) != ece_floor(np.zeros((ECE_BINS, 3)))  # NaN
    table = reliability(np.array([[0.8, 0.2]] * 10), np.ones(10, bool))
    assert ece_floor(4 * table) < ece_floor(table) / 1.8  # about 1 / sqrt(n)


def test_the_onnx_graph_divides_the_logits_by_the_temperature():
    torch.manual_seed(0)
    linear = nn.Linear(64, 3)
    with torch.no_grad():
        linear.weight.mul_(20)  # logits of several units: a temperature shows
    model = nn.Sequential(nn.AvgPool2d(16), nn.Flatten(), linear).eval()
    x = torch.rand(6, 1, 128, 128) * 2 - 1
    data = export_onnx(model, 128, x, temperature=2.5)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        logits = model(x).double().numpy()
    np.testing.assert_allclose(got, softmax(logits, 2.5), atol=1e-5)
    assert np.abs(got - softmax(logits)).max() > 0.05, "the temperature changed the output"
    with pytest.raises(ValueError, match="temperature"):
        export_onnx(model, 128, x, temperature=0.0)


def _graph_logits(model_dir, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ONNX model's probabilities and the logits its final Div divides (the graph
    read as it is: the Softmax's input is a Div of the logits by the temperature)."""
    proto = onnx.load(str(model_dir / "model.onnx"))
    nodes = {out: node for node in proto.graph.node for out in node.output}
    [softmax_node] = [n for n in proto.graph.node if n.op_type == "Softmax"]
    div = nodes[softmax_node.input[0]]
    assert div.op_type == "Div"
    proto.graph.output.append(onnx.ValueInfoProto(name=div.input[0]))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    probabilities, logits = session.run(None, {"x": x})
    return probabilities, logits


def test_train_classifier_writes_its_temperature_into_manifest_and_graph(data, tmp_path):
    model = tmp_path / "cnn"
    args = ["-q", "train", "classifier", "--method", "cnn", "--data", str(data / "cells.h5")]
    assert main([*args, "--out", str(model), "--dry-run", "--seed", "3"]) == 0
    written = json.loads((model / "manifest.json").read_text())
    assert list(written)[-2:] == ["calibration", "onnx_sha256"]
    calibration = written["calibration"]
    # 24 crops: a validation split of 6, too few; 5 more trainings give every
    # training crop an out-of-fold logit.
    assert calibration["method"] == "out-of-fold"
    assert calibration["folds"] == 5
    assert calibration["crops"] == 24
    assert BOUNDS[0] <= calibration["temperature"] <= BOUNDS[1]
    assert {"ece_before", "ece_after", "nll_before", "nll_after", "bins"} <= set(calibration)
    manifest, _ = read_model_dir(model)
    assert manifest.temperature == calibration["temperature"]
    x = np.random.default_rng(0).uniform(-1, 1, (5, 1, 128, 128)).astype(np.float32)
    probabilities, logits = _graph_logits(model, x)
    np.testing.assert_allclose(
        probabilities, softmax(logits, manifest.temperature), rtol=1e-5, atol=1e-6
    )
    lines = result_lines(manifest, int8=False)
    assert any(
        line.startswith(
            f"temperature: {manifest.temperature:.3f}, fitted on out-of-fold logits of 24 crops "
            f"(5 folds, {calibration['seconds']:g} s of training; ECE "
        )
        for line in lines
    ), lines

    knn = tmp_path / "knn"
    assert main(["-q", "train", "classifier", "--method", "knn", "--data", str(data / "cells.h5"),
                 "--out", str(knn)]) == 0  # fmt: skip
    knn_manifest, _ = read_model_dir(knn)
    assert knn_manifest.calibration is not None
    assert (knn_manifest.temperature, knn_manifest.calibration.method) == (1.0, "none")
    assert "vote" in knn_manifest.calibration.details["note"]
    assert any(line.startswith("temperature: 1, uncalibrated: knn") for line in
               result_lines(knn_manifest, int8=False))  # fmt: skip


def test_a_temperature_fit_reports_what_it_did():
    logits, labels = _sampled(3.0, 400, 2, seed=4)
    fitted = TemperatureFit.fit(logits, labels, "validation")
    assert fitted.temperature > 2
    assert fitted.ece_after < fitted.ece_before
    assert fitted.nll_after < fitted.nll_before
    record = fitted.record()
    assert record["crops"] == 400
    assert record["bins"] == ECE_BINS
    assert math.isclose(record["temperature"], fitted.temperature, rel_tol=1e-5)


def test_a_temperature_fitted_on_a_calibration_split_says_so():
    from dataclasses import replace
    from pathlib import Path

    from models.manifest import Calibration
    from training.classifier import calibration_line

    manifest, _ = read_model_dir(Path(__file__).resolve().parents[2] / "models" / "sw480-sw620")
    record = TemperatureFit.fit(*_sampled(1.5, 80, 2, seed=5), "calibration-split").record()
    calibration = Calibration.from_dict(record)
    assert calibration.method == "calibration-split"
    line = calibration_line(replace(manifest, calibration=calibration))
    assert line.startswith(
        f"temperature: {record['temperature']:.3f}, fitted on 80 validation crops that did "
        "not choose the epoch (ECE "
    ), line
