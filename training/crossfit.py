"""The temperature of a network trained on few crops, from out-of-fold logits.

:func:`training.fit.fit` fits the temperature on its validation split. With few
labels that split is a handful of crops which also chose the epoch: on development
data (``docs/evaluation/dev/calibration.md``), at 10 and 40 labels every one of them
was right, so the fit either sent T to its lower bound (no prior) or left it at 1
(with the prior), while the networks were about 80 % right on the test folds at a
confidence near 99 %. Below :data:`CROSS_FIT_BELOW` validation crops the
temperature is therefore fitted on out-of-fold logits instead: :data:`CROSS_FIT_FOLDS`
more networks of the same method and schedule, each trained by ``fit`` on all but
one stratified fold of the training crops, answer for the crops of the fold left
out, so every training crop gets a prediction from a network that never saw it. It
costs that many trainings more; the model that is exported is still the one
trained once on all the crops. On fewer crops than
:data:`training.calibration.MIN_CROPS` nothing is trained and T stays 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .calibration import MIN_CROPS, fitted_record, too_few, uncalibrated
from .config import ClassifierConfig
from .data import Crops
from .fit import fit, logits_of
from .pretrained import Pretrained
from .splits import stratified_folds

logger = logging.getLogger(__name__)

#: Networks trained for the out-of-fold logits (fewer when a class has fewer crops).
CROSS_FIT_FOLDS = 5
#: A validation split of fewer crops than this does not fit the temperature.
CROSS_FIT_BELOW = 32


def out_of_fold_logits(
    method: str,
    crops: Crops,
    indices: np.ndarray,
    config: ClassifierConfig,
    start: Pretrained | None,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """(len(indices), classes) logits of the crops at ``indices``, each from a network
    trained on the other folds; and the number of folds (0: a class has fewer than two
    crops, no logits)."""
    labels = crops.label[indices]
    classes = len(crops.class_names)
    k = min([CROSS_FIT_FOLDS, *(int((labels == c).sum()) for c in range(classes))])
    if k < 2:
        return np.zeros((0, classes)), 0
    logits = np.zeros((len(indices), classes))
    for i, test in enumerate(stratified_folds(labels, k, seed)):
        train = np.setdiff1d(np.arange(len(indices)), test)
        model, norm, _ = fit(method, crops, indices[train], config, start, seed + 1 + i)
        x = torch.from_numpy(norm.apply(crops.opd[indices[test]]))[:, None]
        logits[test] = logits_of(model, x).double().numpy()
        logger.info("out-of-fold training %d/%d done", i + 1, k)
        if progress:
            progress(i + 1, k)
    return logits, k


def calibrate_network(
    method: str,
    crops: Crops,
    indices: np.ndarray,
    config: ClassifierConfig,
    start: Pretrained | None,
    seed: int,
    record: dict[str, Any],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The ``calibration`` record of a network ``fit`` trained on ``indices`` (its
    ``record``): fit's own, from the validation split, when that split has at least
    :data:`CROSS_FIT_BELOW` crops; else fitted on :func:`out_of_fold_logits`; T = 1
    without trainings on fewer crops than :data:`training.calibration.MIN_CROPS` or
    when a class has a single crop."""
    if record["validation_size"] >= CROSS_FIT_BELOW:
        return dict(record["calibration"])
    if len(indices) < MIN_CROPS:
        return uncalibrated(too_few(len(indices)))
    logger.info(
        "fitting the temperature on out-of-fold logits: up to %d more trainings", CROSS_FIT_FOLDS
    )
    started = time.monotonic()
    logits, folds = out_of_fold_logits(method, crops, indices, config, start, seed, progress)
    if folds == 0:
        return uncalibrated("a class has a single crop: no out-of-fold logits")
    labels = crops.label[indices].astype(np.int64)
    seconds = round(time.monotonic() - started, 2)
    return {**fitted_record(logits, labels, "out-of-fold"), "folds": folds, "seconds": seconds}
