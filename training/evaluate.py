"""The paper's protocol: stratified K-fold cross-validation, the same folds for every
method, training sets of several sizes drawn from the other folds.

Writes ``results.json`` (DESIGN's contract), ``report.md`` (mean and min-max range
over folds per method and training size) and ``learning-curves.png``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .classifier import METHODS, fit, stratified_indices
from .config import ClassifierConfig
from .data import Crops, load_crops, normalize

logger = logging.getLogger(__name__)


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint test sets, each with the classes in their overall proportion."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for c in np.unique(labels[labels >= 0]):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for i, chunk in enumerate(np.array_split(idx, folds)):
            parts[i].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


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


def scores_for(
    method: str, crops: Crops, train: np.ndarray, test: np.ndarray, config: ClassifierConfig,
    gan_dir: Path | None, seed: int,
) -> tuple[np.ndarray, float, float]:  # fmt: skip
    """(test probabilities, train seconds, test seconds per cell)."""
    if method == "knn":
        from .data import fit_normalization
        from .knn import KNNClassifier

        start = time.perf_counter()
        norm = fit_normalization(crops.opd[train])
        knn = KNNClassifier(9).fit(normalize(crops.opd[train], norm), crops.label[train])
        trained = time.perf_counter()
        probabilities = knn.predict_proba(normalize(crops.opd[test], norm))
        return probabilities, trained - start, (time.perf_counter() - trained) / len(test)
    model, norm, record = fit(method, crops, train, config, gan_dir, seed)
    x = torch.from_numpy(normalize(crops.opd[test], norm))[:, None]
    start = time.perf_counter()
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1).numpy()
    return probabilities, float(record["train_seconds"]), (time.perf_counter() - start) / len(test)


def evaluate(
    data: Path,
    out: Path,
    methods: Sequence[str],
    train_sizes: Sequence[int],
    folds: int,
    config: ClassifierConfig,
    preset: str,
    gan_dir: Path | None = None,
    positive: str | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    command: str = "",
) -> list[dict[str, Any]]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(
            f"unknown or unavailable method(s) {unknown}; available: {', '.join(METHODS)}"
        )
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if "imagenet" in methods:
        from .imagenet import check_installed

        check_installed()
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
            train = pool[stratified_indices(crops.label[pool], size, rng)]
            for method in methods:
                probabilities, train_s, test_s = scores_for(
                    method, crops, train, test, config, gan_dir, seed + f
                )
                truth = crops.label[test] == pos_index
                predicted = probabilities.argmax(1) == pos_index
                negatives = ~truth
                sensitivity = float(predicted[truth].mean()) if truth.any() else np.nan
                specificity = float((~predicted[negatives]).mean()) if negatives.any() else np.nan
                results.append({
                    "method": method,
                    "train_size": int(size),
                    "fold": f,
                    "accuracy": float((predicted == truth).mean()),
                    "sensitivity": sensitivity,
                    "specificity": specificity,
                    "auc": auc(probabilities[:, pos_index], truth),
                    "train_seconds": round(train_s, 3),
                    "test_seconds_per_cell": test_s,
                })  # fmt: skip
                done += 1
                if progress:
                    progress(done, total)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "data": str(data),
        "folds": folds,
        "positive": positive,
        "classes": crops.class_names,
        "preset": preset,
        "seed": seed,
        "gan": str(gan_dir) if gan_dir else None,
        "command": command,
    }
    (out / "results.json").write_text(
        json.dumps({"results": results, "meta": meta}, indent=2) + "\n"
    )
    write_report(out, results, meta)
    return results


def summarise(
    results: list[dict[str, Any]],
) -> dict[tuple[str, int], dict[str, tuple[float, float, float]]]:
    table: dict[tuple[str, int], dict[str, tuple[float, float, float]]] = {}
    for key in sorted({(r["method"], r["train_size"]) for r in results}):
        rows = [r for r in results if (r["method"], r["train_size"]) == key]
        table[key] = {
            m: (
                float(np.nanmean([r[m] for r in rows])),
                float(np.nanmin([r[m] for r in rows])),
                float(np.nanmax([r[m] for r in rows])),
            )
            for m in ("accuracy", "sensitivity", "specificity", "auc")
        }
    return table


def write_report(out: Path, results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarise(results)
    lines = [
        f"# Evaluation: {' vs '.join(meta['classes'])} (positive class {meta['positive']})",
        "",
        f"{meta['folds']}-fold stratified cross-validation, the same folds for every method; "
        f"preset {meta['preset']}, seed {meta['seed']}. Mean [min, max] over folds.",
        f"Command: `{meta['command']}`",
        "",
        "| method | train size | accuracy | sensitivity | specificity | AUC |",
        "|---|---|---|---|---|---|",
    ]
    for (method, size), m in table.items():
        cells = [f"{100 * v[0]:.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]" for v in m.values()]
        lines.append(f"| {method} | {size} | " + " | ".join(cells) + " |")
    lines += ["", "![learning curves](learning-curves.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({k[0] for k in table}):
        sizes = sorted(k[1] for k in table if k[0] == method)
        mean = [100 * table[(method, s)]["accuracy"][0] for s in sizes]
        lo = [100 * table[(method, s)]["accuracy"][1] for s in sizes]
        hi = [100 * table[(method, s)]["accuracy"][2] for s in sizes]
        ax.plot(sizes, mean, marker="o", label=method)
        ax.fill_between(sizes, lo, hi, alpha=0.15)
    ax.set_xlabel("training images")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning-curves.png", dpi=80)
    plt.close(fig)
