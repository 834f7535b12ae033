"""``topgan train classifier``: one classifier of a method (see :mod:`models.methods`)
fitted (:mod:`training.fit`, :mod:`training.features` or :mod:`training.knn`), its
probabilities calibrated by a temperature (:mod:`training.calibration`), exported to
ONNX with the temperature inside (:mod:`training.export`), optionally quantised to int8
(:mod:`training.quantize`), and written as a model directory with its manifest
(:mod:`models.manifest`).

Stopping, model selection and the temperature use a validation split of the training
set only; the temperature of a network trained on few crops comes from out-of-fold
logits (:mod:`training.crossfit`), that of features from its cross-validation's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.manifest import Calibration, Manifest, Normalization, sha256_of, write_model_dir
from models.methods import get_method
from models.provenance import portable_command, portable_path

from .calibration import uncalibrated
from .config import ClassifierConfig
from .crossfit import calibrate_network
from .data import Crops, load_crops
from .export import export_onnx
from .features import fit_features
from .fit import fit
from .imagenet import pretrained_record
from .knn import train_knn
from .pretrained import load_pretrained, pretrained_for, trunk_record
from .quantize import INT8_TOLERANCE, check_int8
from .splits import split_validation, stratified_indices

logger = logging.getLogger(__name__)
#: A validation split of at most this many crops is said to mean little: one crop
#: moves its accuracy by a quarter or more.
TINY_VALIDATION = 4
#: Why knn has no temperature.
KNN_CALIBRATION = (
    "knn's probabilities are fractions of its 9 neighbours' votes, not a softmax: a "
    "temperature on their logarithms leaves a unanimous vote at 1 and 0, where its "
    "confident errors are"
)


def _int8_if_kept(
    onnx_bytes: bytes,
    crops: Crops,
    indices: np.ndarray,
    norm: Normalization,
    config: ClassifierConfig,
    seed: int,
    record: dict[str, Any],
) -> tuple[bytes, dict[str, Any]]:
    """The int8 model if :func:`training.quantize.int8_kept` keeps it on the validation
    split, else the float one; both accuracies go into the record."""
    labels = crops.label[indices]
    # The same split as fit(): the validation crops never calibrate the quantiser.
    train_pos, val_pos = split_validation(labels, config.val_fraction, np.random.default_rng(seed))
    x = norm.apply(crops.opd[indices])[:, None]
    check = check_int8(onnx_bytes, x[train_pos], x[val_pos], labels[val_pos])
    record = {
        **record,
        "precision": "int8" if check.kept else "fp32",
        "validation_accuracy_fp32": round(check.accuracy_fp32, 4),
        "validation_accuracy_int8": round(check.accuracy_int8, 4),
    }
    return (check.int8 if check.kept else onnx_bytes), record


def train_classifier(
    method: str,
    data: Path,
    out: Path,
    config: ClassifierConfig,
    preset: str,
    pretrained: Path | None = None,
    seed: int = 0,
    train_size: int | None = None,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    command: str = "",
    int8: bool = False,
) -> Path:
    """Train, export to ONNX and write a model directory with its manifest.

    With ``int8`` the exported model is also statically quantised (calibrated on the
    training crops) and the int8 model is kept only if its validation accuracy stays
    within 0.5 points of the float one; both accuracies go into the manifest. The
    ``features`` method stays in float whatever ``int8`` says: its thresholds, sort and
    moments of OPD in nm are not what 8-bit activations can carry, and its cost is
    not in matrix products that int8 would speed up.

    ``pretrained`` is the folder of a pretrained trunk (training.pretrained), for the
    methods that start from one; the others do not read it.
    """
    spec = get_method(method)
    start = pretrained_for(
        method, load_pretrained(pretrained) if pretrained and spec.pretrained else None
    )
    crops = load_crops([data])
    if len(crops.class_names) < 2:
        raise ValueError(f"{data} has classes {crops.class_names}: a classifier needs at least two")
    if crops.opd.shape[1] != config.network.crop_size:
        raise ValueError(
            f"the crops are {crops.opd.shape[1]} px, the network takes {config.network.crop_size}"
        )
    indices = stratified_indices(
        crops.label, train_size, np.random.default_rng(seed), crops.class_names
    )
    features: list[dict[str, Any]] | None = None
    norm_source: str | None = None
    if spec.features:
        fitted, record = fit_features(
            crops.opd[indices],
            crops.label[indices],
            len(crops.class_names),
            crops.pixel_size_um,
            seed,
        )
        features = record.pop("features")
        calibration = record.pop("calibration")
        norm = fitted.norm
        probe = torch.from_numpy(norm.apply(crops.opd[indices[:16]]))[:, None]
        onnx_bytes = export_onnx(fitted.model, config.network.crop_size, probe, fitted.temperature)
        record["precision"] = "fp32"
    elif not spec.needs_torch:
        labels = crops.label[indices]
        onnx_bytes, norm, record = train_knn(
            crops.opd[indices], labels, len(crops.class_names), config.val_fraction, seed
        )
        calibration = uncalibrated(KNN_CALIBRATION)
    else:
        model, norm, record = fit(method, crops, indices, config, start, seed, progress)
        calibration = calibrate_network(method, crops, indices, config, start, seed, record)
        del record["calibration"]
        norm_source = record.pop("normalization_source")
        # Parity on real crops: noise can saturate the softmax and hide differences.
        probe = torch.from_numpy(norm.apply(crops.opd[indices[:16]]))[:, None]
        onnx_bytes = export_onnx(model, config.network.crop_size, probe, calibration["temperature"])
        if int8:
            onnx_bytes, record = _int8_if_kept(
                onnx_bytes, crops, indices, norm, config, seed, record
            )
    now = datetime.now(UTC)
    size = config.network.crop_size
    manifest = Manifest(
        name=name or f"{'-'.join(crops.class_names)}-{method}",
        version=now.strftime("%Y%m%d-%H%M%S"),
        created=now.isoformat(timespec="seconds"),
        classes=crops.class_names,
        # One-channel OPD in; a colour encoding (channels 3) happens inside the model.
        input_shape=(1, size, size),
        pixel_size_um=crops.pixel_size_um,
        normalization=norm,
        method=method,
        training={
            # Paths relative to the model directory, or names (see models.provenance).
            "data": portable_path(data, out),
            "data_sha256": sha256_of(data),
            "train_size": record["train_size"],
            "seed": seed,
            "preset": preset,
            **trunk_record(start, out),
            # Where the input's OPD scale came from (training.fit.input_normalization).
            # Network methods only (features and knn have their own fixed inputs).
            "normalization_source": norm_source,
            "imagenet_weights": pretrained_record() if spec.imagenet else None,
            # features: each one's name, unit, training mean and std, coefficients.
            "features": features,
            "network": asdict(config.network),
            "config": asdict(config),
            "command": portable_command(command),
        },
        metrics={k: v for k, v in record.items() if k != "train_size"},
        calibration=Calibration.from_dict(calibration),
    )
    write_model_dir(out, onnx_bytes, manifest)
    return out


def result_lines(manifest: Manifest, int8: bool) -> list[str]:
    """What ``topgan train classifier`` says at its end about the model it wrote
    (``manifest``; ``int8``: whether --int8 was asked): its validation (or, for
    features, cross-validation) figures, a plain word when they rest on a handful of
    crops, its temperature (:func:`calibration_line`), and its precision and why."""
    m = manifest.metrics
    lines = []
    if manifest.method == "features":
        crops, what = manifest.training["train_size"], "cross-validation"
        if m.get("cv_accuracy") is None:
            lines.append(
                f"cross-validation: none (a class has fewer than two crops), "
                f"L2 {m['l2']:g} (the default)"
            )
        else:
            lines.append(
                f"cross-validation on the {crops} training crops: accuracy "
                f"{m['cv_accuracy']:.4f}, log-loss {m['cv_log_loss']:.4f}, L2 {m['l2']:g}"
            )
    else:
        crops, what = m.get("selection_size", m["validation_size"]), "validation"
        line = f"validation: accuracy {m['validation_accuracy']:.4f} on {crops} crops"
        if "validation_loss" in m:
            line += f", loss {m['validation_loss']:.4f}"
            runs = f"{m['epochs_run']} epoch{'s' if m['epochs_run'] != 1 else ''} run"
            if m["selection_from_epoch"]:
                line += (
                    f", best epoch {m['best_epoch']} "
                    f"(selection from epoch {m['selection_from_epoch']}, {runs})"
                )
            else:
                line += f"; never left the untrained plateau ({runs}: the last model is kept)"
        lines.append(line)
    if 0 < crops <= TINY_VALIDATION:
        lines.append(
            f"{what} on {crops} crops cannot mean much: one crop moves the accuracy by "
            f"{100 / crops:.0f} points; train on more crops for figures that do"
        )
    lines.append(calibration_line(manifest))
    if "validation_accuracy_int8" in m:
        fp32, q = m["validation_accuracy_fp32"], m["validation_accuracy_int8"]
        points = f"{100 * INT8_TOLERANCE:g} points"
        if m["precision"] == "int8":
            lines.append(
                f"precision: int8, kept (validation accuracy {q:.4f}, fp32 {fp32:.4f}: "
                f"within {points})"
            )
        else:
            lines.append(
                f"precision: fp32; int8 refused (validation accuracy {q:.4f}, fp32 "
                f"{fp32:.4f}: more than {points} lost)"
            )
    elif int8:
        lines.append(f"precision: fp32 (--int8 is not for the {manifest.method} method)")
    else:
        lines.append("precision: fp32")
    lines.append(f"training: {m['train_seconds']:g} s on {manifest.training['train_size']} crops")
    return lines


def calibration_line(manifest: Manifest) -> str:
    """The result line of the model's temperature: what it was fitted on and the
    expected calibration error there before and after, or why there is none."""
    c = manifest.calibration
    if c is None or c.method == "none":
        why = c.details.get("note", "") if c is not None else "a model from before calibration"
        return f"temperature: 1, uncalibrated: {why}"
    d = c.details
    ece = (
        f"ECE {100 * d['ece_before']:.1f} % -> {100 * d['ece_after']:.1f} % there, {d['bins']} bins"
    )
    if c.method == "validation":
        return f"temperature: {c.temperature:.3f}, fitted on {d['crops']} validation crops ({ece})"
    if c.method == "calibration-split":
        return (
            f"temperature: {c.temperature:.3f}, fitted on {d['crops']} validation crops "
            f"that did not choose the epoch ({ece})"
        )
    cost = f", {d['seconds']:g} s of training" if "seconds" in d else ""
    return (
        f"temperature: {c.temperature:.3f}, fitted on out-of-fold logits of {d['crops']} crops "
        f"({d['folds']} folds{cost}; {ece})"
    )
