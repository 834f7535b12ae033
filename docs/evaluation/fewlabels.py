"""Write docs/evaluation/few-labels.md: every method, from few labels to a ceiling,
on the three simulated tasks, from the committed runs.

Each task folder holds ``runs/<run>/results.json`` (one ``topgan evaluate`` each: the
methods without a trunk, or one pretrained method with one trunk, all on the same
folds and training subsets), ``probe.md`` (``docs/evaluation/dev/probe.py`` on the
task's data: the linear read-out of each frozen trunk) and ``ceiling.json``
(``docs/evaluation/ceiling.py``). Every number comes from those files; nothing is
typed in by hand. Rows are reported in the order of :data:`RUNS`; a run not (yet)
committed is listed as missing.

Usage: ``python docs/evaluation/fewlabels.py``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from training.metrics import ece_floor, ece_of
from training.report import Result, fold_range, markdown_table, report_markdown

HERE = Path(__file__).resolve().parent


class Task(NamedTuple):
    folder: str
    title: str
    lines: str
    seeds: tuple[int, int, int]  # the evaluation data's, the pool's and the ceiling set's

    def commands(self) -> list[str]:
        """How the task's evaluation data, unlabeled pool and ceiling set were made."""
        data, pool, ceiling = self.seeds
        simulate = f"simulate cells --cell-line {self.lines}"
        return [
            f"topgan -q --seed {data} {simulate} --count 400 --out {self.folder}.h5",
            f"topgan -q --seed {pool} {simulate} --count 1500 --out {self.folder}-pool.h5",
            f"topgan -q --seed {ceiling} {simulate} --count 1000 --out {self.folder}-ceiling.h5",
            f"topgan --seed 1 train gan --data {self.folder}-pool.h5 --out gan-{self.folder} "
            "--preset cpu",
            f"topgan --seed 1 train ssl --data {self.folder}-pool.h5 --out ssl-{self.folder} "
            "--preset cpu",
        ]


TASKS = (
    Task("sw480-sw620", "SW480 (primary) vs SW620 (metastatic)", "sw480,sw620", (2, 22, 32)),
    Task(
        "hs895", "Hs 895.Sk (healthy skin) vs Hs 895.T (melanoma)", "hs895-sk,hs895-t", (4, 24, 34)
    ),
    Task(
        "mcf10a-mcf7",
        "MCF-10A vs MCF-7, the held-out pair (chosen before any result: mcf10a-mcf7/PLAN.md)",
        "mcf10a,mcf7",
        (6, 7, 36),
    ),
)


class Row(NamedTuple):
    run: str  # the folder under runs/
    method: str
    # "" (none), "sperm" (the bundled GAN), "own" (the task's own pool) or "imagenet"
    # (the ImageNet weights the imagenet method transfers)
    trunk: str

    @property
    def name(self) -> str:
        kind = {"topgan": "GAN", "ssl": "SSL"}.get(self.method.split("-")[0], "")
        if self.trunk == "sperm":
            return f"{self.method} (bundled sperm {kind})"
        if self.trunk == "own":
            return f"{self.method} (own-pool {kind})"
        return self.method

    @property
    def pretrained(self) -> bool:
        return bool(self.trunk)


RUNS = (
    Row("knn+features", "knn", ""),
    Row("knn+features", "features", ""),
    Row("cnn", "cnn", ""),
    Row("cnn-aug", "cnn-aug", ""),
    Row("imagenet", "imagenet", "imagenet"),
    Row("topgan-sperm", "topgan", "sperm"),
    Row("topgan-aug-sperm", "topgan-aug", "sperm"),
    Row("topgan-own", "topgan", "own"),
    Row("topgan-aug-own", "topgan-aug", "own"),
    Row("ssl-own", "ssl", "own"),
    Row("ssl-aug-own", "ssl-aug", "own"),
)
#: The checks' thresholds (points): the best pretrained recipe's lead at 10 labels, the
#: largest loss against the CNN a pretrained method may show, the largest ECE (%).
LEAD, NO_LOSS, MAX_ECE = 3.0, 2.0, 5.0
#: The served model's scale: 4 of the 5 folds' 800 crops, as the bundled models use
#: nearly all of theirs (the served-scale check; runall.py --runs served).
SERVED_SIZE = 640


def load_runs(task: Task) -> dict[Row, list[Result]]:
    """Each row's results, for the rows whose run is committed."""
    found: dict[Row, list[Result]] = {}
    for row in RUNS:
        path = HERE / task.folder / "runs" / row.run / "results.json"
        if path.exists():
            results = [
                r for r in json.loads(path.read_text())["results"] if r["method"] == row.method
            ]
            if results:
                found[row] = results
    return found


