"""The paper's protocol: stratified K-fold cross-validation, the same folds for every
method, training sets of several sizes drawn from the other folds.

Writes ``results.json`` (the contract in docs/design.md, "Files (contract)") and,
through :mod:`training.report`, ``report.md`` (mean and min-max range over folds per
method and training size), ``learning-curves.png`` and ``reliability.png``. Every
score is of the calibrated probabilities the exported model would answer (each
method's temperature, fitted as ``topgan train classifier`` fits it); the expected
calibration error is also given before calibration (T = 1).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from models.manifest import Normalization, sha256_of
from models.methods import METHOD_NAMES, get_method
from models.provenance import portable_command, portable_path

from .calibration import softmax
from .config import ClassifierConfig
from .crossfit import calibrate_network
from .data import Crops, load_crops
from .export import export_onnx
from .features import fit_features
from .fit import fit, logits_of
from .knn import fit_knn
from .metrics import calibration_scores, fold_scores
from .pretrained import Pretrained, load_pretrained, pretrained_for, trunk_record
from .quantize import check_int8
from .report import write_report
from .splits import stratified_folds, stratified_indices

logger = logging.getLogger(__name__)


class Scores(NamedTuple):
    """One method's answers on a test fold."""

    probabilities: np.ndarray  # calibrated: what the exported model answers
    uncalibrated: np.ndarray  # the same at T = 1
    temperature: float
    train_seconds: float
    test_seconds_per_cell: float


def scores_for(
    method: str,
    crops: Crops,
    train: np.ndarray,
    test: np.ndarray,
    config: ClassifierConfig,
    pretrained: Pretrained | None,
    seed: int,
    int8: bool = False,
    int8_results: dict[str, float] | None = None,
) -> Scores:
    """The test crops' probabilities, calibrated and not, and the times (training
    includes fitting the temperature: for a network on few crops, the out-of-fold
    trainings of :mod:`training.crossfit`); with ``int8`` (network methods) the float
    and int8 ONNX test accuracies go into ``int8_results``."""
    int8_results = {} if int8_results is None else int8_results
    if get_method(method).features:
        start = time.perf_counter()
        fitted, _ = fit_features(
            crops.opd[train], crops.label[train], len(crops.class_names), crops.pixel_size_um, seed
        )
        trained = time.perf_counter()
        logits = fitted.logits(crops.opd[test])
        t = fitted.temperature
        seconds = (time.perf_counter() - trained) / len(test)
        return Scores(softmax(logits, t), softmax(logits), t, trained - start, seconds)
    if not get_method(method).needs_torch:
        start = time.perf_counter()
        knn = fit_knn(crops.opd[train], crops.label[train])
        trained = time.perf_counter()
        probabilities = knn.predict_proba(crops.opd[test])
        seconds = (time.perf_counter() - trained) / len(test)
        return Scores(probabilities, probabilities, 1.0, trained - start, seconds)
    start = time.perf_counter()
    model, norm, record = fit(method, crops, train, config, pretrained, seed)
    calibration = calibrate_network(method, crops, train, config, pretrained, seed, record)
    t = float(calibration["temperature"])
    train_seconds = time.perf_counter() - start
    x = torch.from_numpy(norm.apply(crops.opd[test]))[:, None]
    start = time.perf_counter()
    logits = logits_of(model, x).double().numpy()
    seconds = (time.perf_counter() - start) / len(test)
    if int8:
        int8_results.update(
            _int8_scores(model, norm, crops, train, x.numpy(), crops.label[test], config, t)
        )
    return Scores(softmax(logits, t), softmax(logits), t, train_seconds, seconds)


