"""The ceiling of a task: a model trained on many labeled crops, scored on the test
folds of the evaluation protocol.

The few-label methods of ``topgan evaluate`` train on 10-160 crops drawn from the
other folds. How far they are from what the same network reaches with plenty of
labels is the question this answers: a model that ``topgan train classifier`` made
from a separate labeled set of the task's lines (simulated with another seed, so it
holds no evaluation cell) is run by ONNX Runtime, as the service runs it, on each of
the evaluation's test folds (the same stratified folds, same seed) and scored as
``topgan evaluate`` scores a method.

    topgan -q --seed 32 simulate cells --cell-line sw480,sw620 --count 1000 --out sw-ceiling.h5
    topgan --seed 0 train classifier --method cnn --data sw-ceiling.h5 --preset cpu \\
        --name ceiling --out ceiling-sw
    python docs/evaluation/ceiling.py --model ceiling-sw --data sw480-sw620.h5 \\
        --positive sw620 --out sw480-sw620/ceiling.json

Writes a JSON file: per fold the scores of ``training.metrics`` (accuracy,
sensitivity, specificity, AUC, ECE), and the model's manifest name, method and the
number of crops it was trained on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from models.provenance import portable_path
from models.runtime import ModelRuntime
from training.data import load_crops
from training.metrics import calibration_scores, fold_scores
from training.splits import stratified_folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model directory")
    parser.add_argument("--data", type=Path, required=True, help="the evaluation dataset")
    parser.add_argument("--positive", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="the evaluation's seed (its folds)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runtime = ModelRuntime(args.model, "cpu")
    manifest = runtime.manifest
    crops = load_crops([args.data])
    if list(manifest.classes) != list(crops.class_names):
        parser.error(
            f"the model's classes {manifest.classes} are not the data's {crops.class_names}"
        )
    positive = crops.class_names.index(args.positive)
    probabilities = np.concatenate(
        [runtime.predict(crops.opd[i : i + 64]) for i in range(0, len(crops.opd), 64)]
    ).astype(np.float64)
    folds = []
    for f, test in enumerate(stratified_folds(crops.label, args.folds, args.seed)):
        p, truth = probabilities[test], crops.label[test] == positive
        scores = {**fold_scores(p, truth, positive), **calibration_scores(p, p, truth, positive)}
        folds.append({"fold": f, **{k: v for k, v in scores.items() if "reliability" not in k}})
    out = {
        "model": manifest.name,
        "method": manifest.method,
        "train_crops": manifest.training.get("train_size"),
        "data": portable_path(args.data, args.out.parent),
        "positive": args.positive,
        "folds": folds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    accuracy = 100 * np.array([f["accuracy"] for f in folds])
    print(
        f"{manifest.name}: accuracy {accuracy.mean():.1f} [{accuracy.min():.1f}, "
        f"{accuracy.max():.1f}] over {len(folds)} test folds"
    )


if __name__ == "__main__":
    main()