def served_method() -> tuple[str, str]:
    """The served default model's method and the trunk it was trained from."""
    manifest = json.loads(
        (HERE.parents[1] / "models" / "sw480-sw620" / "manifest.json").read_text()
    )
    gan = manifest["training"].get("gan") or ""
    return manifest["method"], "sperm" if "sperm" in gan else ("own" if gan else "")


def _values(results: list[Result], size: int, key: str) -> np.ndarray:
    """``key`` of each fold at training size ``size``."""
    return np.array([r[key] for r in results if r["train_size"] == size], dtype=float)


def mean(results: list[Result], size: int, key: str = "accuracy") -> float:
    """The mean over folds, in percent."""
    return float(100 * np.nanmean(_values(results, size, key)))


def fold_tables(results: list[Result], size: int) -> list[np.ndarray]:
    """Each fold's reliability table (calibrated) at training size ``size``."""
    return [np.asarray(r["reliability"], float) for r in results if r["train_size"] == size]


def pooled_calibration(results: list[Result], size: int) -> str:
    """The ECE of every test fold's crops binned together, and the floors (per fold and
    pooled) a perfectly calibrated model with the same confidences would show from
    sampling alone: a fold of 160 crops cannot show an ECE far below its floor."""
    tables = fold_tables(results, size)
    pooled = np.sum(tables, axis=0)
    ece, floor = 100 * ece_of(pooled), 100 * ece_floor(pooled)
    per_fold = 100 * float(np.mean([ece_floor(t) for t in tables]))
    met = "met" if ece <= MAX_ECE else "NOT met"
    return (
        f"pooled over the folds {ece:.1f} % (at most {MAX_ECE:g} %: {met}), against floors "
        f"of {per_fold:.1f} % per fold and {floor:.1f} % pooled"
    )


def _run_meta(task: Task, run: str) -> dict[str, Any]:
    return json.loads((HERE / task.folder / "runs" / run / "results.json").read_text())["meta"]


def paired(a: list[Result], b: list[Result], size: int) -> tuple[float, float]:
    """The mean over folds of a's accuracy minus b's on the same fold and training
    subset, and its standard error, in points."""
    by_fold = {r["fold"]: r["accuracy"] for r in b if r["train_size"] == size}
    d = 100 * np.array([r["accuracy"] - by_fold[r["fold"]] for r in a if r["train_size"] == size])
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se


def task_section(task: Task) -> list[str]:
    runs = load_runs(task)
    if not runs:
        return [f"## {task.title}", "", "No run committed yet.", ""]
    sizes = sorted({r["train_size"] for results in runs.values() for r in results})
    meta = _run_meta(task, next(iter(runs)).run)
    lines = [
        f"## {task.title}",
        "",
        f"Positive class {meta['positive']}; {meta['folds']} folds. Data: evaluation "
        "(400 crops a line), the unlabeled pretraining pool (1500 a line, labels never "
        "read) and the ceiling's labeled set (1000 a line):",
        "",
        "```sh",
        *task.commands(),
        "```",
        "",
        "Accuracy (%), mean [min, max] over the folds:",
        "",
    ]
    table = [
        [row.name, *[fold_range(_values(results, s, "accuracy")) for s in sizes]]
        for row, results in runs.items()
    ]
    ceiling = HERE / task.folder / "ceiling.json"
    if ceiling.exists():
        c = json.loads(ceiling.read_text())
        acc = np.array([f["accuracy"] for f in c["folds"]])
        table.append(
            [
                f"ceiling: {c['method']} on {c['train_crops']} labeled crops",
                *["" for _ in sizes[:-1]],
                fold_range(acc),
            ]
        )
    lines += markdown_table(["method", *map(str, sizes)], table)
    lines += [
        "",
        "Expected calibration error (%) of the calibrated probabilities, mean [min, max] over the folds:",
        "",
    ]
    lines += markdown_table(
        ["method", *map(str, sizes)],
        [
            [row.name, *[fold_range(_values(results, s, "ece")) for s in sizes]]
            for row, results in runs.items()
        ],
    )
    lines += ["", *checks(runs, sizes, task), ""]
    probe = HERE / task.folder / "probe.md"
    if probe.exists():
        lines += [
            "Linear probes of the frozen trunks, each at its pretraining's scale and at "
            "the data's (`python docs/evaluation/dev/probe.py --data "
            f"{task.folder}.h5 --pretrained models/pretrained/sperm-dcgan gan-{task.folder} "
            f"ssl-{task.folder} --refit`):",
            "",
        ]
        lines += [line for line in probe.read_text().splitlines()[1:] if line.startswith("|")]
        lines.append("")
    metas = {row: _run_meta(task, row.run) for row in runs}
    commands = sorted({meta["command"] for meta in metas.values()})
    lines += ["The runs (each in `runs/`, with its own `report.md`):", ""]
    lines += [f"- `{c}`" for c in commands] + [""]
    lines += trunk_notes(metas)
    missing = [row.name for row in RUNS if row not in runs]
    if missing:
        lines += ["Not run on this task: " + "; ".join(missing) + ".", ""]
    return lines


