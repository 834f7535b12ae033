"""One KNN path: training's knn model and evaluation's knn scores come from fit_knn."""

from __future__ import annotations

import numpy as np

from models.manifest import Normalization
from training.config import classifier_preset
from training.data import load_crops
from training.evaluate import scores_for
from training.knn import K, KNNClassifier, fit_knn, train_knn


def test_fit_knn_is_the_papers_knn_on_normalised_crops(data):
    crops = load_crops([data / "cells.h5"])
    train, test = np.arange(0, 24, 2), np.arange(1, 24, 2)
    knn = fit_knn(crops.opd[train], crops.label[train])
    assert K == 9
    assert knn.norm == Normalization.fit(crops.opd[train])
    expected = (
        KNNClassifier(9)
        .fit(knn.norm.apply(crops.opd[train]), crops.label[train])
        .predict_proba(knn.norm.apply(crops.opd[test]))
    )
    np.testing.assert_array_equal(knn.predict_proba(crops.opd[test]), expected)
    # Evaluation scores a test fold with exactly that model.
    config = classifier_preset("cpu")
    scored = scores_for("knn", crops, train, test, config, None, seed=0)
    np.testing.assert_array_equal(scored.probabilities, expected)
    # No temperature for knn: its vote fractions are its probabilities.
    assert scored.temperature == 1.0
    np.testing.assert_array_equal(scored.uncalibrated, expected)


def test_train_knn_validates_on_a_split_and_exports_every_crop(data):
    import onnxruntime as ort

    crops = load_crops([data / "cells.h5"])
    onnx_bytes, norm, record = train_knn(crops.opd, crops.label, 2, 0.2, seed=0)
    assert norm == Normalization.fit(crops.opd)
    assert record["train_size"] == 24
    assert record["validation_size"] == 4
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = norm.apply(crops.opd[:5])[:, None]
    got = session.run(None, {"x": x})[0]
    expected = fit_knn(crops.opd, crops.label, norm).predict_proba(crops.opd[:5])
    np.testing.assert_allclose(got, expected, atol=1e-5)
