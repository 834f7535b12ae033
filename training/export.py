"""A trained PyTorch classifier to ONNX: calibrated softmax outputs (the logits divided
by the model's temperature inside the graph), a dynamic batch axis, and a parity
check against PyTorch before the bytes are returned."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import torch
from torch import nn

from .networks import WithSoftmax
from .quiet import quiet_third_party

logger = logging.getLogger(__name__)
#: The largest difference allowed between ONNX Runtime's and PyTorch's probabilities.
PARITY_TOLERANCE = 1e-4
#: Node metadata the exporter writes that names source files on the machine that
#: trained the model (``File "/home/.../networks.py", line 152``): a model directory
#: is copied between machines and committed, so it must not carry them.
MACHINE_METADATA = ("pkg.torch.onnx.stack_trace",)


def strip_machine_metadata(proto: onnx.ModelProto) -> None:
    """Remove :data:`MACHINE_METADATA` from every node of ``proto`` (in place)."""
    graphs = [proto.graph, *(f for f in proto.functions)]
    for graph in graphs:
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key not in MACHINE_METADATA]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)


def export_onnx(
    model: nn.Module,
    crop_size: int,
    probe: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> bytes:
    """ONNX (opset 18, IR <= 10 for ONNX Runtime 1.31) of softmax(``model``'s logits /
    ``temperature``) with a dynamic batch axis, checked against PyTorch on ``probe``
    (normalised crops; default: noise): the largest difference must stay under 1e-4."""
    import onnxruntime as ort

    wrapped = WithSoftmax(model, temperature).eval()
    example = torch.zeros(2, 1, crop_size, crop_size)
    with quiet_third_party():
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            verbose=False,
            input_names=["x"],
            output_names=["probabilities"],
            opset_version=18,
            dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=65536)}},
        )
    assert program is not None
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, 10)
    strip_machine_metadata(proto)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    if probe is None:
        probe = torch.rand(5, 1, crop_size, crop_size) * 2 - 1
    with torch.no_grad():
        expected = wrapped(probe).numpy()
    got = session.run(None, {session.get_inputs()[0].name: probe.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(
            f"ONNX export differs from PyTorch by {diff:.2e} (tolerance {PARITY_TOLERANCE})"
        )
    logger.info("ONNX export matches PyTorch within %.1e (%d crops)", diff, len(probe))
    return data