def trunk_notes(metas: dict[Row, dict[str, Any]]) -> list[str]:
    """A line for each own-pool trunk whose runs (``metas``: each row's run record)
    did not all start from the same bytes (its sha256, as each run recorded it): the work files do not outlive a
    machine, and the same command run again elsewhere need not give the same trunk."""
    by_path: dict[str, dict[str, list[str]]] = {}
    for row, meta in metas.items():
        pretrained = meta.get("pretrained")
        if row.trunk == "own" and pretrained:
            shas = by_path.setdefault(pretrained["path"], {})
            shas.setdefault(pretrained["sha256"], []).append(row.run)
    lines = []
    for path, shas in by_path.items():
        if len(shas) > 1:
            each = "; ".join(f"{sha[:12]} ({', '.join(names)})" for sha, names in shas.items())
            lines += [
                f"The runs from `{path}` started from different trunks (sha256 {each}): "
                "its pretraining command was run again on another machine and did not give "
                "the same bytes, so they are pretrainings of one recipe, not one trunk.",
                "",
            ]
    return lines


def checks(runs: dict[Row, list[Result]], sizes: list[int], task: Task) -> list[str]:
    """The issue's must-shows, as the data give them."""
    lines = ["Checks:", ""]
    by_method = {row.method: results for row, results in runs.items() if not row.pretrained}
    pretrained = {row: results for row, results in runs.items() if row.pretrained}
    smallest = sizes[0]
    if "cnn" in by_method and "features" in by_method:
        gaps = [(s, *paired(by_method["features"], by_method["cnn"], s)) for s in sizes]
        lines.append(
            "- features against the CNN from scratch, paired over the folds (mean difference "
            "+- standard error) at "
            + ", ".join(f"{s}: {g:+.1f} +- {se:.1f}" for s, g, se in gaps)
            + "."
        )
    if not pretrained:
        lines.append(
            "- No pretrained method's run is committed for this task yet, so the "
            "pretraining checks (a lead at the fewest labels, no loss against the CNN) "
            "cannot be judged here."
        )
    if pretrained and "cnn" in by_method and "features" in by_method:
        best = max(pretrained, key=lambda row: mean(pretrained[row], smallest))
        top = mean(pretrained[best], smallest)
        cnn, features = mean(by_method["cnn"], smallest), mean(by_method["features"], smallest)
        met = top - cnn >= LEAD and top - features >= LEAD
        lines.append(
            f"- {smallest} labels: the best pretrained recipe, {best.name}, {top:.1f} "
            f"({fold_range(_values(pretrained[best], smallest, 'accuracy'))}) against the CNN "
            f"{cnn:.1f} ({top - cnn:+.1f}) and features {features:.1f} ({top - features:+.1f}): "
            f"a lead of {LEAD:g} points over both {'met' if met else 'NOT met'}."
        )
    if pretrained and "cnn" in by_method:
        for row, results in pretrained.items():
            gaps = [(s, *paired(results, by_method["cnn"], s)) for s in sizes]
            worse = [(s, g, se) for s, g, se in gaps if g < -NO_LOSS]
            if not worse:
                verdict = f"within {NO_LOSS:g} points of it or better at every size"
            else:
                noise = all(-g < 2 * se for _, g, se in worse)
                verdict = (
                    f"more than {NO_LOSS:g} points worse at "
                    + ", ".join(str(s) for s, _, _ in worse)
                    + (
                        " (each within twice its paired standard error)"
                        if noise
                        else " (beyond twice its paired standard error)"
                    )
                )
            lines.append(
                f"- {row.name} against the CNN, paired over the folds (mean difference "
                "+- standard error) at "
                + ", ".join(f"{s}: {g:+.1f} +- {se:.1f}" for s, g, se in gaps)
                + f"; {verdict}."
            )
    method, trunk = served_method()
    served = next(
        (r for row, r in runs.items() if row.method == method and row.trunk == trunk), None
    )
    if served is not None:
        eces = [mean(served, s, "ece") for s in sizes]
        ok = all(e <= MAX_ECE for e in eces)
        pooled = [100 * ece_of(np.sum(fold_tables(served, s), axis=0)) for s in sizes]
        lines.append(
            f"- ECE of the served model's method ({method}) at "
            + ", ".join(f"{s}: {e:.1f} %" for s, e in zip(sizes, eces, strict=True))
            + f"; at most {MAX_ECE:g} % at every size {'met' if ok else 'NOT met'}"
            + " (pooled over the folds: "
            + ", ".join(f"{p:.1f}" for p in pooled)
            + " %)."
        )
    lines += served_scale(task, method)
    lines += ceiling_against_features(task)
    return lines


