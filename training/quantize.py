"""Static int8 quantisation of an exported classifier (ONNX Runtime, QDQ format),
calibrated on training crops; the caller decides whether to keep it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def quantize_int8(onnx_bytes: bytes, calibration: np.ndarray, batch: int = 16) -> bytes:
    """int8 weights (per channel) and uint8 activations calibrated on ``calibration``
    : (N, 1, H, W) normalised crops."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Equal batches: the percentile calibrator stacks what each batch produced.
    n = (
        len(calibration) - len(calibration) % batch
        if len(calibration) > batch
        else len(calibration)
    )
    size = min(batch, n)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": calibration[i : i + size]} for i in range(0, n, size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, int8 = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        fp32.write_bytes(onnx_bytes)
        quant_pre_process(str(fp32), str(pre))
        # The softmax stays in float: quantised probabilities would not sum to one.
        softmax = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Softmax"]
        quantize_static(
            str(pre),
            str(int8),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.Percentile,
            nodes_to_exclude=softmax,
        )
        return int8.read_bytes()


def onnx_accuracy(onnx_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of an ONNX classifier on normalised crops ``x`` with labels ``y``."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    probabilities = np.concatenate(
        [session.run(None, {name: x[i : i + 256]})[0] for i in range(0, len(x), 256)]
    )
    return float((probabilities.argmax(1) == y).mean())
