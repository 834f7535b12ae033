"""Reports of the protocol's results: ``report.md``, ``learning-curves.png`` and
``reliability.png`` of one evaluation, and the table pieces that
``docs/evaluation/summarize.py`` builds its summary from (NumPy; matplotlib only for
the figures)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import ECE_BINS, ece_floor, ece_of
from .quantize import INT8_TOLERANCE, int8_kept

#: One row of ``results.json``: a method, a training size, a fold and its scores.
Result = dict[str, Any]
METRICS = ("accuracy", "sensitivity", "specificity", "auc")


def metric_values(
    results: Sequence[Result], method: str, size: int, key: str = "accuracy"
) -> np.ndarray:
    """``key`` of every fold of ``method`` at training size ``size``."""
    return np.array([r[key] for r in results if r["method"] == method and r["train_size"] == size])


def fold_stats(fractions: np.ndarray) -> tuple[float, float, float]:
    """Mean, min and max over folds, in percent (NaN folds left out)."""
    percent = 100 * np.asarray(fractions, dtype=float)
    return float(np.nanmean(percent)), float(np.nanmin(percent)), float(np.nanmax(percent))


def fold_range(fractions: np.ndarray) -> str:
    """A table cell: 'mean [min, max]' over folds, in percent."""
    mean, lo, hi = fold_stats(fractions)
    return f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"


def size_cells(
    results: Sequence[Result], method: str, sizes: Iterable[int], key: str = "accuracy"
) -> list[str]:
    """``method``'s :func:`fold_range` of ``key`` at each training size."""
    return [fold_range(metric_values(results, method, s, key)) for s in sizes]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def _groups(results: Sequence[Result]) -> list[tuple[str, int]]:
    return sorted({(r["method"], r["train_size"]) for r in results})


def method_table(results: Sequence[Result]) -> list[str]:
    """Every metric, mean [min, max] over folds, and the mean seconds, per method and
    training size."""
    rows = []
    for method, size in _groups(results):
        train_s = float(np.mean(metric_values(results, method, size, "train_seconds")))
        test_s = float(np.mean(metric_values(results, method, size, "test_seconds_per_cell")))
        cells = [fold_range(metric_values(results, method, size, m)) for m in METRICS]
        rows.append([method, str(size), *cells, f"{train_s:.1f}", f"{1e3 * test_s:.3f}"])
    header = ["method", "train size", "accuracy", "sensitivity", "specificity", "AUC"]
    return markdown_table([*header, "train s", "test ms/cell"], rows)


def int8_section(results: Sequence[Result]) -> list[str]:
    """Float against int8 ONNX on the test folds (the methods evaluated with --int8)."""
    scored = [r for r in results if "accuracy_int8" in r]
    if not scored:
        return []
    rows = []
    for method, size in _groups(scored):
        fp32_folds = metric_values(scored, method, size, "accuracy_onnx_fp32")
        int8_folds = metric_values(scored, method, size, "accuracy_int8")
        fp32, int8 = float(np.mean(fp32_folds)), float(np.mean(int8_folds))
        loss = max(a - b for a, b in zip(fp32_folds.tolist(), int8_folds.tolist(), strict=True))
        kept = "yes" if int8_kept(fp32, int8) else "no"
        rows.append(
            [method, str(size), f"{100 * fp32:.1f}", f"{100 * int8:.1f}", f"{100 * loss:.1f}", kept]
        )
    header = ["method", "train size", "float (ONNX)", "int8", "largest fold loss"]
    return [
        "## int8 on the evaluation folds",
        "",
        "Each model exported to ONNX (float) and quantised to int8 (static, calibrated on "
        "its training crops), both scored by ONNX Runtime on the test fold. "
        f"Kept when int8 loses at most {100 * INT8_TOLERANCE:.1f} points.",
        "",
        *markdown_table([*header, "within tolerance"], rows),
        "",
    ]


def calibration_section(results: Sequence[Result]) -> list[str]:
    """The expected calibration error before (T = 1) and after temperature scaling,
    and the temperatures, per method and training size (rows that have them)."""
    scored = [r for r in results if "ece" in r]
    if not scored:
        return []
    rows = []
    for method, size in _groups(scored):
        t = metric_values(scored, method, size, "temperature")
        calibrated = _pooled(scored, method, size, "reliability")
        pooled = [
            ece_of(_pooled(scored, method, size, "reliability_uncalibrated")),
            ece_of(calibrated),
        ]
        floors = [ece_floor(t) for t in _tables(scored, method, size, "reliability")]
        pooled_floor = ece_floor(calibrated)
        rows.append(
            [
                method,
                str(size),
                fold_range(metric_values(scored, method, size, "ece_uncalibrated")),
                fold_range(metric_values(scored, method, size, "ece")),
                f"{100 * pooled[0]:.1f} -> {100 * pooled[1]:.1f}",
                f"{100 * np.mean(floors):.1f} / {100 * pooled_floor:.1f}",
                f"{np.mean(t):.2f} [{np.min(t):.2f}, {np.max(t):.2f}]",
            ]
        )
    header = [
        "method",
        "train size",
        "ECE, T = 1",
        "ECE, calibrated",
        "ECE, folds pooled",
        "floor: per fold / pooled",
    ]
    return [
        "## Calibration",
        "",
        "Expected calibration error (%) of each test fold's max-probability confidence, "
        f"{ECE_BINS} equal-width bins, mean [min, max] over folds: before (T = 1) and after "
        "the temperature each model was given, as `topgan train classifier` fits it (network "
        "methods: on the validation split from 32 crops, else on out-of-fold logits of 5 more "
        "trainings; features: on its cross-validation's out-of-fold logits; knn: none; T = 1 "
        "on fewer than 20 training crops). The pooled column bins every fold's test crops "
        "together (T = 1 -> calibrated). The floor is the ECE a perfectly calibrated model "
        "with the same confidences would show from sampling alone (`training.metrics."
        "ece_floor`), mean over folds / pooled: a calibrated ECE near it is as good as "
        "that many test crops can show.",
        "",
        *markdown_table([*header, "temperature"], rows),
        "",
        "![reliability diagrams](reliability.png)",
        "",
    ]


