"""Scores of one test fold for a two-class protocol: accuracy, sensitivity and
specificity of the arg-max prediction, and the area under the ROC curve."""

from __future__ import annotations

import numpy as np


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
