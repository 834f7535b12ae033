"""Scores of one test fold for a two-class protocol: accuracy, sensitivity and
specificity of the arg-max prediction, the area under the ROC curve, and how well the
probabilities are calibrated.

The expected calibration error (ECE) is on the max-probability confidence, with
:data:`ECE_BINS` equal-width bins on [0, 1] (Guo et al. 2017; bin b holds the
confidences in (b / 15, (b + 1) / 15]): the mean |accuracy - confidence| of each bin,
weighted by the bin's share of the crops. With two classes the confidence is at
least 0.5, so the lower half of the bins stays empty.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Equal-width bins of the ECE and of the reliability diagrams.
ECE_BINS = 15


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def fold_scores(probabilities: np.ndarray, truth: np.ndarray, positive: int) -> dict[str, float]:
    """(N, classes) ``probabilities`` of the test crops, ``truth`` (N,) True for the
    positive class (column ``positive``) -> accuracy, sensitivity, specificity, auc
    (NaN for sensitivity or specificity when the fold lacks that class)."""
    predicted = probabilities.argmax(1) == positive
    negatives = ~truth
    return {
        "accuracy": float((predicted == truth).mean()),
        "sensitivity": float(predicted[truth].mean()) if truth.any() else np.nan,
        "specificity": float((~predicted[negatives]).mean()) if negatives.any() else np.nan,
        "auc": auc(probabilities[:, positive], truth),
    }


def reliability(probabilities: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """(bins, 3): per equal-width bin of the max-probability confidence, the crops in
    it, the sum of their confidences and how many were right (summable over folds)."""
    confidence = np.asarray(probabilities, dtype=np.float64).max(1)
    # Bin b holds confidences in (edge b, edge b + 1]; a confidence of 0 joins bin 0.
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table = np.zeros((bins, 3))
    np.add.at(table[:, 0], index, 1.0)
    np.add.at(table[:, 1], index, confidence)
    np.add.at(table[:, 2], index, np.asarray(correct, dtype=np.float64))
    return table


def ece_of(table: np.ndarray) -> float:
    """The expected calibration error of a :func:`reliability` table (NaN if empty)."""
    count = table[:, 0]
    total = count.sum()
    if total == 0:
        return float("nan")
    used = count > 0
    gap = np.abs(table[used, 2] - table[used, 1]) / count[used]
    return float((count[used] / total * gap).sum())


def ece_floor(table: np.ndarray) -> float:
    """The ECE a perfectly calibrated model would still show on a :func:`reliability`
    table's crops from sampling alone (NaN if empty): the expected ECE when each bin's
    right answers are Binomial(crops in the bin, the bin's mean confidence), every crop
    of a bin taken at its mean confidence (a bin is 1/15 wide, so this barely differs
    from each crop at its own). A measured ECE near it is as calibrated as this many
    crops can show; 160 crops at 90 % accuracy put it near 5 %."""
    from scipy.stats import binom

    count = table[:, 0]
    total = count.sum()
    if total == 0:
        return float("nan")
    expected = 0.0
    for n, confidence_sum in zip(count, table[:, 1], strict=True):
        if n == 0:
            continue
        n_crops = int(n + 0.5)  # a count, stored as a float
        c = min(max(float(confidence_sum) / n, 0.0), 1.0)
        k = np.arange(n_crops + 1)
        expected += n / total * float(np.sum(binom.pmf(k, n_crops, c) * np.abs(k / n_crops - c)))
    return float(expected)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of (N, C) ``probabilities`` against the true class indices ``labels``."""
    correct = np.asarray(probabilities).argmax(1) == np.asarray(labels)
    return ece_of(reliability(probabilities, correct, bins))


def calibration_scores(
    probabilities: np.ndarray, uncalibrated: np.ndarray, truth: np.ndarray, positive: int
) -> dict[str, Any]:
    """The ECE of a test fold's (calibrated) ``probabilities`` and of its
    ``uncalibrated`` ones (T = 1), and both :func:`reliability` tables as lists (the
    reliability diagrams sum them over folds); ``truth`` and ``positive`` as in
    :func:`fold_scores`."""
    scores: dict[str, Any] = {}
    for suffix, p in (("", probabilities), ("_uncalibrated", uncalibrated)):
        table = reliability(p, (p.argmax(1) == positive) == truth)
        scores["ece" + suffix] = ece_of(table)
        scores["reliability" + suffix] = [[int(n), round(c, 6), int(k)] for n, c, k in table]
    return scores
