"""The features method's L2 grid at the served scale: would a lower strength help?

On the dev files of ``served.md`` (train on the 800 crops of one, test on the 800 of
the other; no evaluation file read): the QPI features extracted once, the logistic
regression refitted at each L2 strength, its 5-fold cross-validated log-loss and
accuracy on the training file and its accuracy on the test file.

    OMP_NUM_THREADS=1 python docs/evaluation/dev/l2.py   # in the folder of the dev files
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from training.calibration import nll
from training.data import load_crops
from training.features import (
    FEATURE_NORMALIZATION,
    QPIFeatures,
    cross_validated_logits,
    cv_folds,
    extract,
    fit_logistic,
    standardisation,
)

STRENGTHS = (0.0001, 0.0003, 0.001, 0.003, 0.01)


def main() -> None:
    for task in ("sw", "hs"):
        train, test = load_crops([f"{task}-dev.h5"]), load_crops([f"{task}-dev-test.h5"])
        features = QPIFeatures(train.opd.shape[-1], train.pixel_size_um)
        z = extract(features, FEATURE_NORMALIZATION.apply(train.opd)[:, None])
        z_test = extract(features, FEATURE_NORMALIZATION.apply(test.opd)[:, None])
        folds = cv_folds(train.label, 2, 3)
        assert folds is not None
        for l2 in STRENGTHS:
            cv = cross_validated_logits(z, train.label, 2, l2, folds)
            mean, std = standardisation(z)
            weight, bias = fit_logistic((z - mean) / std, train.label, 2, l2)
            right = (((z_test - mean) / std) @ weight.T + bias).argmax(1) == test.label
            print(
                f"{task} L2 {l2:g}: cross-validated log-loss {nll(cv, train.label):.4f}, "
                f"accuracy {(cv.argmax(1) == train.label).mean():.4f}; test {right.mean():.4f}"
            )


if __name__ == "__main__":
    main()
