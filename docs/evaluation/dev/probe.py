"""How much class information a frozen trunk carries: a linear probe on dev data.

For each trunk (randomly initialised as the cnn method starts, or a pretrained one:
a GAN's discriminator or an SSL trunk, training.pretrained) the crops of a dev
dataset go through the frozen convolutions; the features are each block's channel
means plus the last block's whole output. A ridge-penalised logistic regression is
fitted on 10, 40 and 160 training crops drawn as in the protocol (5 stratified folds,
balanced training sets) and scored on the test fold. If a pretrained trunk scores no
better than a random one, its pretraining brings no class information that a linear
read-out can use.

The random trunk sees the crops normalised as the dataset's own range; a pretrained
trunk at its pretraining's normalisation, as its fine-tuned classifiers do
(``--refit`` adds each at the dataset's range too, as this probe did before).

    OMP_NUM_THREADS=2 python docs/evaluation/dev/probe.py --data sw-dev.h5 \\
        --pretrained models/pretrained/sperm-dcgan [more folders] > probe-sw.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from models.manifest import Normalization
from training.config import network_preset
from training.data import load_crops
from training.networks import Classifier, init_weights
from training.pretrained import Pretrained, load_pretrained
from training.splits import stratified_folds, stratified_indices

SIZES = (10, 40, 160)


def features(trunk: Pretrained | None, x: np.ndarray) -> np.ndarray:
    torch.manual_seed(0)
    model = Classifier(network_preset("cpu") if trunk is None else trunk.network, 2)
    if trunk is None:
        model.apply(init_weights)
    else:
        model.trunk.load_state_dict(trunk.trunk)
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 200):
            h = model.pool(torch.from_numpy(x[i : i + 200])[:, None])
            parts = []
            for layer in model.trunk:
                h = layer(h)
                if isinstance(layer, torch.nn.LeakyReLU):
                    parts.append(h.mean((2, 3)))
            parts.append(h.flatten(1))
            out.append(torch.cat(parts, 1))
    return torch.cat(out).numpy()


def logistic(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Positive-class predictions of an L2-penalised logistic regression (LBFGS) on
    standardised features."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a = torch.tensor((x_train - mu) / sd, dtype=torch.float32)
    b = torch.tensor(y_train, dtype=torch.float32)
    w = torch.zeros(a.shape[1], requires_grad=True)
    c = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, c], max_iter=300)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + c, b)
        loss = loss + (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    t = torch.tensor((x_test - mu) / sd, dtype=torch.float32)
    return ((t @ w + c) > 0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pretrained", "--gan", type=Path, nargs="*", default=[])
    parser.add_argument(
        "--refit", action="store_true", help="also each trunk at the dataset's own range"
    )
    args = parser.parse_args()
    crops = load_crops([args.data])
    own = Normalization.fit(crops.opd)
    y = crops.label
    folds = stratified_folds(y, 5, 0)
    print(f"{args.data.name}: linear-probe accuracy (%), mean [min, max] over 5 folds")
    print("| trunk | " + " | ".join(str(s) for s in SIZES) + " |")
    print("|---|" + "---|" * len(SIZES))
    trunks: list[tuple[str, Pretrained | None, Normalization]] = [
        ("random (cnn's start)", None, own)
    ]
    for folder in args.pretrained:
        loaded = load_pretrained(folder)
        n = loaded.normalization
        range_nm = f"{n.opd_min_nm:g}..{n.opd_max_nm:g} nm"
        trunks.append((f"{folder.name} ({loaded.kind}, its {range_nm})", loaded, n))
        if args.refit:
            range_nm = f"{own.opd_min_nm:g}..{own.opd_max_nm:g} nm"
            trunks.append((f"{folder.name} ({loaded.kind}, the data's {range_nm})", loaded, own))
    for name, trunk, norm in trunks:
        f = features(trunk, norm.apply(crops.opd))
        cells = []
        for size in SIZES:
            accuracy = []
            for k, test in enumerate(folds):
                pool = np.setdiff1d(np.arange(len(y)), test)
                train = pool[stratified_indices(y[pool], size, np.random.default_rng([0, k, size]))]
                hit = logistic(f[train], y[train], f[test]) == (y[test] == 1)
                accuracy.append(100 * hit.mean())
            cells.append(f"{np.mean(accuracy):.1f} [{min(accuracy):.1f}, {max(accuracy):.1f}]")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
