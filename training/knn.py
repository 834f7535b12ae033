"""K-nearest-neighbour classification in image space (the paper's KNN baseline).

NumPy only: each crop is a vector of its OPD values; distances are Euclidean.
"""

from __future__ import annotations

import numpy as np


class KNNClassifier:
    """Majority vote of the ``k`` nearest training crops (ties: the nearer class).

    Parameters
    ----------
    k : number of neighbours (the paper: 9)
    """

    def __init__(self, k: int = 9) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self.n_classes = 0

    def fit(self, crops: np.ndarray, labels: np.ndarray) -> KNNClassifier:
        """crops : (N, H, W) OPD; labels : (N,) int class indices >= 0."""
        labels = np.asarray(labels)
        if crops.shape[0] != labels.shape[0] or crops.shape[0] == 0:
            raise ValueError(
                f"need as many labels as crops, got {crops.shape[0]} and {labels.shape[0]}"
            )
        if labels.min() < 0:
            raise ValueError("KNN needs labeled crops (labels >= 0)")
        self._x = crops.reshape(len(crops), -1).astype(np.float64)
        self._y = labels.astype(np.int64)
        self.n_classes = int(labels.max()) + 1
        return self

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        """(N, classes): the fraction of the k neighbours in each class."""
        if self._x is None or self._y is None:
            raise RuntimeError("call fit() first")
        x = crops.reshape(len(crops), -1).astype(np.float64)
        d2 = (x**2).sum(1)[:, None] - 2 * x @ self._x.T + (self._x**2).sum(1)[None, :]
        k = min(self.k, len(self._y))
        nearest = np.argsort(d2, axis=1, kind="stable")[:, :k]
        votes = np.zeros((len(x), self.n_classes))
        # Nearer neighbours weigh a hair more, which breaks ties towards the nearer class.
        weights = 1.0 + 1e-6 * (k - np.arange(k))[None, :]
        np.add.at(votes, (np.arange(len(x))[:, None], self._y[nearest]), weights)
        return votes / votes.sum(1, keepdims=True)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        return self.predict_proba(crops).argmax(1)
