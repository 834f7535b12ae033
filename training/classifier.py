"""Classifiers: CNN from scratch, TOP-GAN (the pretrained discriminator fine-tuned), with
or without dihedral augmentation, or EfficientNet-Lite0 pretrained on ImageNet
(``imagenet``, see :mod:`training.imagenet`); exported to ONNX with a manifest.

Stopping and model selection use a validation split of the training set only.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from models.manifest import Manifest, Normalization, sha256_of, write_model_dir
from models.methods import TORCH_METHOD_NAMES, get_method

from .config import ClassifierConfig
from .data import Crops, dihedral, load_crops
from .gan import load_gan, trunk_weights
from .imagenet import ImageNetClassifier, pretrained_record
from .networks import Classifier, WithSoftmax

logger = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4
#: An int8 model is kept only within half a point of the float model's accuracy.
INT8_TOLERANCE = 0.005
#: Training has left the untrained plateau once the loss on its training crops is at
#: most this fraction of ln(classes) (0.52 for two classes, against 0.69 untrained).
PLATEAU_EXIT = 0.75


def stratified_indices(
    labels: np.ndarray, size: int | None, rng: np.random.Generator
) -> np.ndarray:
    """``size`` indices balanced over the classes (all labeled ones when None)."""
    labeled = np.flatnonzero(labels >= 0)
    if size is None:
        return rng.permutation(labeled)
    classes = np.unique(labels[labeled])
    per_class = size // len(classes)
    if per_class < 1:
        raise ValueError(f"train size {size} is smaller than the number of classes {len(classes)}")
    picks = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise ValueError(f"class {c} has {len(pool)} crops, {per_class} needed")
        picks.append(rng.choice(pool, per_class, replace=False))
    return rng.permutation(np.concatenate(picks))


def split_validation(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) positions into ``labels``; at least one of each
    class in validation."""
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, round(fraction * len(idx))) if len(idx) > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    return np.concatenate(train), np.concatenate(val)


def export_onnx(model: nn.Module, crop_size: int, probe: torch.Tensor | None = None) -> bytes:
    """ONNX (opset 18, IR <= 10 for ONNX Runtime 1.31) with a dynamic batch axis,
    checked against PyTorch on ``probe`` (normalised crops; default: noise): the
    largest difference must stay under 1e-4."""
    import onnxruntime as ort

    wrapped = WithSoftmax(model).eval()
    example = torch.zeros(2, 1, crop_size, crop_size)
    program = torch.onnx.export(
        wrapped,
        (example,),
        dynamo=True,
        verbose=False,
        input_names=["x"],
        output_names=["probabilities"],
        opset_version=18,
        dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=65536)}},
    )
    assert program is not None
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, 10)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    if probe is None:
        probe = torch.rand(5, 1, crop_size, crop_size) * 2 - 1
    with torch.no_grad():
        expected = wrapped(probe).numpy()
    got = session.run(None, {session.get_inputs()[0].name: probe.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(
            f"ONNX export differs from PyTorch by {diff:.2e} (tolerance {PARITY_TOLERANCE})"
        )
    logger.info("ONNX export matches PyTorch within %.1e (%d crops)", diff, len(probe))
    return data


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])
        loss = nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(1) == y).float().mean().item()
    return loss, accuracy


