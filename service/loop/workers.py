"""The camera loop's workers: the frame processor in a thread, or in a child process.

Segmentation holds the GIL for most of its time, so worker threads alone saturate
near one core; each worker thread therefore drives a child process of its own.
Frames go to a child, and their maps, labels and crops come back, through shared
memory (:mod:`service.children`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from acquisition.backend import BackendName
from acquisition.frames import CropGeometry, FrameProcessor, ProcessedFrames
from acquisition.reconstruction import ReconstructionConfig
from acquisition.segmentation import SegmentationConfig

from ..children import BLOCK_BYTES, ChildDied, ChildProcess, serve, settle_child

#: A worker process ended; a new one takes the next frame.
WorkerDied = ChildDied


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
    """A worker process: the reference first, then (frame, crop geometry) calls
    answered ("ok", ProcessedFrames), ("bad frame", why) or ("error", why)."""
    settle_child()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [worker]: %(message)s"
    )
    try:
        (reference,) = connection.recv()
    except (EOFError, OSError):
        return
    processor = config.processor(reference)

    def handle(argument: tuple[np.ndarray, CropGeometry]) -> tuple[str, Any]:
        image, crop = argument
        try:
            return ("ok", processor.process(image, crop))
        except ValueError as exc:
            return ("bad frame", str(exc))
        except Exception as exc:
            return ("error", f"{type(exc).__name__}: {exc}")

    serve(connection, handle)


class ChildWorker:
    """The frame processor in a child process (one per worker thread); the
    reference hologram goes first, over the pipe (:class:`ChildProcess`)."""

    def __init__(
        self, config: WorkerConfig, reference: np.ndarray | None, block_bytes: int = BLOCK_BYTES
    ) -> None:
        self.child = ChildProcess(
            _child_main, (config,), "pipeline-worker", first=(reference,), block_bytes=block_bytes
        )

    def process(self, image: np.ndarray, crop: CropGeometry) -> ProcessedFrames:
        status, answer = self.child.call((image, crop))
        if status == "ok":
            result: ProcessedFrames = answer
            return result
        if status == "bad frame":
            raise ValueError(answer)
        raise RuntimeError(answer)

    def close(self) -> None:
        self.child.close()


def start_worker(config: WorkerConfig, reference: np.ndarray | None) -> Worker:
    """A worker of the kind ``config`` asks for."""
    if config.processes:
        return ChildWorker(config, reference)
    return LocalWorker(config, reference)
