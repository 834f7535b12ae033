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

from models.manifest import Normalization
from models.methods import METHOD_NAMES, get_method

from .classifier import INT8_TOLERANCE, fit, stratified_indices
from .config import ClassifierConfig
from .data import Crops, load_crops

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
    method: str,
    crops: Crops,
    train: np.ndarray,
    test: np.ndarray,
    config: ClassifierConfig,
    gan_dir: Path | None,
    seed: int,
    int8: bool = False,
    int8_results: dict[str, float] | None = None,
) -> tuple[np.ndarray, float, float]:
    """(test probabilities, train seconds, test seconds per cell); with ``int8`` (torch
    methods) the float and int8 ONNX test accuracies go into ``int8_results``."""
    int8_results = {} if int8_results is None else int8_results
    if not get_method(method).needs_torch:
        from .knn import KNNClassifier

        start = time.perf_counter()
        norm = Normalization.fit(crops.opd[train])
        knn = KNNClassifier(9).fit(norm.apply(crops.opd[train]), crops.label[train])
        trained = time.perf_counter()
        probabilities = knn.predict_proba(norm.apply(crops.opd[test]))
        return probabilities, trained - start, (time.perf_counter() - trained) / len(test)
    model, norm, record = fit(method, crops, train, config, gan_dir, seed)
    x = torch.from_numpy(norm.apply(crops.opd[test]))[:, None]
    start = time.perf_counter()
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1).numpy()
    seconds = (time.perf_counter() - start) / len(test)
    if int8:
        int8_results.update(
            _int8_check(model, norm, crops, train, x.numpy(), crops.label[test], config)
        )
    return probabilities, float(record["train_seconds"]), seconds


def _int8_check(
    model: torch.nn.Module,
    norm: Normalization,
    crops: Crops,
    train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    config: ClassifierConfig,
) -> dict[str, float]:
    """Test-fold accuracy of the exported float model and of its int8 quantisation
    (calibrated on training crops only), as ``topgan train classifier --int8`` makes it."""
    from .classifier import export_onnx
    from .quantize import onnx_accuracy, quantize_int8

    x_train = norm.apply(crops.opd[train])[:, None]
    fp32 = export_onnx(model, config.network.crop_size, torch.from_numpy(x_train[:16]))
    int8 = quantize_int8(fp32, x_train[:512])
    return {
        "accuracy_onnx_fp32": onnx_accuracy(fp32, x_test, y_test),
        "accuracy_int8": onnx_accuracy(int8, x_test, y_test),
    }


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
    int8_methods: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The paper's protocol; ``int8_methods`` are also exported, quantised and scored
    in ONNX Runtime on each test fold (float vs int8)."""
    unknown = [m for m in (*methods, *int8_methods) if m not in METHOD_NAMES]
    if unknown:
        raise ValueError(
            f"unknown or unavailable method(s) {unknown}; available: {', '.join(METHOD_NAMES)}"
        )
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    no_network = any(not get_method(m).needs_torch for m in int8_methods)
    if no_network or not set(int8_methods) <= set(methods):
        raise ValueError("--int8 takes network methods that are also in --methods")
    if any(get_method(m).imagenet for m in methods):
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
                extra: dict[str, float] = {}
                probabilities, train_s, test_s = scores_for(
                    method,
                    crops,
                    train,
                    test,
                    config,
                    gan_dir,
                    seed + f,
                    int8=method in int8_methods,
                    int8_results=extra,
                )
                truth = crops.label[test] == pos_index
                predicted = probabilities.argmax(1) == pos_index
                negatives = ~truth
                sensitivity = float(predicted[truth].mean()) if truth.any() else np.nan
                specificity = float((~predicted[negatives]).mean()) if negatives.any() else np.nan
                results.append(
                    {
                        "method": method,
                        "train_size": int(size),
                        "fold": f,
                        "accuracy": float((predicted == truth).mean()),
                        "sensitivity": sensitivity,
                        "specificity": specificity,
                        "auc": auc(probabilities[:, pos_index], truth),
                        "train_seconds": round(train_s, 3),
                        "test_seconds_per_cell": test_s,
                        **extra,
                    }
                )
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


def _int8_section(results: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in results if "accuracy_int8" in r]
    if not rows:
        return []
    lines = [
        "## int8 on the evaluation folds",
        "",
        "Each model exported to ONNX (float) and quantised to int8 (static, calibrated on "
        "its training crops), both scored by ONNX Runtime on the test fold. "
        f"Kept when int8 loses at most {100 * INT8_TOLERANCE:.1f} points.",
        "",
        "| method | train size | float (ONNX) | int8 | largest fold loss | within tolerance |",
        "|---|---|---|---|---|---|",
    ]
    for key in sorted({(r["method"], r["train_size"]) for r in rows}):
        group = [r for r in rows if (r["method"], r["train_size"]) == key]
        fp32 = float(np.mean([r["accuracy_onnx_fp32"] for r in group]))
        int8 = float(np.mean([r["accuracy_int8"] for r in group]))
        loss = max(r["accuracy_onnx_fp32"] - r["accuracy_int8"] for r in group)
        ok = fp32 - int8 <= INT8_TOLERANCE
        lines.append(
            f"| {key[0]} | {key[1]} | {100 * fp32:.1f} | {100 * int8:.1f} | "
            f"{100 * loss:.1f} | {'yes' if ok else 'no'} |"
        )
    return [*lines, ""]


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
        "| method | train size | accuracy | sensitivity | specificity | AUC | train s | "
        "test ms/cell |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (method, size), m in table.items():
        cells = [f"{100 * v[0]:.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]" for v in m.values()]
        rows = [r for r in results if (r["method"], r["train_size"]) == (method, size)]
        train_s = float(np.mean([r["train_seconds"] for r in rows]))
        test_ms = 1e3 * float(np.mean([r["test_seconds_per_cell"] for r in rows]))
        lines.append(
            f"| {method} | {size} | " + " | ".join(cells) + f" | {train_s:.1f} | {test_ms:.3f} |"
        )
    lines += ["", "![learning curves](learning-curves.png)", ""]
    lines += _int8_section(results)
    (out / "report.md").write_text("\n".join(lines))
    # Like the paper's Fig. 4: mean accuracy per training size with the fold range
    # (min to max) as bars, methods side by side on a log axis.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({k[0] for k in table})
    for i, method in enumerate(methods):
        sizes = sorted(k[1] for k in table if k[0] == method)
        mean = np.array([100 * table[(method, s)]["accuracy"][0] for s in sizes])
        lo = np.array([100 * table[(method, s)]["accuracy"][1] for s in sizes])
        hi = np.array([100 * table[(method, s)]["accuracy"][2] for s in sizes])
        shift = 1.0 + 0.035 * (i - (len(methods) - 1) / 2)
        ax.errorbar(
            np.array(sizes) * shift,
            mean,
            yerr=[mean - lo, hi - mean],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set_xscale("log", base=2)
    all_sizes = sorted({k[1] for k in table})
    ax.set_xticks(all_sizes, [str(s) for s in all_sizes])
    ax.set_xlabel("training images")
    ax.set_ylabel("accuracy (%): mean, bars min-max over folds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning-curves.png", dpi=80)
    plt.close(fig)
