from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.manifest import read_model_dir
from models.runtime import ModelRuntime
from service.cli import main
from training.calibration import too_few
from training.classifier import result_lines
from training.config import classifier_preset, gan_preset, override
from training.gan import train_gan
from training.report import report_markdown

REPO = Path(__file__).resolve().parents[2]


def test_gan_checkpoints_and_resumes(data, tmp_path):
    config = override(gan_preset("cpu"), epochs=1, batch_size=8, max_steps=2)
    train_gan([data / "pool.h5"], tmp_path, config, seed=5)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2
    assert state["epoch"] == 1
    assert state["seed"] == 5
    assert {"generator", "discriminator", "opt_g", "opt_d", "network", "normalization"} <= set(
        state
    )
    assert (tmp_path / "samples-epoch-001.png").is_file()
    info = json.loads((tmp_path / "gan.json").read_text())
    assert info["crops"] == 24
    assert len(info["data"][0]["sha256"]) == 64
    # A finished run resumed is refused (it would train nothing), and nothing changes.
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=r"already trained 1 epochs.*--epochs above 1"):
        train_gan([data], tmp_path, config, seed=5, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    # Keep pretraining on grown data (the folder: pool.h5 and cells.h5, 48 crops):
    # --epochs is the total, max_steps caps this run's steps.
    train_gan([data], tmp_path, override(config, epochs=2, max_steps=4), seed=5, resume=True)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (2, 6)
    runs = json.loads((tmp_path / "gan.json").read_text())["runs"]
    assert runs == state["runs"]
    assert [(r["from_epoch"], r["to_epoch"], r["crops"]) for r in runs] == [(0, 1, 24), (1, 2, 48)]
    assert [len(r["data"]) for r in runs] == [1, 2]
    assert runs[0]["data"][0] == info["data"][0]
    # The same seed trains the same weights.
    again = tmp_path / "again"
    train_gan([data / "pool.h5"], again, config, seed=5)
    first = torch.load(again / "gan.pt", weights_only=False)["generator"]
    other = tmp_path / "other"
    train_gan([data / "pool.h5"], other, config, seed=5)
    for key, value in torch.load(other / "gan.pt", weights_only=False)["generator"].items():
        assert torch.equal(value, first[key]), key


def test_classifier_from_the_command_line_is_servable(data, tmp_path):
    gan = tmp_path / "gan"
    assert (
        main(
            ["-q", "train", "gan", "--data", str(data / "pool.h5"), "--out", str(gan), "--dry-run"]
        )
        == 0
    )
    model = tmp_path / "model"
    args = [
        "-q",
        "train",
        "classifier",
        "--method",
        "topgan",
        "--data",
        str(data / "cells.h5"),
        "--gan",
        str(gan),
        "--out",
        str(model),
        "--dry-run",
        "--seed",
        "4",
    ]
    assert main(args) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["method"] == "topgan"
    assert manifest["classes"] == ["sw480", "sw620"]
    assert manifest["training"]["seed"] == 4
    assert manifest["training"]["preset"] == "cpu"
    assert "topgan" in manifest["training"]["command"]
    assert manifest["training"]["gan_sha256"]
    onnx_bytes = (model / "model.onnx").read_bytes()
    assert str(REPO).encode() not in onnx_bytes, "the model names this machine's files"
    runtime = ModelRuntime(model, "cpu")
    probabilities = runtime.predict(
        np.random.default_rng(0).normal(200, 50, (5, 128, 128)).astype(np.float32)
    )
    assert probabilities.shape == (5, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)


def test_training_errors(data, tmp_path):
    from training.data import load_crops
    from training.fit import fit
    from training.splits import stratified_indices

    crops = load_crops([data / "cells.h5"])
    config = override(classifier_preset("cpu"), epochs=1, max_steps=1)
    with pytest.raises(ValueError, match="needs --pretrained DIR: a GAN folder"):
        fit("topgan", crops, np.arange(len(crops.label)), config, None, 0)
    with pytest.raises(ValueError, match=r"^class 0 has 12 crops, 50 needed"):
        stratified_indices(crops.label, 100, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^sw480 has 12 crops, 50 needed"):
        stratified_indices(crops.label, 100, np.random.default_rng(0), crops.class_names)
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("topgan")),
            "train",
            "classifier",
            "--method",
            "cnn",
            "--data",
            str(data / "pool.h5"),
            "--out",
            str(tmp_path / "m"),
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "a classifier needs at least two" in result.stderr


def test_errors_name_the_classes(data, tmp_path, capsys):
    out = tmp_path / "m"
    args = ["train", "classifier", "--method", "knn", "--data", str(data / "cells.h5")]
    assert main([*args, "--out", str(out), "--train-size", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "topgan train classifier: error: sw480 has 12 crops, 50 needed for a balanced "
        "train size of 100"
    )
    assert not out.exists()


def test_train_refuses_to_overwrite_without_force(data, tmp_path, capsys, caplog):
    def files(folder):
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}

    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text("the old manifest")
    (model / "model.onnx").write_text("the old model")
    before = files(model)
    clf = ["train", "classifier", "--method", "knn", "--data", str(data / "cells.h5")]
    assert main([*clf, "--out", str(model)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"topgan train classifier: error: {model} already exists and is not empty: "
        "--force overwrites its model, or choose another --out\n"
    )
    assert files(model) == before
    assert main([*clf, "--out", str(model), "--force"]) == 0
    assert json.loads((model / "manifest.json").read_text())["method"] == "knn"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*clf, "--out", str(empty)]) == 0  # an empty folder is no model to lose

    gan = tmp_path / "gan"
    train = ["-q", "train", "gan", "--data", str(data / "pool.h5"), "--out", str(gan), "--dry-run"]
    assert main(train) == 0
    before = files(gan)
    capsys.readouterr()
    assert main(train) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--resume continues its training, --force trains afresh into it" in err
    assert files(gan) == before
    caplog.set_level(logging.INFO, logger="training.gan")
    assert main([*train, "--resume"]) == 0  # its own folder: continues
    assert "resuming from epoch 1, step 2" in caplog.text
    assert main([*train, "--force"]) == 0
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    assert main([*train[:-2], str(stray), "--dry-run", "--resume"]) == 2
    assert "it has no checkpoint.pt to resume" in capsys.readouterr().err
    assert [p.name for p in stray.iterdir()] == ["notes.txt"]


