"""The camera loop's workers: the frame processor in a thread, or in a child process.

Segmentation holds the GIL for most of its time, so worker threads alone saturate
near one core; each worker thread therefore drives a child process of its own.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from acquisition.backend import BackendName
from acquisition.frames import CropGeometry, FrameProcessor, ProcessedFrames
from acquisition.reconstruction import ReconstructionConfig
from acquisition.segmentation import SegmentationConfig

#: How long a child process gets to finish its frame and exit at close.
CLOSE_TIMEOUT_S = 5.0


class WorkerDied(RuntimeError):
    """A worker process ended; a new one takes the next frame."""


@dataclass(frozen=True)
class WorkerConfig:
    """How each worker builds its :class:`FrameProcessor`.

    Attributes
    ----------
    reconstruction, segmentation : the configurations (the served model sets the
        crop geometry of each call)
    backend : the array backend (auto, numpy, cupy)
    fft_workers : FFT threads per worker (None: all cores)
    processes : run each worker in a child process of its own
    """

    reconstruction: ReconstructionConfig
    segmentation: SegmentationConfig
    backend: BackendName = "auto"
    fft_workers: int | None = None
    processes: bool = True

    def processor(self, reference: np.ndarray | None) -> FrameProcessor:
        return FrameProcessor.create(
            self.reconstruction, self.segmentation, self.backend, self.fft_workers, reference
        )


class Worker(Protocol):
    def process(self, image: np.ndarray, crop: CropGeometry) -> ProcessedFrames: ...

    def close(self) -> None: ...


class LocalWorker:
    """The frame processor in the calling thread."""

    def __init__(self, config: WorkerConfig, reference: np.ndarray | None) -> None:
        self.processor = config.processor(reference)

    def process(self, image: np.ndarray, crop: CropGeometry) -> ProcessedFrames:
        return self.processor.process(image, crop)

    def close(self) -> None:
        pass


def _child_main(connection: Any, config: WorkerConfig) -> None:
    """A worker process: the reference first, then frames in, results or errors out."""
    import signal

    from threadpoolctl import threadpool_limits

    # The parent decides when to stop: a Ctrl+C or a SIGTERM to the process group
    # must not end a worker while it has frames to finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [worker]: %(message)s"
    )
    # The crops' small matrix products gain nothing from BLAS threads, whose spinning
    # would take the cores from the other workers.
    threadpool_limits(1)
    try:
        reference = connection.recv()
    except (EOFError, OSError):
        return
    processor = config.processor(reference)
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        image, crop = message
        try:
            connection.send(("ok", processor.process(image, crop)))
        except ValueError as exc:
            connection.send(("bad frame", str(exc)))
        except Exception as exc:
            connection.send(("error", f"{type(exc).__name__}: {exc}"))


class ChildWorker:
    """The frame processor in a child process (one per worker thread).

    The reference hologram goes to the child over the pipe, not as a start
    argument: multiprocessing writes start arguments into a pipe whose read end the
    parent still holds, so a child that dies while it starts (a SIGTERM to the
    process group) would leave that write blocked for good; over the connection a
    dead child is an immediate :class:`WorkerDied`.
    """

    def __init__(self, config: WorkerConfig, reference: np.ndarray | None) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_child_main, args=(child, config), name="pipeline-worker", daemon=True
        )
        self._process.start()
        child.close()
        self._send(reference)

    def _send(self, message: Any) -> None:
        try:
            self._connection.send(message)
        except (EOFError, OSError) as exc:
            raise WorkerDied(f"the worker process ended ({exc or 'no answer'})") from None

    def process(self, image: np.ndarray, crop: CropGeometry) -> ProcessedFrames:
        self._send((image, crop))
        try:
            status, answer = self._connection.recv()
        except (EOFError, OSError) as exc:
            raise WorkerDied(f"the worker process ended ({exc or 'no answer'})") from None
        if status == "ok":
            result: ProcessedFrames = answer
            return result
        if status == "bad frame":
            raise ValueError(answer)
        raise RuntimeError(answer)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._connection.send(None)
        self._process.join(CLOSE_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._connection.close()


def start_worker(config: WorkerConfig, reference: np.ndarray | None) -> Worker:
    """A worker of the kind ``config`` asks for."""
    if config.processes:
        return ChildWorker(config, reference)
    return LocalWorker(config, reference)