def build_model(
    method: str, classes: int, config: ClassifierConfig, gan_dir: Path | None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The untrained classifier of ``method`` (its trunk pretrained for topgan and
    imagenet) and its optimizer's parameter groups."""
    net = config.network
    spec = get_method(method)
    if spec.imagenet:
        if net.channels != 1:
            raise ValueError("the colour encoding (channels 3) is for the DCGAN-based methods")
        imagenet = ImageNetClassifier(net, classes, config.hidden, config.dropout)
        return imagenet, imagenet.param_groups(config.lr, config.trunk_lr_factor)
    model = Classifier(net, classes, config.hidden, config.dropout)
    if spec.gan_trunk:
        if gan_dir is None:
            raise ValueError(f"method {method} needs --gan DIR (a pretrained DCGAN)")
        state, gan_net = load_gan(gan_dir)
        if gan_net != net:
            raise ValueError(
                f"the GAN in {gan_dir} has network {gan_net}, the classifier {net}: use its "
                "preset and --channels"
            )
        model.trunk.load_state_dict(trunk_weights(state))
    return model, [{"params": list(model.parameters())}]


def fit(
    method: str,
    crops: Crops,
    indices: np.ndarray,
    config: ClassifierConfig,
    gan_dir: Path | None,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, Normalization, dict[str, Any]]:
    """Train one classifier on ``crops`` at ``indices``; return it, the normalisation and
    a record of the training (validation accuracy, epochs, seconds)."""
    if method not in TORCH_METHOD_NAMES:
        raise ValueError(f"method must be one of {', '.join(TORCH_METHOD_NAMES)}, got {method!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    aug_rng = torch.Generator().manual_seed(seed)
    model, groups = build_model(method, len(crops.class_names), config, gan_dir)
    labels = crops.label[indices]
    train_pos, val_pos = split_validation(labels, config.val_fraction, rng)
    norm = Normalization.fit(crops.opd[indices[train_pos]])
    x = torch.from_numpy(norm.apply(crops.opd[indices]))[:, None]
    y = torch.from_numpy(labels.astype(np.int64))
    x_train, y_train, x_val, y_val = x[train_pos], y[train_pos], x[val_pos], y[val_pos]
    optimizer = torch.optim.Adam(groups, lr=config.lr)
    augment = get_method(method).augment
    best: tuple[float, float] = (math.inf, 0.0)
    best_state: dict[str, Any] | None = None
    best_epoch, stale, step = 0, 0, 0
    steps_per_epoch = max(1, math.ceil(len(x_train) / config.batch_size))
    total = max(config.epochs * steps_per_epoch, config.min_steps)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    # Early stopping and model selection start once the model has left the untrained
    # plateau (every crop near 1/classes: loss ln C), judged on its own training crops:
    # with one or two validation crops a class, an untrained model's ln 2 can beat a
    # trained one that misses a single crop, and patience counted in epochs (one step
    # each at 10 crops) would end training there.
    plateau = PLATEAU_EXIT * math.log(len(crops.class_names))
    # At most 512 training crops, evenly spread (train_pos runs class by class).
    fit_pos = torch.from_numpy(np.unique(np.linspace(0, len(x_train) - 1, 512).astype(np.int64)))
    x_fit, y_fit = x_train[fit_pos], y_train[fit_pos]
    selecting, selected_from = False, 0
    started = time.monotonic()
    epoch = 0
    while step < total:
        model.train()
        order = torch.randperm(len(x_train), generator=aug_rng)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            batch = dihedral(x_train[idx], aug_rng) if augment else x_train[idx]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch), y_train[idx]).backward()
            optimizer.step()
            step += 1
            if progress:
                progress(step, total)
        epoch += 1
        if not selecting:
            selecting = _evaluate(model, x_fit, y_fit)[0] <= plateau
            if not selecting:
                continue
            selected_from = epoch
        val_loss, val_acc = _evaluate(model, x_val, y_val)
        if (val_loss, -val_acc) < (best[0], -best[1]):
            best, best_state, best_epoch, stale = (
                (val_loss, val_acc),
                copy.deepcopy(model.state_dict()),
                epoch,
                0,
            )
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is None:  # never left the plateau: the last model, as good as any
        best, best_state, best_epoch = _evaluate(model, x_val, y_val), model.state_dict(), epoch
    model.load_state_dict(best_state)
    model.eval()
    record = {
        "train_size": len(indices),
        "validation_size": len(val_pos),
        "validation_accuracy": round(best[1], 4),
        "validation_loss": round(best[0], 4),
        "best_epoch": best_epoch,
        # The first epoch off the plateau, where selection began (0: never reached).
        "selection_from_epoch": selected_from,
        "epochs_run": epoch,
        "train_seconds": round(time.monotonic() - started, 2),
    }
    return model, norm, record


