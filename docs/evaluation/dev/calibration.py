"""Development runs for calibration: how the temperature is fitted, chosen on dev data.

Each method is trained once per (training size, fold) as ``topgan evaluate`` trains
it (the same folds and training sets, the cpu preset), and the logits are kept: of
the crops the temperature may be fitted on and of the test fold. Those crops are,
for network methods, the validation split (``source`` validation) and, with
``--out-of-fold``, the training crops' out-of-fold logits of
``training.crossfit.out_of_fold_logits`` (5 more trainings); for features, the
out-of-fold logits of its cross-validation. Every way of fitting the temperature is
then scored on the same logits: T = 1, plain temperature scaling (no prior) and a
normal prior on log T of each width in ``PRIOR_SDS``. Also the share of test crops a confidence threshold would flag, and
their accuracy (the service's ``min_confidence``). Results go to ``calibration.json``
beside this file (``--runs`` names another); the table is printed.

    topgan -q --seed 12 simulate cells --cell-line sw480,sw620 --count 400 --out sw-dev.h5
    OMP_NUM_THREADS=1 python docs/evaluation/dev/calibration.py --data sw-dev.h5 \\
        --methods features,cnn --sizes 10,40 --folds 0
    OMP_NUM_THREADS=1 python docs/evaluation/dev/calibration.py --data sw-dev.h5 \\
        --methods cnn --sizes 10,40 --folds 0 --out-of-fold
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.methods import get_method
from training import config as cfg
from training.calibration import fit_temperature, fitted_record, nll, softmax
from training.crossfit import out_of_fold_logits
from training.data import load_crops
from training.features import cross_validated_logits, cv_folds, extract, fit_features
from training.fit import fit, logits_of, validation_parts
from training.metrics import ece_floor, ece_of, expected_calibration_error, reliability
from training.pretrained import Pretrained, load_pretrained
from training.splits import stratified_folds, stratified_indices

HERE = Path(__file__).resolve().parent
POSITIVE = "sw620"
FOLDS = 5
SEED = 0
#: Widths of the prior on log T compared (None: plain temperature scaling).
PRIOR_SDS: tuple[float | None, ...] = (None, 1.0, 0.5, 0.25)
THRESHOLDS = (0.6, 0.7, 0.8, 0.9)
#: --calibration-split: the validation crops from which the split is halved (the
#: served scale's 128 and 160 are above it, 160 labels' 32 below).
SPLIT_FROM = 64


def held_out_logits(
    method: str,
    crops: Any,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
    start: Pretrained | None,
    out_of_fold: bool,
    calibration_split: bool = False,
) -> dict[str, Any]:
    """Logits of the crops a temperature is fitted on and of the test crops. Networks
    choose their epoch on the whole validation split (the code's way), or with
    ``calibration_split`` on half of it from :data:`SPLIT_FROM` validation crops on,
    the other half being what the temperature is fitted on."""
    started = time.monotonic()
    source = "out-of-fold"
    if get_method(method).features:
        fitted, record = fit_features(
            crops.opd[train], crops.label[train], 2, crops.pixel_size_um, seed
        )
        y = crops.label[train].astype(np.int64)
        z = extract(fitted.model.features, fitted.norm.apply(crops.opd[train])[:, None])
        tests = cv_folds(y, 2, seed)
        assert tests is not None
        fit_logits = cross_validated_logits(z, y, 2, record["l2"], tests)
        fit_labels = y
        test_logits = fitted.logits(crops.opd[test])
    else:
        config = dataclasses.replace(
            cfg.classifier_preset("cpu"),
            calibration_split_from=SPLIT_FROM if calibration_split else None,
        )
        model, norm, _ = fit(method, crops, train, config, start, seed)
        labels = crops.label[train]
        _, _, calib_pos = validation_parts(labels, config, seed)
        x_val = torch.from_numpy(norm.apply(crops.opd[train[calib_pos]]))[:, None]
        fit_logits = logits_of(model, x_val).double().numpy()
        fit_labels = labels[calib_pos].astype(np.int64)
        x_test = torch.from_numpy(norm.apply(crops.opd[test]))[:, None]
        test_logits = logits_of(model, x_test).double().numpy()
        source = "calibration-split" if calibration_split else "validation"
        if out_of_fold:
            fit_logits, _ = out_of_fold_logits(method, crops, train, config, start, seed)
            fit_labels = labels.astype(np.int64)
            source = "out-of-fold"
    return {
        "source": source,
        "fit_logits": np.asarray(fit_logits).tolist(),
        "fit_labels": np.asarray(fit_labels).tolist(),
        "test_logits": np.asarray(test_logits, dtype=np.float64).tolist(),
        "test_labels": crops.label[test].astype(np.int64).tolist(),
        "seconds": round(time.monotonic() - started, 1),
    }


def score(run: dict[str, Any]) -> dict[str, Any]:
    """Each way of fitting T: T, test ECE and test NLL; thresholds at the prior in use."""
    fz, fy = np.array(run["fit_logits"]), np.array(run["fit_labels"])
    tz, ty = np.array(run["test_logits"]), np.array(run["test_labels"])
    out: dict[str, Any] = {}
    for sd in PRIOR_SDS:
        key = "plain" if sd is None else f"prior {sd:g}"
        t = fit_temperature(fz, fy, prior_sd=sd)
        out[key] = {
            "T": t,
            "ece": expected_calibration_error(softmax(tz, t), ty),
            "nll": nll(tz, ty, t),
        }
    for key, t in (("T = 1", 1.0), ("in use", in_use(run))):
        out[key] = {
            "T": t,
            "ece": expected_calibration_error(softmax(tz, t), ty),
            "nll": nll(tz, ty, t),
        }
    return out


def in_use(run: dict[str, Any]) -> float:
    """The temperature the code fits on these logits (its prior, and T = 1 on fewer
    than training.calibration.MIN_CROPS crops)."""
    record = fitted_record(np.array(run["fit_logits"]), np.array(run["fit_labels"]), "dev")
    return float(record["temperature"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--methods", required=True)
    parser.add_argument("--sizes", default="10,40")
    parser.add_argument("--folds", default="0,1,2", help="which of the 5 folds to run")
    parser.add_argument(
        "--pretrained", "--gan", type=Path, help="the trunk of the topgan and ssl methods"
    )
    parser.add_argument(
        "--out-of-fold", action="store_true", help="network methods: out-of-fold logits"
    )
    parser.add_argument(
        "--calibration-split",
        action="store_true",
        help="network methods: half the validation split chooses the epoch, the other "
        f"half fits the temperature (from {SPLIT_FROM} validation crops on)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=HERE / "calibration.json",
        help="the file the runs are kept in (runs already there are not run again)",
    )
    args = parser.parse_args()
    trunk = load_pretrained(args.pretrained) if args.pretrained else None
    path = args.runs
    runs: list[dict[str, Any]] = json.loads(path.read_text())["runs"] if path.exists() else []
    crops = load_crops([args.data])
    pos = crops.class_names.index(POSITIVE)
    assert pos == 1, crops.class_names
    fold_sets = stratified_folds(crops.label, FOLDS, SEED)
    for method in args.methods.split(","):
        for size in [int(s) for s in args.sizes.split(",")]:
            for f in [int(v) for v in args.folds.split(",")]:
                source = (
                    "out-of-fold"
                    if args.out_of_fold or method == "features"
                    else "calibration-split"
                    if args.calibration_split
                    else "validation"
                )
                key = (method, size, f, source)
                if any((r["method"], r["train_size"], r["fold"], r["source"]) == key for r in runs):
                    continue
                test = fold_sets[f]
                pool = np.setdiff1d(np.flatnonzero(crops.label >= 0), test)
                rng = np.random.default_rng([SEED, f, size])
                train = pool[stratified_indices(crops.label[pool], size, rng, crops.class_names)]
                run = held_out_logits(
                    method,
                    crops,
                    train,
                    test,
                    SEED + f,
                    trunk,
                    args.out_of_fold,
                    args.calibration_split,
                )
                runs.append(
                    {"method": method, "train_size": size, "fold": f, "data": args.data.name, **run}
                )
                path.write_text(json.dumps({"runs": runs}) + "\n")
                print(method, size, f, source, f"{run['seconds']} s", flush=True)
    report(runs)


Group = tuple[str, int, str]


def by_group(runs: list[dict[str, Any]]) -> dict[Group, list[dict[str, Any]]]:
    """The runs by (method, training size, what T is fitted on), in that order, each
    group's runs in the order they were made."""
    groups: dict[Group, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["train_size"], r["source"]), []).append(r)
    return dict(sorted(groups.items()))


