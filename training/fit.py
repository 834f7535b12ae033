"""Fitting one network classifier (every method but knn and features): the untrained model of its
method, then training with early stopping and model selection on a validation split of
the training set only, both starting once the model has left the untrained plateau;
then the temperature of its probabilities, fitted on the same validation split, or
on a half of it the selection never saw once the split is large enough
(``ClassifierConfig.calibration_split_from``; :mod:`training.calibration`;
:mod:`training.crossfit` when the split is small)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from models.manifest import Normalization
from models.methods import NETWORK_METHOD_NAMES, get_method

from .calibration import fitted_record, uncalibrated
from .config import ClassifierConfig
from .data import Crops, dihedral
from .imagenet import ImageNetClassifier
from .networks import Classifier
from .pretrained import Pretrained, pretrained_for
from .splits import split_calibration, split_validation

#: Training has left the untrained plateau once the loss on its training crops is at
#: most this fraction of ln(classes) (0.52 for two classes, against 0.69 untrained).
PLATEAU_EXIT = 0.75


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s logits of normalised crops ``x`` (N, 1, H, W), in eval mode."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])


def _loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = logits_of(model, x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(1) == y).float().mean().item()
    return loss, accuracy


def calibrate(
    model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor, method: str = "validation"
) -> dict[str, Any]:
    """The ``calibration`` record of a trained ``model``: its temperature fitted on
    held-out crops: the validation crops (``method`` "validation": held out from the
    weights, though they chose the epoch) or the half of them that did not
    ("calibration-split"). A split too small for either
    (:data:`training.crossfit.CROSS_FIT_BELOW`) is replaced by out-of-fold logits by
    :func:`training.crossfit.calibrate_network`."""
    if len(y_val) == 0:
        return uncalibrated("no validation crops (a class has a single crop)")
    logits = logits_of(model, x_val).double().numpy()
    return fitted_record(logits, y_val.numpy(), method)


def validation_parts(
    labels: np.ndarray, config: ClassifierConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, selection, calibration) positions into the training crops' ``labels``,
    as :func:`fit` draws them for ``seed``: the validation split, and the halves of it
    that choose the epoch and fit the temperature (both the whole split below
    ``config.calibration_split_from`` crops)."""
    train_pos, val_pos = split_validation(labels, config.val_fraction, np.random.default_rng(seed))
    select_pos, calib_pos = split_calibration(labels, val_pos, config.calibration_split_from, seed)
    return train_pos, select_pos, calib_pos


def input_normalization(
    start: Pretrained | None, train_opd_nm: np.ndarray
) -> tuple[Normalization, str]:
    """The network's OPD scale and where it came from. A pretrained trunk's scale
    travels with it, physically fixed, so its filters see OPD as they learnt it,
    unless it would clip these cells: a range fitted to the training crops that
    reaches beyond the pretraining's (the bundled sperm GAN's -10..90 nm against
    cells of 300-700 nm) would flatten every cell's body to one value, and on the dev
    data that cost 3-9 points against refitting (docs/evaluation/dev/ssl.md); then,
    and without a trunk, the range is fitted to the training crops."""
    fitted = Normalization.fit(train_opd_nm)
    if start is None:
        return fitted, "training crops"
    own = start.normalization
    if own.opd_min_nm <= fitted.opd_min_nm and fitted.opd_max_nm <= own.opd_max_nm:
        return own, f"pretraining ({start.kind})"
    return fitted, (
        f"training crops: the {start.kind} pretraining's {own.opd_min_nm:g}..{own.opd_max_nm:g} "
        f"nm would clip these cells ({fitted.opd_min_nm:g}..{fitted.opd_max_nm:g} nm)"
    )


def build_model(
    method: str, classes: int, config: ClassifierConfig, start: Pretrained | None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The untrained classifier of ``method`` (its trunk pretrained: ``start`` for the
    topgan and ssl methods, ImageNet's for imagenet) and its optimizer's parameter
    groups. The trunk is fine-tuned at the head's rate: on the dev data neither a
    tenth of it nor a head-only start helped the SSL trunk beyond fold noise
    (docs/evaluation/dev/ssl.md), nor the GAN's before (docs/evaluation/README.md)."""
    net = config.network
    spec = get_method(method)
    if spec.imagenet:
        if net.channels != 1:
            raise ValueError("the colour encoding (channels 3) is for the DCGAN-based methods")
        imagenet = ImageNetClassifier(net, classes, config.hidden, config.dropout)
        return imagenet, imagenet.param_groups(config.lr, config.trunk_lr_factor)
    model = Classifier(net, classes, config.hidden, config.dropout)
    if start is not None:
        if start.network != net:
            raise ValueError(
                f"the trunk in {start.directory} has network {start.network}, the classifier "
                f"{net}: use its preset and --channels"
            )
        model.trunk.load_state_dict(start.trunk)
    return model, [{"params": list(model.parameters())}]


def fit(
    method: str,
    crops: Crops,
    indices: np.ndarray,
    config: ClassifierConfig,
    pretrained: Pretrained | None,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, Normalization, dict[str, Any]]:
    """Train one classifier on ``crops`` at ``indices``; return it (it answers logits),
    the normalisation and a record of the training (validation accuracy, epochs,
    seconds, and ``calibration``: the temperature its logits are to be divided by).

    A method with a pretrained trunk keeps the pretraining's normalisation where it
    covers the training crops (:func:`input_normalization`); the others fit one on
    their training crops."""
    if method not in NETWORK_METHOD_NAMES:
        raise ValueError(f"method must be one of {', '.join(NETWORK_METHOD_NAMES)}, got {method!r}")
    torch.manual_seed(seed)
    aug_rng = torch.Generator().manual_seed(seed)
    start = pretrained_for(method, pretrained)
    model, groups = build_model(method, len(crops.class_names), config, start)
    labels = crops.label[indices]
    train_pos, val_pos, calib_pos = validation_parts(labels, config, seed)
    held_out = not np.array_equal(calib_pos, val_pos)  # the split was halved
    norm, norm_source = input_normalization(start, crops.opd[indices[train_pos]])
    x = torch.from_numpy(norm.apply(crops.opd[indices]))[:, None]
    y = torch.from_numpy(labels.astype(np.int64))
    # x_val, y_val choose the epoch (and stop training); the temperature is fitted
    # on calib_pos, the same crops unless the split was halved.
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
            selecting = _loss_and_accuracy(model, x_fit, y_fit)[0] <= plateau
            if not selecting:
                continue
            selected_from = epoch
        val_loss, val_acc = _loss_and_accuracy(model, x_val, y_val)
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
        best, best_state, best_epoch = (
            _loss_and_accuracy(model, x_val, y_val),
            model.state_dict(),
            epoch,
        )
    model.load_state_dict(best_state)
    model.eval()
    record = {
        "train_size": len(indices),
        "validation_size": len(val_pos) + (len(calib_pos) if held_out else 0),
        "selection_size": len(val_pos),
        "validation_accuracy": round(best[1], 4),
        "validation_loss": round(best[0], 4),
        "best_epoch": best_epoch,
        # The first epoch off the plateau, where selection began (0: never reached).
        "selection_from_epoch": selected_from,
        "epochs_run": epoch,
        "train_seconds": round(time.monotonic() - started, 2),
        "calibration": (
            calibrate(model, x[calib_pos], y[calib_pos], "calibration-split")
            if held_out
            else calibrate(model, x_val, y_val)
        ),
        "normalization_source": norm_source,
    }
    return model, norm, record
