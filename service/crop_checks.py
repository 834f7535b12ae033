"""The QC of crops posted as cells (``POST /classify``): each crop segmented by the
camera's rules (:meth:`Segmenter.crop_qc`), on a thread of its own.

One thread checks every request's crops: the checks hold the GIL most of their time,
so more threads would not check more crops at once, only switch between each other
and the event loop more often (a second thread sharing the crops, tried on 2 cores,
took 10-20 % more CPU per request for no more requests per second). The requests
that queued while it was busy are checked in one go and answered together, so their
results reach the store together too (one commit for all of them, not one each).
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from acquisition.segmentation import SegmentationConfig, Segmenter

from .queues import with_waiting

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropChecks:
    """Each crop's QC (None when it holds no cell) and why it holds none (None when
    it does)."""

    qc: list[dict[str, Any] | None]
    rejected: list[str | None]


def check_crops(crops: np.ndarray, config: SegmentationConfig) -> CropChecks:
    """Each of ``crops`` segmented by the camera's rules, at ``config``'s crop pixel size."""
    segmenter = Segmenter(config)
    checked = [segmenter.crop_qc(c, config.crop_pixel_size_um) for c in crops]
    return CropChecks(
        [dict(q) if q is not None else None for q, _ in checked], [r for _, r in checked]
    )


@dataclass
class _Request:
    crops: np.ndarray
    config: SegmentationConfig
    future: Future[CropChecks]


class CropChecker:
    """Checks posted crops (:func:`check_crops`) on its own thread, in turn."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="crop-qc", daemon=True)
        self._thread.start()

    def submit(self, crops: np.ndarray, config: SegmentationConfig) -> Future[CropChecks]:
        """Queue (N, H, W) crops; the future gives their checks."""
        future: Future[CropChecks] = Future()
        self._queue.put(_Request(crops, config, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Check what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch, stopping = with_waiting(self._queue, first)  # checked in one go
            answers: list[tuple[Future[CropChecks], CropChecks]] = []
            for request in batch:
                if not request.future.set_running_or_notify_cancel():
                    continue  # its caller gave up
                try:
                    answers.append((request.future, check_crops(request.crops, request.config)))
                except Exception as exc:  # a failed check fails its request, not the thread
                    logger.exception("checking %d posted crops failed", len(request.crops))
                    request.future.set_exception(exc)
            for future, checks in answers:
                future.set_result(checks)