def ceiling_against_features(task: Task) -> list[str]:
    """The ceiling's accuracy against the ``features`` baseline trained on 640 crops
    of the evaluation folds, paired over the same test folds: whether the network,
    given three times the labels, reaches what the statistics of the crop hold."""
    ceiling = HERE / task.folder / "ceiling.json"
    features = HERE / task.folder / "runs" / f"features-{SERVED_SIZE}" / "results.json"
    if not (ceiling.exists() and features.exists()):
        return []
    c = json.loads(ceiling.read_text())
    results = json.loads(features.read_text())["results"]
    by_fold = {r["fold"]: r["accuracy"] for r in results if r["train_size"] == SERVED_SIZE}
    d = 100 * np.array([f["accuracy"] - by_fold[f["fold"]] for f in c["folds"]])
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    verdict = "above it" if d.mean() > 2 * se else ("below it" if d.mean() < -2 * se else "level")
    return [
        f"- The ceiling ({c['method']} on {c['train_crops']} labeled crops) against features "
        f"on {SERVED_SIZE}, paired over the test folds: {d.mean():+.1f} +- {se:.1f} points "
        f"({verdict})."
    ]


def served_scale(task: Task, method: str) -> list[str]:
    """Methods trained as the bundled models are, on nearly the whole dataset
    (``runs/<method>-<size>``: the same folds, a training size past 160); the ECE check
    for the served model's method."""
    lines, served_run = [], False
    for run in sorted((HERE / task.folder / "runs").glob("*-[0-9]*")):
        data = json.loads((run / "results.json").read_text())
        results = data["results"]
        ran, size = results[0]["method"], results[0]["train_size"]
        accuracy = fold_range(_values(results, size, "accuracy"))
        ece = fold_range(_values(results, size, "ece"))
        verdict = ""
        if ran == method:
            served_run = True
            met = mean(results, size, "ece") <= MAX_ECE
            verdict = (
                f"; the served model's method: at most {MAX_ECE:g} % per fold "
                f"{'met' if met else 'NOT met'}; {pooled_calibration(results, size)}"
            )
        lines.append(
            f"- {ran} at the served scale ({size} training crops, the same folds: "
            f"`{data['meta']['command']}`): accuracy {accuracy}, ECE {ece} %{verdict}."
        )
    if not served_run:
        lines.append(
            f"- {method} (the served model's method) at the served scale ({SERVED_SIZE} training "
            "crops): not run yet (`python docs/evaluation/runall.py --runs served`)."
        )
    return lines


def main() -> None:
    lines = [
        "# Few labels: every method, three tasks, a ceiling",
        "",
        "Written by `python docs/evaluation/fewlabels.py` from the runs under each task's "
        "folder. The protocol of `topgan evaluate` (5 stratified folds, the same folds, "
        "training subsets and seeds for every method; balanced training sets of 10 to 160 "
        "crops from the other folds; the cpu preset; every score of the calibrated "
        "probabilities the exported model answers). Pretrained methods start from the "
        "bundled sperm GAN (`models/pretrained/sperm-dcgan`) or from a GAN or SSL trunk "
        "pretrained on an unlabeled pool of the task's own two lines simulated with another "
        "seed (never an evaluation cell), or, `imagenet`, from EfficientNet-Lite0's "
        "ImageNet weights; the checks count all three as pretrained. Every choice behind the methods was made on dev "
        "data (docs/evaluation/dev/); the held-out pair was chosen before any result and "
        "never tuned on.",
        "",
    ]
    for task in TASKS:
        lines += task_section(task)
        # Each run's own report, its text rewritten from its results.json by the current
        # report code (the figures stay as the run drew them).
        for results in sorted((HERE / task.folder / "runs").glob("*/results.json")):
            data = json.loads(results.read_text())
            (results.parent / "report.md").write_text(
                report_markdown(data["results"], data["meta"])
            )
    (HERE / "few-labels.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