def report(runs: list[dict[str, Any]]) -> None:
    """The printed tables: test accuracy, test ECE (%) and NLL per way of fitting T,
    mean over folds, and the confidence thresholds."""
    grouped = by_group(runs)
    print("| method | size | T fitted on | test accuracy per fold (%) |")
    print("|---|---|---|---|")
    for group, chosen in grouped.items():
        accuracy = [
            100 * np.mean(np.argmax(r["test_logits"], 1) == np.array(r["test_labels"]))
            for r in chosen
        ]
        folds = ", ".join(f"{r['fold']}: {a:.1f}" for r, a in zip(chosen, accuracy, strict=True))
        print(f"| {group[0]} | {group[1]} | {group[2]} | {folds} (mean {np.mean(accuracy):.1f}) |")
    print()
    ways = ["T = 1", "plain"] + [f"prior {sd:g}" for sd in PRIOR_SDS if sd is not None]
    ways.append("in use")
    print("| method | size | T fitted on | folds | " + " | ".join(ways) + " |")
    print("|---|---|---|---|" + "---|" * len(ways))
    for (method, size, source), group_runs in grouped.items():
        chosen = [score(r) for r in group_runs]
        cells = []
        for w in ways:
            ece = 100 * np.mean([c[w]["ece"] for c in chosen])
            ts = [c[w]["T"] for c in chosen]
            nl = np.mean([c[w]["nll"] for c in chosen])
            cells.append(f"{ece:.1f} (NLL {nl:.3f}; T {min(ts):.2f}-{max(ts):.2f})")
        print(f"| {method} | {size} | {source} | {len(chosen)} | " + " | ".join(cells) + " |")
    print("\nthresholds, calibrated as the code in use calibrates (column in use):")
    print(
        "| method | size | T fitted on | "
        + " | ".join(f"< {t:g}: flagged, acc. flagged / rest" for t in THRESHOLDS)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(THRESHOLDS))
    for (method, size, source), chosen in grouped.items():
        p, y = [], []
        for r in chosen:
            p.append(softmax(np.array(r["test_logits"]), in_use(r)))
            y.append(np.array(r["test_labels"]))
        probs, labels = np.concatenate(p), np.concatenate(y)
        right = probs.argmax(1) == labels
        cells = []
        for threshold in THRESHOLDS:
            low = probs.max(1) < threshold
            acc_low = 100 * right[low].mean() if low.any() else float("nan")
            cells.append(
                f"{100 * low.mean():.0f} %: {acc_low:.0f} / {100 * right[~low].mean():.0f} %"
            )
        print(f"| {method} | {size} | {source} | " + " | ".join(cells) + " |")
    pooled_table(grouped, ways)


def pooled_table(grouped: dict[Group, list[dict[str, Any]]], ways: list[str]) -> None:
    """Test ECE (%) with every fold run binned together (each fold at its own fitted
    T), and the floor a perfectly calibrated model with those confidences would show
    from sampling alone (training.metrics.ece_floor): a single fold of 160 crops sits
    near 5 % whatever the temperature."""
    print("\npooled over the folds run: ECE (floor) %")
    print("| method | size | T fitted on | crops | " + " | ".join(ways) + " |")
    print("|---|---|---|---|" + "---|" * len(ways))
    for (method, size, source), chosen in grouped.items():
        scores = [score(r) for r in chosen]
        cells = []
        for w in ways:
            tables = []
            for r, c in zip(chosen, scores, strict=True):
                probs = softmax(np.array(r["test_logits"]), c[w]["T"])
                tables.append(reliability(probs, probs.argmax(1) == np.array(r["test_labels"])))
            table = np.sum(tables, axis=0)
            cells.append(f"{100 * ece_of(table):.1f} ({100 * ece_floor(table):.1f})")
        crops = sum(len(r["test_labels"]) for r in chosen)
        print(f"| {method} | {size} | {source} | {crops} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