def _tables(results: Sequence[Result], method: str, size: int, key: str) -> list[np.ndarray]:
    """``method``'s reliability tables ``key`` at ``size``, one per fold."""
    return [
        np.asarray(r[key], dtype=float)
        for r in results
        if (r["method"], r["train_size"]) == (method, size)
    ]


def _pooled(results: Sequence[Result], method: str, size: int, key: str) -> np.ndarray:
    """``method``'s reliability tables ``key`` at ``size``, summed over its folds."""
    return np.sum(_tables(results, method, size, key), axis=0)


def plot_reliability(results: Sequence[Result], path: Path, classes: int = 2) -> None:
    """One panel per method: accuracy against confidence per bin (the folds pooled),
    a line per training size, calibrated solid and T = 1 dashed (where it differs);
    the diagonal is a calibrated model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in results if "ece" in r]
    groups = _groups(scored)
    methods = sorted({method for method, _ in groups})
    fig, axes = plt.subplots(
        1, len(methods), figsize=(3.2 * len(methods) + 0.6, 3.6), squeeze=False, sharey=True
    )
    lower = 1.0 / classes
    for ax, method in zip(axes[0], methods, strict=True):
        ax.plot([lower, 1], [lower, 1], ":", color="grey", lw=1)
        for i, size in enumerate(s for m, s in groups if m == method):
            colour = f"C{i}"
            calibrated = _pooled(scored, method, size, "reliability")
            for key, style in (("reliability", "-o"), ("reliability_uncalibrated", "--")):
                table = _pooled(scored, method, size, key)
                if key != "reliability" and np.array_equal(table, calibrated):
                    continue  # T = 1: the same line
                used = table[:, 0] > 0
                confidence = table[used, 1] / table[used, 0]
                accuracy = table[used, 2] / table[used, 0]
                label = f"{size} (T = 1)" if key.endswith("uncalibrated") else str(size)
                ax.plot(confidence, accuracy, style, color=colour, ms=3, lw=1, label=label)
        ax.set_title(method, fontsize=9)
        ax.set_xlim(lower, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (max probability)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, title="train size", title_fontsize=6)
    axes[0][0].set_ylabel(f"accuracy per bin ({ECE_BINS} bins, folds pooled)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_learning_curves(results: Sequence[Result], path: Path) -> None:
    """Like the paper's Fig. 4: mean accuracy per training size with the fold range
    (min to max) as bars, methods side by side on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(results)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({method for method, _ in groups})
    for i, method in enumerate(methods):
        sizes = [size for m, size in groups if m == method]
        stats = np.array([fold_stats(metric_values(results, method, s)) for s in sizes])
        mean, lo, hi = stats[:, 0], stats[:, 1], stats[:, 2]
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
    all_sizes = sorted({size for _, size in groups})
    ax.set_xticks(all_sizes, [str(s) for s in all_sizes])
    ax.set_xlabel("training images")
    ax.set_ylabel("accuracy (%): mean, bars min-max over folds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(out: Path, results: Sequence[Result], meta: dict[str, Any]) -> None:
    """``out/report.md``, ``out/learning-curves.png`` and (results with calibration
    scores) ``out/reliability.png`` of one evaluation."""
    (out / "report.md").write_text(report_markdown(results, meta))
    plot_learning_curves(results, out / "learning-curves.png")
    if any("ece" in r for r in results):
        plot_reliability(results, out / "reliability.png", len(meta["classes"]))


def report_markdown(results: Sequence[Result], meta: dict[str, Any]) -> str:
    """The text of one evaluation's ``report.md`` (its ``results.json``'s rows and
    meta), which the figures beside it illustrate."""
    lines = [
        f"# Evaluation: {' vs '.join(meta['classes'])} (positive class {meta['positive']})",
        "",
        f"{meta['folds']}-fold stratified cross-validation, the same folds for every method; "
        f"preset {meta['preset']}, seed {meta['seed']}. Mean [min, max] over folds.",
        f"Command: `{meta['command']}`",
        "",
        *method_table(results),
        "",
        "![learning curves](learning-curves.png)",
        "",
        *calibration_section(results),
        *int8_section(results),
    ]
    return "\n".join(lines)
