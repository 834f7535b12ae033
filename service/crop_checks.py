"""The QC of crops posted as cells (``POST /classify``): each crop segmented by the
camera's rules (:meth:`Segmenter.crop_qc`), on a thread of its own that hands the
checks to a child process (``processes``, the service's ``TOPGAN_WORKER_PROCESSES``).

The checks hold the GIL most of their time: on a thread of the service they took
the interpreter from the event loop and the batcher (under load, 32-crop requests
fell from about 5 to 3.3 per second when they moved there from the request threads);
in a child process they run beside both. One child, one thread: the requests that
queued while it was busy are checked in one go and answered together, so their
results reach the store together too (one commit for all of them, not one each). A
child that dies is replaced in the background, and its batch checked on the thread.
"""

from __future__ import annotations

import logging
import pickle
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from acquisition.segmentation import SegmentationConfig, Segmenter

from .children import ChildDied, ChildProcess, serve, settle_child
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


def _sendable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _checks_main(connection: Any) -> None:
    """The QC process: a batch of (crops, config) calls answered by a list of
    ("ok", CropChecks) or ("error", why), one per request."""
    settle_child()

    def handle(batch: list[tuple[np.ndarray, SegmentationConfig]]) -> list[tuple[str, Any]]:
        answers: list[tuple[str, Any]] = []
        for crops, config in batch:
            try:
                answers.append(("ok", check_crops(crops, config)))
            except Exception as exc:  # the error itself goes back, as the thread raises it
                answers.append(("error", _sendable(exc)))
        return answers

    serve(connection, handle)


@dataclass
class _Request:
    crops: np.ndarray
    config: SegmentationConfig
    future: Future[CropChecks]


class CropChecker:
    """Checks posted crops (:func:`check_crops`) on its own thread, in turn: in a
    child process of its own (``processes``), else on the thread itself.

    The child starts in the background at the first posted crops (its imports take a
    second or two; a service that is posted none, a camera-only one, starts none):
    until it answers, and while a child that died is replaced, the thread checks the
    crops itself, so no request waits for a process to start.
    """

    def __init__(self, processes: bool = True) -> None:
        self.processes = processes
        self._child: ChildProcess | None = None
        self._starter: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="crop-qc", daemon=True)
        self._thread.start()

    def submit(self, crops: np.ndarray, config: SegmentationConfig) -> Future[CropChecks]:
        """Queue (N, H, W) crops; the future gives their checks."""
        future: Future[CropChecks] = Future()
        self._queue.put(_Request(crops, config, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Check what is queued, then stop the thread (and the child)."""
        self._queue.put(None)
        self._thread.join(timeout)
        with self._lock:
            self._closed = True
            starter, child, self._child = self._starter, self._child, None
        if starter is not None:
            starter.join(timeout)
        with self._lock:  # a child the starter finished after all
            late, self._child = self._child, None
        for c in (child, late):
            if c is not None:
                c.close()

    def _start_child(self) -> None:
        def start() -> None:
            try:
                child = ChildProcess(_checks_main, (), "crop-qc")
                child.call([])  # answers once its imports are done
            except Exception:
                logger.exception("the crop QC process did not start; the thread checks")
                with self._lock:
                    self._starter = None
                return
            with self._lock:
                self._starter = None
                if not self._closed:
                    self._child = child
                    return
            child.close()

        self._starter = threading.Thread(target=start, name="crop-qc-start", daemon=True)
        self._starter.start()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch, stopping = with_waiting(self._queue, first)  # checked in one go
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if live:  # those whose callers gave up are left out
                self._answer(live)

    def _answer(self, requests: list[_Request]) -> None:
        try:
            answers = self._check(requests)
        except Exception as exc:  # a failed check fails its requests, not the thread
            logger.exception("checking %d posted crop batches failed", len(requests))
            for request in requests:
                request.future.set_exception(exc)
            return
        for request, (status, answer) in zip(requests, answers, strict=True):
            if status == "ok":
                request.future.set_result(answer)
            else:  # a failed check fails its request only
                logger.error("checking %d posted crops failed: %r", len(request.crops), answer)
                request.future.set_exception(answer)

    def _check(self, requests: list[_Request]) -> list[tuple[str, Any]]:
        """("ok", CropChecks) or ("error", the exception), one per request."""
        with self._lock:
            child = self._child
            start = self.processes and child is None and self._starter is None
        if start:  # the first posted crops: a service that gets none starts no process
            self._start_child()
        if child is not None:
            try:
                answers: list[tuple[str, Any]] = child.call([(r.crops, r.config) for r in requests])
                return answers
            except ChildDied as exc:
                logger.error("the crop QC process ended (%s); a new one starts", exc)
                child.close()
                with self._lock:
                    self._child = None
                self._start_child()
        answers = []
        for request in requests:
            try:
                answers.append(("ok", check_crops(request.crops, request.config)))
            except Exception as exc:
                answers.append(("error", exc))
        return answers
