"""ONNX Runtime inference: execution providers, model sessions, one shared micro-batcher.

The CUDA provider is requested only when its libraries load (onnxruntime-gpu logs
an error for every session otherwise); the provider in use is logged. All callers
(the camera loop, every HTTP request) submit crops to one :class:`MicroBatcher`,
which runs them through the current model in batches of at most ``max_batch``,
waiting at most ``max_wait_s`` for a batch to fill. A caller whose crops are a batch
already (the camera loop's frame) asks for no wait: its crops run with whatever is
queued at that moment.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .manifest import Manifest, ModelError, read_model_dir

logger = logging.getLogger(__name__)

Provider = Literal["auto", "cuda", "cpu"]
#: What onnxruntime-gpu 1.31 (CUDA 13) needs to run on a GPU: driver, runtime, cuBLAS, cuDNN.
CUDA_LIBRARIES = ("libcuda.so.1", "libcudart.so.13", "libcublas.so.13", "libcudnn.so.9")


def cuda_status() -> tuple[bool, str]:
    """Whether the CUDA provider can load here, and why not."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this ONNX Runtime build has no CUDA provider"
    for name in CUDA_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            return False, f"{name} does not load"
    return True, "CUDA libraries load"


def choose_providers(requested: Provider) -> list[str]:
    if requested not in ("auto", "cuda", "cpu"):
        raise ValueError(f"execution provider must be auto, cuda or cpu, got {requested!r}")
    if requested == "cpu":
        return ["CPUExecutionProvider"]
    ok, why = cuda_status()
    if ok:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if requested == "cuda":
        raise ModelError(f"the CUDA execution provider cannot run here: {why}")
    logger.info("CUDA execution provider not used: %s", why)
    return ["CPUExecutionProvider"]


class ModelRuntime:
    """One loaded model: its manifest and an ONNX Runtime session, warmed up.

    Parameters
    ----------
    directory : a model directory (``model.onnx`` + ``manifest.json``)
    provider : "auto", "cuda" or "cpu"
    threads : intra-op threads (0: ONNX Runtime's default, all cores)
    """

    def __init__(self, directory: Path, provider: Provider = "auto", threads: int = 0) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest, onnx_path = read_model_dir(self.directory)
        c, h, w = self.manifest.input_shape
        if c != 1:
            raise ModelError(
                f"{self.directory}: only 1-channel (OPD) inputs are served, got {c} channels"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # ONNX Runtime's threads spin after each call by default, burning the CPU that
        # the HTTP event loop and the camera pipeline need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), options, providers=choose_providers(provider)
            )
        except ModelError:
            raise
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise ModelError(f"{onnx_path} cannot be loaded by ONNX Runtime: {exc}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{onnx_path} must take one input, takes {len(inputs)}")
        shape = inputs[0].shape
        if len(shape) != 4 or [shape[1], shape[2], shape[3]] != [c, h, w]:
            raise ModelError(
                f"{onnx_path} takes input {shape}, its manifest says [N, {c}, {h}, {w}]"
            )
        self.input_name = inputs[0].name
        self.providers = self.session.get_providers()
        probabilities = self.predict(np.zeros((1, h, w), np.float32))  # warm-up
        if probabilities.shape != (1, len(self.manifest.classes)):
            raise ModelError(
                f"{onnx_path} answers shape {probabilities.shape} for one crop; its manifest "
                f"lists {len(self.manifest.classes)} classes"
            )
        logger.info(
            "model %s %s loaded from %s on %s",
            self.manifest.name,
            self.manifest.version,
            self.directory,
            ", ".join(self.providers),
        )

    @property
    def crop_shape(self) -> tuple[int, int]:
        return self.manifest.input_shape[1], self.manifest.input_shape[2]

    def predict(self, crops_nm: np.ndarray) -> np.ndarray:
        """(N, H, W) OPD in nm -> (N, classes) float32 probabilities."""
        x = self.manifest.normalization.apply(crops_nm)[:, None]
        (out,) = self.session.run(None, {self.input_name: x})[:1]
        return np.asarray(out, dtype=np.float32)


class ModelHolder:
    """The model currently served; swapped atomically by :meth:`load`."""

    def __init__(self, provider: Provider = "auto", threads: int = 0) -> None:
        self.provider = provider
        self.threads = threads
        self._current: ModelRuntime | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def current(self) -> ModelRuntime | None:
        return self._current

    def load(self, directory: Path) -> ModelRuntime:
        """Load ``directory``; on any failure the previous model keeps serving."""
        with self._lock:
            try:
                runtime = ModelRuntime(directory, self.provider, self.threads)
            except ModelError as exc:
                self.last_error = str(exc)
                raise
            self._current = runtime
            self.last_error = None
            return runtime


@dataclass
class Prediction:
    probabilities: np.ndarray  # (N, classes)
    manifest: Manifest


class ModelNotLoadedError(RuntimeError):
    """No model is loaded."""


@dataclass
class _Request:
    crops: np.ndarray
    future: Future[Prediction]
    wait: bool = True


class MicroBatcher:
    """Batches crops from every caller through the current model in one thread.

    Parameters
    ----------
    holder : where the current model is
    max_batch : most crops per inference call
    max_wait_s : how long the first request of a batch waits for company
    on_batch : called with (crops, seconds) after every inference (metrics)
    """

    def __init__(
        self,
        holder: ModelHolder,
        max_batch: int = 64,
        max_wait_s: float = 0.002,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.holder = holder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, crops_nm: np.ndarray, wait: bool = True) -> Future[Prediction]:
        """Queue (N, H, W) crops; the future gives their probabilities and the model.

        ``wait=False``: the crops do not wait ``max_wait_s`` for company; they run
        with the requests queued when they arrive (a batch already waiting for
        company stops waiting and takes them). The camera loop submits each frame so:
        its next frame comes later than any wait worth making, so waiting would
        only add latency.
        """
        future: Future[Prediction] = Future()
        if self.holder.current is None:
            future.set_exception(ModelNotLoadedError("no model is loaded"))
            return future
        crops = np.ascontiguousarray(crops_nm, dtype=np.float32)
        self._queue.put(_Request(crops, future, wait))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            size = len(first.crops)
            deadline = time.monotonic() + (self.max_wait_s if first.wait else 0.0)
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=max(remaining, 0))
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                size += len(item.crops)
                if not item.wait:  # no more waiting: take only what is queued now
                    deadline = 0.0
            self._infer(batch)

    def _infer(self, batch: list[_Request]) -> None:
        # A request whose caller gave up (its awaiting task cancelled) is dropped: its
        # future takes no result.
        batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not batch:
            return
        runtime = self.holder.current
        if runtime is None:
            for request in batch:
                request.future.set_exception(ModelNotLoadedError("no model is loaded"))
            return
        try:
            crops = np.concatenate([r.crops for r in batch]) if len(batch) > 1 else batch[0].crops
            parts = []
            for i in range(0, len(crops), self.max_batch):
                chunk = crops[i : i + self.max_batch]
                start = time.perf_counter()
                parts.append(runtime.predict(chunk))
                if self.on_batch:
                    self.on_batch(len(chunk), time.perf_counter() - start)
            probabilities = np.concatenate(parts)
        except Exception as exc:  # a failed inference fails its requests, not the thread
            logger.exception("inference failed")
            for request in batch:
                request.future.set_exception(exc)
            return
        offset = 0
        for request in batch:
            n = len(request.crops)
            request.future.set_result(
                Prediction(probabilities[offset : offset + n], runtime.manifest)
            )
            offset += n
