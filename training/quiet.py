"""Third-party chatter kept out of a command's output while exporting and quantising.

``torch.onnx`` warns that torchvision is missing (its ops are not needed here),
``onnxscript`` and ``onnx_ir`` log every optimisation pass at INFO, ONNX Runtime's
quantiser logs its shape inference and prints its calibration to stdout, and
``torch.export`` raises a PyTorch-internal deprecation warning: none of it says
anything about the model, and the project's own lines (the parity check, the int8
decision) do. Their errors still come through.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

#: Loggers held at ERROR while :func:`quiet_third_party` runs.
NOISY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torchvision",
    "onnxscript",
    "onnx_ir",
    "onnxruntime",
)


@contextlib.contextmanager
def quiet_third_party(stdout: bool = False) -> Iterator[None]:
    """Hold :data:`NOISY_LOGGERS` at ERROR and drop PyTorch's internal FutureWarnings;
    with ``stdout`` also swallow what the libraries print there (the quantiser's
    calibration). Everything is restored on exit."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.ERROR))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*treespec")
            with contextlib.redirect_stdout(io.StringIO()) if stdout else contextlib.nullcontext():
                yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
