"""Static int8 quantisation of an exported classifier (ONNX Runtime, QDQ format),
calibrated on training crops, and the one rule that decides whether int8 is kept:
training applies it to the validation split, evaluation reports it on the test folds."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .quiet import quiet_third_party

#: An int8 model is kept only if it loses at most half a point of the float model's
#: accuracy.
INT8_TOLERANCE = 0.005
#: Accuracies are fractions of a few hundred crops: a loss of exactly the tolerance
#: (1 crop in 200) must not be refused over the last bit of a float subtraction.
_ROUNDING = 1e-9
#: The quantiser is calibrated on at most this many training crops.
CALIBRATION_CROPS = 512


def int8_kept(accuracy_fp32: float, accuracy_int8: float) -> bool:
    """The int8 rule: keep int8 when it loses at most :data:`INT8_TOLERANCE` of the
    float model's accuracy."""
    return accuracy_fp32 - accuracy_int8 <= INT8_TOLERANCE + _ROUNDING


@dataclass(frozen=True)
class Int8Check:
    """An exported model's int8 quantisation and both models' accuracies."""

    int8: bytes
    accuracy_fp32: float
    accuracy_int8: float

    @property
    def kept(self) -> bool:
        return int8_kept(self.accuracy_fp32, self.accuracy_int8)


def check_int8(fp32: bytes, calibration: np.ndarray, x: np.ndarray, y: np.ndarray) -> Int8Check:
    """Quantise ``fp32`` (calibrated on the first :data:`CALIBRATION_CROPS` of
    ``calibration``, normalised training crops (N, 1, H, W)) and score both models on
    normalised crops ``x`` with labels ``y``, which never calibrate anything."""
    int8 = quantize_int8(fp32, calibration[:CALIBRATION_CROPS])
    return Int8Check(int8, onnx_accuracy(fp32, x, y), onnx_accuracy(int8, x, y))


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

    with tempfile.TemporaryDirectory() as tmp, quiet_third_party(stdout=True):
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
