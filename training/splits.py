"""How crops are drawn: balanced training sets, the validation split inside a training
set, and the protocol's cross-validation folds (NumPy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_indices(
    labels: np.ndarray,
    size: int | None,
    rng: np.random.Generator,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """``size`` indices balanced over the classes (all labeled ones when None);
    ``class_names`` (what each label indexes) name the classes in errors."""
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
            name = class_names[c] if class_names is not None else f"class {c}"
            raise ValueError(
                f"{name} has {len(pool)} crops, {per_class} needed for a balanced "
                f"train size of {size}"
            )
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


def split_calibration(
    labels: np.ndarray, val_pos: np.ndarray, split_from: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(selection, calibration) positions into ``labels`` from the validation
    positions ``val_pos``: stratified halves once there are at least ``split_from`` of
    them (drawn with their own generator, so the training split is the same either
    way), else ``val_pos`` for both (``split_from`` None: always)."""
    if split_from is None or len(val_pos) < split_from:
        return val_pos, val_pos
    select, calibrate = split_validation(labels[val_pos], 0.5, np.random.default_rng([seed, 2]))
    return np.sort(val_pos[select]), np.sort(val_pos[calibrate])


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint test sets, each with the classes in their overall proportion."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for c in np.unique(labels[labels >= 0]):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for i, chunk in enumerate(np.array_split(idx, folds)):
            parts[i].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