def _int8_scores(
    model: torch.nn.Module,
    norm: Normalization,
    crops: Crops,
    train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    config: ClassifierConfig,
    temperature: float,
) -> dict[str, float]:
    """Test-fold accuracy of the exported float model and of its int8 quantisation
    (calibrated on training crops only), as ``topgan train classifier --int8`` makes it."""
    x_train = norm.apply(crops.opd[train])[:, None]
    probe = torch.from_numpy(x_train[:16])
    fp32 = export_onnx(model, config.network.crop_size, probe, temperature)
    check = check_int8(fp32, x_train, x_test, y_test)
    return {"accuracy_onnx_fp32": check.accuracy_fp32, "accuracy_int8": check.accuracy_int8}


def evaluate(
    data: Path,
    out: Path,
    methods: Sequence[str],
    train_sizes: Sequence[int],
    folds: int,
    config: ClassifierConfig,
    preset: str,
    pretrained: Path | None = None,
    positive: str | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    command: str = "",
    int8_methods: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The paper's protocol; ``int8_methods`` are also exported, quantised and scored
    in ONNX Runtime on each test fold (float vs int8). ``pretrained`` is the trunk
    folder of the methods that start from one (each is checked against it before any
    training)."""
    unknown = [m for m in (*methods, *int8_methods) if m not in METHOD_NAMES]
    if unknown:
        raise ValueError(
            f"unknown or unavailable method(s) {unknown}; available: {', '.join(METHOD_NAMES)}"
        )
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    no_network = any(not get_method(m).trains_network for m in int8_methods)
    if no_network or not set(int8_methods) <= set(methods):
        raise ValueError(
            "--int8 takes network methods (not knn or features) that are also in --methods"
        )
    if any(get_method(m).imagenet for m in methods):
        from .imagenet import check_installed

        check_installed()
    uses_trunk = any(get_method(m).pretrained for m in methods)
    trunk = load_pretrained(pretrained) if pretrained and uses_trunk else None
    for method in methods:
        pretrained_for(method, trunk)
    crops = load_crops([data])
    if len(crops.class_names) != 2:
        raise ValueError(f"the protocol compares two classes; {data} has {crops.class_names}")
    positive = positive or crops.class_names[-1]
    if positive not in crops.class_names:
        raise ValueError(f"positive class {positive!r} is not one of {crops.class_names}")
    pos_index = crops.class_names.index(positive)
    fold_sets = stratified_folds(crops.label, folds, seed)
    results: list[dict[str, Any]] = []
    total, done = len(fold_sets) * len(train_sizes) * len(methods), 0
    for f, test in enumerate(fold_sets):
        pool = np.setdiff1d(np.flatnonzero(crops.label >= 0), test)
        for size in train_sizes:
            rng = np.random.default_rng([seed, f, size])
            train = pool[stratified_indices(crops.label[pool], size, rng, crops.class_names)]
            for method in methods:
                extra: dict[str, float] = {}
                scored = scores_for(
                    method,
                    crops,
                    train,
                    test,
                    config,
                    trunk,
                    seed + f,
                    int8=method in int8_methods,
                    int8_results=extra,
                )
                truth = crops.label[test] == pos_index
                results.append(
                    {
                        "method": method,
                        "train_size": int(size),
                        "fold": f,
                        **fold_scores(scored.probabilities, truth, pos_index),
                        "train_seconds": round(scored.train_seconds, 3),
                        "test_seconds_per_cell": scored.test_seconds_per_cell,
                        "temperature": round(scored.temperature, 4),
                        **calibration_scores(
                            scored.probabilities, scored.uncalibrated, truth, pos_index
                        ),
                        **extra,
                    }
                )
                done += 1
                if progress:
                    progress(done, total)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        # Paths relative to out, or names (see models.provenance).
        "data": portable_path(data, out),
        # The simulated crops depend on the installed numerical libraries: the bytes
        # say which runs of one task saw the same crops.
        "data_sha256": sha256_of(data),
        "folds": folds,
        "positive": positive,
        "classes": crops.class_names,
        "preset": preset,
        "seed": seed,
        **trunk_record(trunk, out),
        "command": portable_command(command),
    }
    (out / "results.json").write_text(
        json.dumps({"results": results, "meta": meta}, indent=2) + "\n"
    )
    write_report(out, results, meta)
    return results
