"""Would a hybrid help: a frozen trunk's features beside the QPI features, one head.

On a dev dataset, for each trunk (random as the cnn method starts, or pretrained),
three read-outs are fitted exactly as the ``features`` method fits its regression
(the L2 strength of ``training.features.L2_GRID`` chosen by cross-validation on the
training crops, standardised, L-BFGS): the QPI features alone (the ``features``
method itself), the trunk's features alone (each block's channel means, as
``probe.py`` takes them, without the last block's whole map) and both side by side.
Training sets of 10, 40 and 160 crops, drawn as in the protocol (5 stratified folds).
If the hybrid does not beat the QPI features alone beyond the fold noise, a hybrid
method has no reason to exist on these data.

    OMP_NUM_THREADS=1 python docs/evaluation/dev/hybrid.py --data sw-dev.h5 \\
        --pretrained models/pretrained/sperm-dcgan ssl-sw
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe import features as trunk_outputs

from models.manifest import Normalization
from training.config import network_preset
from training.data import load_crops
from training.features import (
    FEATURE_NORMALIZATION,
    QPIFeatures,
    choose_l2,
    extract,
    fit_logistic,
    standardisation,
)
from training.fit import input_normalization
from training.pretrained import load_pretrained
from training.splits import stratified_folds, stratified_indices

SIZES = (10, 40, 160)


def readout(z: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    """Test accuracy of the features method's regression on columns ``z``."""
    l2, _, _ = choose_l2(z[train], y[train], 2, seed)
    mean, std = standardisation(z[train])
    weight, bias = fit_logistic((z[train] - mean) / std, y[train], 2, l2)
    predicted = (((z[test] - mean) / std) @ weight.T + bias).argmax(1)
    return float((predicted == y[test]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pretrained", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    crops = load_crops([args.data])
    y = crops.label
    qpi = extract(
        QPIFeatures(crops.opd.shape[1], crops.pixel_size_um, FEATURE_NORMALIZATION).eval(),
        FEATURE_NORMALIZATION.apply(crops.opd)[:, None],
    )
    own = Normalization.fit(crops.opd)
    trunks: list[tuple[str, np.ndarray]] = [("random", trunk_outputs(None, own.apply(crops.opd)))]
    for folder in args.pretrained:
        loaded = load_pretrained(folder)
        # The scale a fine-tuned model of this trunk would use (training.fit's rule).
        norm, source = input_normalization(loaded, crops.opd)
        scale = "its scale" if source.startswith("pretraining") else "the data's scale"
        trunks.append((f"{folder.name} ({scale})", trunk_outputs(loaded, norm.apply(crops.opd))))
    folds = stratified_folds(y, 5, 0)
    print(f"{args.data.name}: accuracy (%), mean [min, max] over 5 folds")
    print("| read-out | " + " | ".join(str(s) for s in SIZES) + " |")
    print("|---|" + "---|" * len(SIZES))
    rows: list[tuple[str, np.ndarray]] = [("QPI features (the features method)", qpi)]
    for name, outputs in trunks:
        means = outputs[:, : outputs.shape[1] - _last_map_columns()]
        rows.append((f"{name} trunk", means))
        rows.append((f"{name} trunk + QPI features", np.concatenate([means, qpi], 1)))
    for name, z in rows:
        cells = []
        for size in SIZES:
            accuracy = []
            for k, test in enumerate(folds):
                pool = np.setdiff1d(np.arange(len(y)), test)
                train = pool[stratified_indices(y[pool], size, np.random.default_rng([0, k, size]))]
                accuracy.append(100 * readout(z, y, train, test, k))
            cells.append(f"{np.mean(accuracy):.1f} [{min(accuracy):.1f}, {max(accuracy):.1f}]")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def _last_map_columns() -> int:
    """Columns of probe.features' last part, the last block's whole output map (the
    cpu network every trunk here has)."""
    cfg = network_preset("cpu")
    side = cfg.input_size // 16
    return 8 * cfg.base_channels * side * side


if __name__ == "__main__":
    main()
