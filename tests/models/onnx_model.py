"""A small ONNX classifier built with onnx.helper, for tests that need a real model
before the training package has produced one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.manifest import Manifest, Normalization, write_model_dir


def small_classifier(seed: int = 0, classes: int = 2, size: int = 128) -> bytes:
    """x (N, 1, size, size) -> 8x8 average pool -> FC 16 -> ReLU -> FC classes -> softmax."""
    rng = np.random.default_rng(seed)
    pooled = (size // 8) ** 2
    w1 = rng.normal(0, 1 / np.sqrt(pooled), (pooled, 16)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 16).astype(np.float32)
    w2 = rng.normal(0, 1.0, (16, classes)).astype(np.float32)
    b2 = np.zeros(classes, np.float32)
    nodes = [
        helper.make_node("AveragePool", ["x"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small-classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_small_model(
    directory: Path,
    seed: int = 0,
    name: str = "test-model",
    version: str = "1",
    classes: tuple[str, ...] = ("sw480", "sw620"),
) -> Path:
    manifest = Manifest(
        name=name,
        version=version,
        created="2026-11-22T00:00:00Z",
        classes=list(classes),
        input_shape=(1, 128, 128),
        pixel_size_um=0.25,
        normalization=Normalization(-50.0, 750.0),
        method="cnn",
        training={"note": f"random weights built by tests/models/onnx_model.py (seed {seed})"},
    )
    return write_model_dir(directory, small_classifier(seed, len(classes)), manifest)
