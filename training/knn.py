"""K-nearest-neighbour classification in image space (the paper's KNN baseline).

NumPy only: each crop is a vector of its normalised OPD values; distances are
Euclidean. :func:`fit_knn` is the one way both training and evaluation fit it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.manifest import Normalization

from .splits import split_validation

#: The paper's number of neighbours.
K = 9


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


@dataclass(frozen=True)
class FittedKNN:
    """A :class:`KNNClassifier` and the normalisation its crops went through."""

    classifier: KNNClassifier
    norm: Normalization

    def predict_proba(self, opd: np.ndarray) -> np.ndarray:
        """(N, H, W) OPD in nm -> (N, classes) neighbour fractions."""
        return self.classifier.predict_proba(self.norm.apply(opd))

    def predict(self, opd: np.ndarray) -> np.ndarray:
        return self.classifier.predict(self.norm.apply(opd))


def fit_knn(opd: np.ndarray, labels: np.ndarray, norm: Normalization | None = None) -> FittedKNN:
    """K = 9 neighbours among (N, H, W) OPD crops, normalised with ``norm`` (by default
    the range fitted to these crops)."""
    norm = Normalization.fit(opd) if norm is None else norm
    return FittedKNN(KNNClassifier(K).fit(norm.apply(opd), labels), norm)


def train_knn(
    opd: np.ndarray, labels: np.ndarray, classes: int, val_fraction: float, seed: int
) -> tuple[bytes, Normalization, dict[str, Any]]:
    """The knn method's model: its validation accuracy on the usual split (the
    normalisation fitted to every crop), then the ONNX graph holding every crop."""
    rng = np.random.default_rng(seed)
    norm = Normalization.fit(opd)
    train_pos, val_pos = split_validation(labels, val_fraction, rng)
    started = time.monotonic()
    knn = fit_knn(opd[train_pos], labels[train_pos], norm)
    accuracy = float((knn.predict(opd[val_pos]) == labels[val_pos]).mean())
    data = knn_onnx(norm.apply(opd)[:, None], labels.astype(np.int64), classes)
    record = {
        "train_size": len(labels),
        "validation_size": len(val_pos),
        "validation_accuracy": round(accuracy, 4),
        "train_seconds": round(time.monotonic() - started, 2),
    }
    return data, norm, record


def knn_onnx(train_x: np.ndarray, train_y: np.ndarray, classes: int, k: int = K) -> bytes:
    """The K-nearest-neighbour classifier as an ONNX graph.

    train_x : (M, 1, H, W) normalised training crops; train_y : (M,) class indices.
    Input x (N, 1, H, W) -> squared distances to every training crop -> the k
    nearest -> the fraction of them in each class (the probabilities).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = len(train_x)
    k = min(k, m)
    flat = train_x.reshape(m, -1).astype(np.float32)
    onehot = np.eye(classes, dtype=np.float32)[train_y]
    inits = [
        numpy_helper.from_array(flat.T.copy(), "train_t"),
        numpy_helper.from_array((flat**2).sum(1).astype(np.float32), "train_sq"),
        numpy_helper.from_array(onehot, "onehot"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([k], np.int64), "k"),
        numpy_helper.from_array(np.array([-2.0], np.float32), "minus_two"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "flat_shape"], ["xf"]),
        helper.make_node("ReduceSumSquare", ["xf", "axis1"], ["x_sq"], keepdims=1),
        helper.make_node("MatMul", ["xf", "train_t"], ["dot"]),
        helper.make_node("Mul", ["dot", "minus_two"], ["dot2"]),
        helper.make_node("Add", ["dot2", "x_sq"], ["partial"]),
        helper.make_node("Add", ["partial", "train_sq"], ["dist"]),
        helper.make_node("TopK", ["dist", "k"], ["near_d", "near_i"], largest=0, sorted=1),
        helper.make_node("Gather", ["onehot", "near_i"], ["votes"], axis=0),
        helper.make_node("ReduceMean", ["votes", "axis1"], ["probabilities"], keepdims=0),
    ]
    h, w = train_x.shape[2:]
    graph = helper.make_graph(
        nodes,
        "knn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, h, w])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model.SerializeToString()