def fit_knn(
    crops: Crops, indices: np.ndarray, config: ClassifierConfig, seed: int
) -> tuple[bytes, Normalization, dict[str, Any]]:
    """K = 9 nearest neighbours in image space: validation accuracy on the usual split,
    then the ONNX graph holding every training crop."""
    from .knn import KNNClassifier, knn_onnx

    rng = np.random.default_rng(seed)
    labels = crops.label[indices]
    norm = Normalization.fit(crops.opd[indices])
    x = norm.apply(crops.opd[indices])
    train_pos, val_pos = split_validation(labels, config.val_fraction, rng)
    started = time.monotonic()
    knn = KNNClassifier(9).fit(x[train_pos], labels[train_pos])
    accuracy = float((knn.predict(x[val_pos]) == labels[val_pos]).mean())
    data = knn_onnx(x[:, None], labels.astype(np.int64), len(crops.class_names))
    record = {
        "train_size": len(indices),
        "validation_size": len(val_pos),
        "validation_accuracy": round(accuracy, 4),
        "train_seconds": round(time.monotonic() - started, 2),
    }
    return data, norm, record


def _try_int8(
    onnx_bytes: bytes,
    crops: Crops,
    indices: np.ndarray,
    norm: Normalization,
    config: ClassifierConfig,
    seed: int,
    record: dict[str, Any],
) -> tuple[bytes, dict[str, Any]]:
    """The int8 model if it keeps the validation accuracy within 0.5 points, else fp32."""
    from .quantize import onnx_accuracy, quantize_int8

    labels = crops.label[indices]
    # The same split as fit(): the validation crops never calibrate the quantiser.
    train_pos, val_pos = split_validation(labels, config.val_fraction, np.random.default_rng(seed))
    x = norm.apply(crops.opd[indices])[:, None]
    quantized = quantize_int8(onnx_bytes, x[train_pos[:512]])
    acc_fp32 = onnx_accuracy(onnx_bytes, x[val_pos], labels[val_pos])
    acc_int8 = onnx_accuracy(quantized, x[val_pos], labels[val_pos])
    keep = acc_int8 >= acc_fp32 - INT8_TOLERANCE
    logger.info(
        "int8: validation accuracy %.4f (fp32 %.4f): %s",
        acc_int8,
        acc_fp32,
        "kept" if keep else "refused, the fp32 model is kept",
    )
    record = {
        **record,
        "precision": "int8" if keep else "fp32",
        "validation_accuracy_fp32": round(acc_fp32, 4),
        "validation_accuracy_int8": round(acc_int8, 4),
    }
    return (quantized if keep else onnx_bytes), record


def train_classifier(
    method: str,
    data: Path,
    out: Path,
    config: ClassifierConfig,
    preset: str,
    gan_dir: Path | None = None,
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
    within 0.5 points of the float one; both accuracies go into the manifest.
    """
    crops = load_crops([data])
    if len(crops.class_names) < 2:
        raise ValueError(f"{data} has classes {crops.class_names}: a classifier needs at least two")
    if crops.opd.shape[1] != config.network.crop_size:
        raise ValueError(
            f"the crops are {crops.opd.shape[1]} px, the network takes {config.network.crop_size}"
        )
    spec = get_method(method)
    indices = stratified_indices(crops.label, train_size, np.random.default_rng(seed))
    if not spec.needs_torch:
        onnx_bytes, norm, record = fit_knn(crops, indices, config, seed)
    else:
        model, norm, record = fit(method, crops, indices, config, gan_dir, seed, progress)
        # Parity on real crops: noise can saturate the softmax and hide differences.
        probe = torch.from_numpy(norm.apply(crops.opd[indices[:16]]))[:, None]
        onnx_bytes = export_onnx(model, config.network.crop_size, probe)
        if int8:
            onnx_bytes, record = _try_int8(onnx_bytes, crops, indices, norm, config, seed, record)
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
            "data": str(data),
            "data_sha256": sha256_of(data),
            "train_size": record["train_size"],
            "seed": seed,
            "preset": preset,
            "gan": str(gan_dir) if gan_dir else None,
            "gan_sha256": sha256_of(gan_dir / "gan.pt") if gan_dir else None,
            "imagenet_weights": pretrained_record() if spec.imagenet else None,
            "network": asdict(config.network),
            "config": asdict(config),
            "command": command,
        },
        metrics={k: v for k, v in record.items() if k != "train_size"},
    )
    write_model_dir(out, onnx_bytes, manifest)
    return out