def test_a_real_run_prints_only_the_projects_lines_and_ends_with_its_result(data, tmp_path):
    model = tmp_path / "model"
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("topgan")),
            "train",
            "classifier",
            "--method",
            "cnn",
            "--data",
            str(data / "cells.h5"),
            "--out",
            str(model),
            "--train-size",
            "10",  # a validation split of one crop per class
            "--dry-run",
            "--int8",  # the quantiser prints its calibration and logs at INFO
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    block = [
        r"validation: accuracy [\d.]+ on 2 crops, loss [\d.]+"
        r"(, best epoch \d+ \(selection from epoch \d+, \d+ epochs? run\)"
        r"|; never left the untrained plateau \(1 epoch run: the last model is kept\))",
        re.escape(
            "validation on 2 crops cannot mean much: one crop moves the accuracy by 50 points; "
            "train on more crops for figures that do"
        ),
        re.escape(f"temperature: 1, uncalibrated: {too_few(10)}"),
        r"precision: (int8, kept|fp32; int8 refused) \(validation accuracy [\d.]+, fp32 .*\)",
        r"training: [\d.]+ s on 10 crops",
        re.escape(f"wrote the model directory {model}"),
    ]
    assert len(lines) > len(block)
    for line, pattern in zip(lines[-len(block) :], block, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    # Before the result: progress and the project's own log lines, nothing else.
    ours = re.compile(
        r"classifier steps: \d+/\d+ \([\d.]+/s\)|\d{4}-\d\d-\d\d [\d:,]+ INFO training\.\w+: .*"
    )
    assert [line for line in lines[: -len(block)] if not ours.fullmatch(line)] == []
    assert any("ONNX export matches PyTorch" in line for line in lines)

    # The other outcomes, from this model's manifest.
    manifest, _ = read_model_dir(model)
    metrics = {
        **manifest.metrics,
        "validation_size": 40,
        "selection_size": 40,
        "best_epoch": 7,
        "selection_from_epoch": 3,
        "epochs_run": 30,
        "precision": "fp32",
        "validation_accuracy": 0.9,
        "validation_accuracy_fp32": 0.9,
        "validation_accuracy_int8": 0.875,
    }
    lines = result_lines(replace(manifest, metrics=metrics), int8=True)
    assert lines[0].startswith("validation: accuracy 0.9000 on 40 crops, loss ")
    assert lines[0].endswith(", best epoch 7 (selection from epoch 3, 30 epochs run)")
    assert lines[1] == f"temperature: 1, uncalibrated: {too_few(10)}"
    assert lines[2] == (
        "precision: fp32; int8 refused (validation accuracy 0.8750, fp32 0.9000: "
        "more than 0.5 points lost)"
    )
    assert not any("cannot mean much" in line for line in lines)


def test_the_service_never_imports_pytorch():
    code = (
        "import sys; import service.cli, service.app, service.services, models.runtime; "
        "from service.settings import Settings; from service.app import create_app; "
        "create_app(Settings(camera='none', model_dir=None)); "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0


def test_knn_model_matches_the_numpy_knn(data, tmp_path):
    from models.manifest import Normalization
    from training.data import load_crops
    from training.knn import KNNClassifier

    model = tmp_path / "knn"
    assert (
        main(
            [
                "-q",
                "train",
                "classifier",
                "--method",
                "knn",
                "--data",
                str(data / "cells.h5"),
                "--out",
                str(model),
            ]
        )
        == 0
    )
    manifest = json.loads((model / "manifest.json").read_text())
    crops = load_crops([data / "cells.h5"])
    norm = Normalization.from_dict(manifest["input"]["normalization"])
    x = norm.apply(crops.opd)
    probe = np.random.default_rng(1).normal(150, 80, (6, 128, 128)).astype(np.float32)
    served = ModelRuntime(model, "cpu").predict(probe)
    # The ONNX graph holds every training crop (the seed only shuffles their order).
    expected = KNNClassifier(9).fit(x, crops.label).predict_proba(norm.apply(probe))
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_int8_is_kept_only_within_half_a_point(data, tmp_path):
    model = tmp_path / "q"
    args = [
        "-q",
        "train",
        "classifier",
        "--method",
        "cnn",
        "--data",
        str(data / "cells.h5"),
        "--out",
        str(model),
        "--int8",
        "--epochs",
        "2",
    ]
    assert main(args) == 0
    metrics = json.loads((model / "manifest.json").read_text())["metrics"]
    kept = metrics["validation_accuracy_int8"] >= metrics["validation_accuracy_fp32"] - 0.005
    assert metrics["precision"] == ("int8" if kept else "fp32")
    text = (model / "model.onnx").read_bytes()
    assert (b"QuantizeLinear" in text) == kept
    assert str(REPO).encode() not in text, "the model names this machine's files"
    probabilities = ModelRuntime(model, "cpu").predict(np.zeros((2, 128, 128), np.float32))
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-4)


def test_evaluate_follows_the_protocol(data, tmp_path):
    out = tmp_path / "eval"
    args = [
        "-q",
        "evaluate",
        "--data",
        str(data / "cells.h5"),
        "--methods",
        "knn,cnn",
        "--train-sizes",
        "4,8",
        "--folds",
        "3",
        "--dry-run",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert len(results) == 3 * 2 * 2
    keys = {
        "method",
        "train_size",
        "fold",
        "accuracy",
        "sensitivity",
        "specificity",
        "auc",
        "train_seconds",
        "test_seconds_per_cell",
        "temperature",
        "ece",
        "ece_uncalibrated",
        "reliability",
        "reliability_uncalibrated",
    }
    assert all(set(r) == keys for r in results)
    # Training sets of 4 and 8 crops: too few to fit a temperature on.
    assert all(r["temperature"] == 1.0 for r in results)
    assert {r["fold"] for r in results} == {0, 1, 2}
    assert all(0 <= r["accuracy"] <= 1 and r["test_seconds_per_cell"] > 0 for r in results)
    assert "| knn | 4 |" in (out / "report.md").read_text()
    assert (out / "learning-curves.png").stat().st_size > 1000
    assert (out / "reliability.png").stat().st_size > 1000


def test_evaluate_scores_int8_on_the_test_folds(data, tmp_path):
    out = tmp_path / "eval"
    args = [
        "-q",
        "evaluate",
        "--data",
        str(data / "cells.h5"),
        "--methods",
        "knn,cnn",
        "--int8",
        "cnn",
        "--train-sizes",
        "8",
        "--folds",
        "2",
        "--dry-run",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    cnn = [r for r in results if r["method"] == "cnn"]
    assert len(cnn) == 2
    for r in cnn:
        assert 0 <= r["accuracy_int8"] <= 1
        # The ONNX float model is the PyTorch model: the same test accuracy.
        assert abs(r["accuracy_onnx_fp32"] - r["accuracy"]) < 1e-9
    assert all("accuracy_int8" not in r for r in results if r["method"] == "knn")
    report = (out / "report.md").read_text()
    assert "## int8 on the evaluation folds" in report
    # The text is its results.json's, as fewlabels.py rewrites it; the calibration
    # table has the sampling floor of every row.
    saved = json.loads((out / "results.json").read_text())
    assert report_markdown(saved["results"], saved["meta"]) == report
    calibration = report.split("## Calibration")[1].split("![")[0]
    assert "floor: per fold / pooled" in calibration
    assert re.search(r"\| cnn \| 8 \|.*\| \d+\.\d / \d+\.\d \|", calibration)
    assert "| cnn | 8 |" in report.split("## int8")[1]
    bad = [
        "-q",
        "evaluate",
        "--data",
        str(data / "cells.h5"),
        "--methods",
        "cnn",
        "--int8",
        "knn",
        "--train-sizes",
        "8",
        "--folds",
        "2",
        "--dry-run",
        "--out",
        str(out),
    ]
    assert main(bad) == 2


def test_folds_and_auc():
    from training.metrics import auc
    from training.splits import stratified_folds

    labels = np.array([0] * 10 + [1] * 5)
    folds = stratified_folds(labels, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(15))
    assert all((labels[f] == 1).sum() == 1 for f in folds)
    truth = np.array([True, True, False, False])
    assert auc(np.array([0.9, 0.8, 0.1, 0.2]), truth) == 1.0
    assert auc(np.array([0.1, 0.2, 0.9, 0.8]), truth) == 0.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), truth) == 0.5


def test_selection_starts_off_the_untrained_plateau(data):
    """min_steps stretches the epoch cap at a handful of crops; model selection and
    early stopping start only once the training crops' loss is clearly below ln 2, and
    a model that never gets there is kept as it ends."""
    from training.data import load_crops
    from training.fit import PLATEAU_EXIT, fit

    crops = load_crops([data / "cells.h5"])
    indices = np.arange(len(crops.label))
    # 24 crops, validation 5: 19 training crops, batch 16 -> 2 steps an epoch.
    config = override(classifier_preset("cpu"), epochs=2, patience=1, batch_size=16, min_steps=0)
    _, _, short = fit("cnn", crops, indices, config, None, seed=0)
    assert short["epochs_run"] <= 2
    # lr 0: the plateau is never left; the last model is kept, nothing stops early.
    _, _, stuck = fit("cnn", crops, indices, override(config, lr=0.0, min_steps=12), None, 0)
    assert stuck["epochs_run"] == 6
    assert stuck["selection_from_epoch"] == 0
    assert stuck["best_epoch"] == 6
    assert stuck["validation_loss"] == pytest.approx(np.log(2), abs=0.01)
    # A learning model leaves it; selection starts there and patience counts from there.
    _, _, learnt = fit("cnn", crops, indices, override(config, epochs=200, patience=5), None, 0)
    assert learnt["selection_from_epoch"] >= 1
    assert learnt["best_epoch"] >= learnt["selection_from_epoch"]
    assert learnt["epochs_run"] < 200
    assert PLATEAU_EXIT * np.log(2) < 0.6


def test_a_large_validation_split_is_halved_between_the_epoch_and_the_temperature(tmp_path):
    """From calibration_split_from validation crops on, one stratified half chooses the
    epoch and the other, which never chose anything, fits the temperature; the
    training crops are the same either way, and below the cut nothing changes."""
    from acquisition.cropfile import write_crop_dataset
    from acquisition.simulator.datasets import simulate_direct
    from training.data import load_crops
    from training.fit import fit, validation_parts

    write_crop_dataset(tmp_path / "cells.h5", simulate_direct(["sw480", "sw620"], 100, seed=3))
    crops = load_crops([tmp_path / "cells.h5"])
    indices = np.arange(len(crops.label))
    labels = crops.label[indices]
    config = override(classifier_preset("cpu"), epochs=2, min_steps=0, calibration_split_from=40)
    whole = replace(config, calibration_split_from=None)
    train, select, calib = validation_parts(labels, config, seed=0)
    train_whole, select_whole, calib_whole = validation_parts(labels, whole, seed=0)
    # 200 crops, validation 40 (20 a class): disjoint halves of 10 a class each.
    assert np.array_equal(train, train_whole)
    assert np.array_equal(select_whole, calib_whole)
    assert len(select_whole) == 40
    assert not set(select) & set(calib)
    assert set(select) | set(calib) == set(select_whole)
    assert np.bincount(labels[select]).tolist() == np.bincount(labels[calib]).tolist() == [10, 10]
    assert not set(train) & set(select_whole)
    # The cut: 40 validation crops are below 41, so the whole split does both.
    below = validation_parts(labels, replace(config, calibration_split_from=41), seed=0)
    assert np.array_equal(below[1], below[2])

    _, _, record = fit("cnn", crops, indices, config, None, seed=0)
    assert (record["validation_size"], record["selection_size"]) == (40, 20)
    assert record["calibration"]["method"] == "calibration-split"
    assert record["calibration"]["crops"] == 20
    _, _, record = fit("cnn", crops, indices, whole, None, seed=0)
    assert (record["validation_size"], record["selection_size"]) == (40, 40)
    assert record["calibration"]["method"] == "validation"
    assert record["calibration"]["crops"] == 40
