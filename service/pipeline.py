"""The real-time camera loop (DESIGN, "Data flow and threads").

::

    grab thread --frames--> FrameQueue (bounded, drops the oldest) --> worker threads
      (reconstruct + segment) --crops--> the shared micro-batcher --> the results store
      --> live view, crop archive, metrics

Nothing blocks the grab thread: a full queue drops its oldest frame and counts it.
Workers do not wait for inference either: each frame's crops go to the batcher
with a callback that stores the results, so a worker is free for the next frame.
:meth:`AcquisitionRunner.stop` stops the camera, lets the workers finish every
queued frame and waits until every classified cell is committed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np

from acquisition.backend import get_backend
from acquisition.cameras import (
    Camera,
    CameraError,
    CameraLost,
    EndOfStream,
    GrabbedFrame,
    GrabFailed,
    GrabTimeout,
)
from acquisition.reconstruction import OPDMaps, ReconstructionConfig, Reconstructor
from acquisition.segmentation import Cell, FrameSegmentation, SegmentationConfig, Segmenter
from models.runtime import Prediction

from .metrics import Metrics

logger = logging.getLogger(__name__)

RunState = Literal["idle", "starting", "running", "stopping", "failed"]
#: Consecutive failed buffers (free run) after which the camera is reopened.
MAX_FAILED_IN_A_ROW = 50
#: Consecutive grab timeouts in free run after which the camera is reopened.
MAX_TIMEOUTS_IN_A_ROW = 5


class FrameQueue:
    """A bounded FIFO whose ``put`` never blocks: when full it drops the oldest."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"the frame queue needs room for at least 1 frame, got {maxsize}")
        self.maxsize = maxsize
        self._items: collections.deque[GrabbedFrame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: GrabbedFrame) -> int:
        """Queue ``item``; returns how many frames were dropped to make room (0 or 1)."""
        with self._cond:
            dropped = 0
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                dropped = 1
            self._items.append(item)
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> GrabbedFrame | None:
        """The oldest frame; None once the queue is closed and empty (or on timeout)."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        """No more frames will come: ``get`` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class FrameResult:
    """One frame's way through the workers, handed to the observers."""

    frame: GrabbedFrame
    maps: OPDMaps
    segmentation: FrameSegmentation


@dataclass
class StoredCells:
    """Cells of one frame after they were committed."""

    frame: GrabbedFrame
    cells: list[Cell]
    crops: np.ndarray
    prediction: Prediction
    labels: list[str]
    ids: list[int]


class Classifier(Protocol):
    """What the runner needs from the service: the model's crop geometry, the shared
    micro-batcher and the store (see :class:`service.state.ServiceState`)."""

    def crop_geometry(self) -> tuple[tuple[int, int], float]: ...

    def submit(self, crops: np.ndarray) -> Future[Prediction]: ...

    def store_cells(
        self, prediction: Prediction, frame: GrabbedFrame, cells: list[Cell]
    ) -> tuple[list[str], Future[list[int]]]: ...


@dataclass(frozen=True)
class ProcessingConfig:
    """How each worker reconstructs and segments.

    Attributes
    ----------
    reconstruction, segmentation : the configurations (the segmentation's crop size
        and pixel size are replaced by the served model's)
    backend : the array backend (auto, numpy, cupy)
    fft_workers : FFT threads per worker (None: all cores)
    processes : run each worker's reconstruction and segmentation in a child
        process of its own. Segmentation holds the GIL for most of its time, so
        threads alone saturate near one core; processes scale with the cores.
    """

    reconstruction: ReconstructionConfig
    segmentation: SegmentationConfig
    backend: str = "auto"
    fft_workers: int | None = None
    processes: bool = True


class _LocalProcessor:
    """Reconstruction and segmentation in the calling thread."""

    def __init__(self, config: ProcessingConfig, reference: np.ndarray | None) -> None:
        self.config = config
        backend = get_backend(config.backend, config.fft_workers)  # type: ignore[arg-type]
        self.reconstructor = Reconstructor(config.reconstruction, backend, reference)
        self.segmenters: dict[tuple[tuple[int, int], float], Segmenter] = {}

    def process(
        self, image: np.ndarray, geometry: tuple[tuple[int, int], float]
    ) -> tuple[OPDMaps, FrameSegmentation, float, float]:
        segmenter = self.segmenters.get(geometry)
        if segmenter is None:
            (size, _), pixel_size = geometry
            config = replace(
                self.config.segmentation, crop_size=size, crop_pixel_size_um=pixel_size
            )
            segmenter = self.segmenters[geometry] = Segmenter(config)
        t0 = time.perf_counter()
        maps = self.reconstructor.reconstruct(image)
        t1 = time.perf_counter()
        segmentation = segmenter.segment(maps)[0]
        return maps, segmentation, t1 - t0, time.perf_counter() - t1

    def close(self) -> None:
        pass


def _child_main(connection: Any, config: ProcessingConfig, reference: np.ndarray | None) -> None:
    """A worker process: frames in, (maps, segmentation, times) or an error out."""
    import signal

    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [worker]: %(message)s"
    )
    # The crops' small matrix products gain nothing from BLAS threads, whose spinning
    # would take the cores from the other workers.
    threadpool_limits(1)
    processor = _LocalProcessor(config, reference)
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        image, geometry = message
        try:
            connection.send(("ok", processor.process(image, geometry)))
        except ValueError as exc:
            connection.send(("bad frame", str(exc)))
        except Exception as exc:
            connection.send(("error", f"{type(exc).__name__}: {exc}"))


class _ChildProcessor:
    """Reconstruction and segmentation in a child process (one per worker thread)."""

    def __init__(self, config: ProcessingConfig, reference: np.ndarray | None) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_child_main,
            args=(child, config, reference),
            name="pipeline-worker",
            daemon=True,
        )
        self._process.start()
        child.close()

    def process(
        self, image: np.ndarray, geometry: tuple[tuple[int, int], float]
    ) -> tuple[OPDMaps, FrameSegmentation, float, float]:
        try:
            self._connection.send((image, geometry))
            status, answer = self._connection.recv()
        except (EOFError, OSError) as exc:
            raise WorkerDied(f"the worker process ended ({exc or 'no answer'})") from None
        if status == "ok":
            return answer
        if status == "bad frame":
            raise ValueError(answer)
        raise RuntimeError(answer)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._connection.send(None)
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._connection.close()


class WorkerDied(RuntimeError):
    """A worker process ended; it is started again for the next frame."""


class AcquisitionRunner:
    """Runs one camera through reconstruction, segmentation, classification and storage.

    Parameters
    ----------
    camera_factory : builds the camera (and the reference hologram, if it has one);
        called in the grab thread, again after every reconnect
    processing : how the workers reconstruct and segment
    classifier : the service side (crop geometry, batcher and store)
    """

    def __init__(
        self,
        kind: str,
        camera_factory: Callable[[], tuple[Camera, np.ndarray | None]],
        processing: ProcessingConfig,
        classifier: Classifier,
        metrics: Metrics,
        *,
        workers: int = 2,
        queue_size: int = 32,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        trigger: str = "free",
    ) -> None:
        if workers < 1:
            raise ValueError(f"at least one worker is needed, got {workers}")
        self.kind = kind
        self.camera_factory = camera_factory
        self.processing = processing
        self.classifier = classifier
        self.metrics = metrics
        self.workers = workers
        self.queue_size = queue_size
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.trigger = trigger
        #: Called in a worker for each processed frame, and after a frame's cells are
        #: stored (from the store's thread); both must be quick.
        self.on_frame: list[Callable[[FrameResult], None]] = []
        self.on_stored: list[Callable[[StoredCells], None]] = []

        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._state: RunState = "idle"
        self._detail = "not started"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue = FrameQueue(queue_size)
        self._reference: np.ndarray | None = None
        self._reference_version = 0
        self._camera_info: dict[str, Any] = {}
        self._inflight = 0  # frames whose cells are in the batcher or the store
        self._grab_times: collections.deque[float] = collections.deque(maxlen=256)
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None
        self.started_at: float | None = None
        self._finished: str | None = None  # why the stream ended by itself

    # -- control --------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        return self._state

    def start(self) -> None:
        """Start the loop (the camera opens in the background). Raises RuntimeError
        when it is already running or stopping."""
        with self._lock:
            if self._state in ("starting", "running", "stopping") or self._threads:
                raise RuntimeError(f"the acquisition is already {self._state}")
            self._set_state("starting", "opening the camera")
            self._stop.clear()
            self._finished = None
            self._queue = FrameQueue(self.queue_size)
            self.started_at = time.time()
        threads = [threading.Thread(target=self._grab_loop, name="camera-grab", daemon=True)]
        threads += [
            threading.Thread(target=self._work_loop, name=f"pipeline-{i}", daemon=True)
            for i in range(self.workers)
        ]
        self._threads = threads
        for thread in (*threads[1:], threads[0]):  # the workers first: stop() joins them
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop grabbing, process every queued frame, wait until its cells are stored."""
        with self._lock:
            if not self._threads:
                return
            self._set_state("stopping", "finishing the queued frames")
        self._stop.set()
        deadline = time.monotonic() + timeout
        grab, *workers = self._threads
        grab.join(max(deadline - time.monotonic(), 0))
        self._queue.close()
        for thread in workers:
            thread.join(max(deadline - time.monotonic(), 0))
        with self._idle:
            while self._inflight and time.monotonic() < deadline:
                self._idle.wait(max(deadline - time.monotonic(), 0.01))
            left = self._inflight
        self._threads = []
        self.metrics.camera_up.set(0)
        self.metrics.queue_depth.set(len(self._queue))
        with self._lock:
            alive = [t.name for t in (grab, *workers) if t.is_alive()]
            if left or alive:
                self._set_state(
                    "failed",
                    f"stop timed out: {left} frames' cells unstored, threads still running: "
                    f"{', '.join(alive) or 'none'}",
                )
            else:
                self._set_state("idle", self._finished or "stopped")
        logger.info("acquisition stopped: %s", self.status()["counts"])

    def status(self) -> dict[str, Any]:
        """A snapshot for ``GET /acquisition``."""
        with self._lock:
            times = list(self._grab_times)
            state, detail = self._state, self._detail
        now = time.monotonic()
        recent = [t for t in times if now - t <= 5.0]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else 0.0
        return {
            "state": state,
            "camera": self.kind,
            "detail": detail,
            "started_at": self.started_at,
            "frames_per_second": round(fps, 2),
            "queue_depth": len(self._queue),
            "queue_size": self.queue_size,
            "counts": dict(self.counts),
            "errors": dict(self.errors),
            "last_error": self.last_error,
            "camera_info": dict(self._camera_info),
        }

    # -- internals ------------------------------------------------------------------

    def _set_state(self, state: RunState, detail: str) -> None:
        if state != self._state:
            logger.info("acquisition %s: %s", state, detail)
        self._state, self._detail = state, detail

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def _error(self, reason: str, message: str) -> None:
        with self._lock:
            self.errors[reason] += 1
            self.last_error = message
        self.metrics.frame_errors.labels(reason).inc()

    def _grab_loop(self) -> None:
        backoff = self.reconnect_min_s
        attempt = 0
        while not self._stop.is_set():
            camera: Camera | None = None
            try:
                camera, reference = self.camera_factory()
                camera.open()
            except Exception as exc:  # any failure to open is retried; the API stays up
                if not isinstance(exc, CameraError | OSError | ValueError):
                    logger.exception("unexpected error opening the camera")
                if camera is not None:
                    camera.close()
                attempt += 1
                message = f"camera: {' '.join(str(exc).split())}"
                self._error("camera_open", message)
                with self._lock:
                    self._set_state("failed", f"{message}; retry {attempt} in {backoff:.1f} s")
                logger.warning("%s; retrying in %.1f s", message, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            with self._lock:
                if reference is not self._reference:
                    self._reference = reference
                    self._reference_version += 1
                self._camera_info = camera.describe()
                if self._state != "stopping":
                    self._set_state("running", f"streaming from {self.kind}")
            if attempt:
                self._count("reconnects")
            self.metrics.camera_up.set(1)
            try:
                lost = self._stream(camera)
            finally:
                camera.close()
                self.metrics.camera_up.set(0)
            if lost is None:
                return
            attempt = 1
            backoff = self.reconnect_min_s
            with self._lock:
                self._set_state("failed", f"{lost}; reconnecting in {backoff:.1f} s")
            logger.warning("%s; reconnecting in %.1f s", lost, backoff)
            self._stop.wait(backoff)

    def _stream(self, camera: Camera) -> str | None:
        """Grab until stopped (None) or until the camera is lost (the reason)."""
        failed_in_a_row = timeouts_in_a_row = 0
        while not self._stop.is_set():
            try:
                frame = camera.grab()
            except GrabTimeout as exc:
                if self.trigger != "free":
                    continue  # waiting for a trigger is normal
                self._error("grab_timeout", str(exc))
                timeouts_in_a_row += 1
                if timeouts_in_a_row >= MAX_TIMEOUTS_IN_A_ROW:
                    return f"camera silent: {timeouts_in_a_row} grab timeouts in a row"
                continue
            except GrabFailed as exc:
                self._error("grab_failed", str(exc))
                failed_in_a_row += 1
                if failed_in_a_row in (1, 10) or failed_in_a_row % 100 == 0:
                    logger.warning("grab failed (%d in a row): %s", failed_in_a_row, exc)
                if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                    return f"camera failing: {failed_in_a_row} failed buffers in a row ({exc})"
                continue
            except EndOfStream as exc:
                with self._lock:
                    self._finished = str(exc)
                    self._set_state("stopping", str(exc))
                self._stop.set()
                threading.Thread(target=self.stop, name="replay-end", daemon=True).start()
                return None
            except CameraLost as exc:
                self._error("camera_lost", str(exc))
                return f"camera lost: {exc}"
            except CameraError as exc:
                self._error("grab_failed", str(exc))
                failed_in_a_row += 1
                if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                    return f"camera failing: {exc}"
                continue
            except Exception as exc:  # a driver error nobody foresaw: reopen the camera
                logger.exception("unexpected error grabbing")
                self._error("camera_lost", f"{type(exc).__name__}: {exc}")
                return f"camera error: {type(exc).__name__}: {exc}"
            failed_in_a_row = timeouts_in_a_row = 0
            dropped = self._queue.put(frame)
            with self._lock:
                self.counts["frames_grabbed"] += 1
                self.counts["frames_dropped"] += dropped
                self._grab_times.append(frame.monotonic)
            self.metrics.frames_grabbed.inc()
            if dropped:
                self.metrics.frames_dropped.inc(dropped)
            self.metrics.queue_depth.set(len(self._queue))
        return None

    def _work_loop(self) -> None:
        processor: _LocalProcessor | _ChildProcessor | None = None
        version = -1
        try:
            while True:
                frame = self._queue.get(timeout=0.25)
                if frame is None:
                    if self._queue.closed:
                        return
                    continue
                self.metrics.queue_depth.set(len(self._queue))
                try:
                    if processor is None or version != self._reference_version:
                        if processor is not None:
                            processor.close()
                        with self._lock:
                            reference, version = self._reference, self._reference_version
                        kind = _ChildProcessor if self.processing.processes else _LocalProcessor
                        processor = kind(self.processing, reference)
                    self._process(frame, processor)
                except ValueError as exc:  # HologramError and friends: this frame is bad
                    self._error("reconstruction", f"frame {frame.index}: {exc}")
                    logger.debug("frame %d skipped: %s", frame.index, exc)
                except WorkerDied as exc:
                    self._error("worker", f"frame {frame.index}: {exc}")
                    logger.error("frame %d lost: %s; starting a new worker", frame.index, exc)
                    assert processor is not None
                    processor.close()
                    processor = None
                except Exception as exc:  # a worker must survive any one frame
                    self._error("worker", f"frame {frame.index}: {type(exc).__name__}: {exc}")
                    logger.exception("frame %d failed in the pipeline", frame.index)
        finally:
            if processor is not None:
                processor.close()

    def _process(self, frame: GrabbedFrame, processor: _LocalProcessor | _ChildProcessor) -> None:
        maps, segmentation, t_reconstruct, t_segment = processor.process(
            frame.image, self.classifier.crop_geometry()
        )
        self.metrics.stage_seconds.labels("reconstruct").observe(t_reconstruct)
        self.metrics.stage_seconds.labels("segment").observe(t_segment)
        cells = segmentation.cells
        with self._lock:
            self.counts["frames_processed"] += 1
            self.counts["cells_cut"] += len(cells)
        for observer in self.on_frame:
            observer(FrameResult(frame, maps, segmentation))
        if not cells:
            return
        crops = np.stack([c.crop_nm for c in cells])
        with self._lock:
            self._inflight += 1
        future = self.classifier.submit(crops)
        future.add_done_callback(lambda f: self._classified(f, frame, cells, crops))

    def _classified(
        self, future: Future[Prediction], frame: GrabbedFrame, cells: list[Cell], crops: np.ndarray
    ) -> None:
        try:
            prediction = future.result()
            labels, stored = self.classifier.store_cells(prediction, frame, cells)
        except Exception as exc:
            self._lost_cells(len(cells), f"classification failed: {type(exc).__name__}: {exc}")
            return
        stored.add_done_callback(
            lambda f: self._stored(f, StoredCells(frame, cells, crops, prediction, labels, []))
        )

    def _stored(self, future: Future[list[int]], result: StoredCells) -> None:
        try:
            result.ids = future.result()
        except Exception as exc:
            self._lost_cells(len(result.cells), f"storing failed: {type(exc).__name__}: {exc}")
            return
        with self._lock:
            self.counts["cells_stored"] += len(result.ids)
        try:
            for observer in self.on_stored:
                observer(result)
        except Exception:
            logger.exception("an observer of stored cells failed")
        finally:
            self._done_one()

    def _lost_cells(self, n: int, message: str) -> None:
        self._error("classify", message)
        with self._lock:
            self.counts["cells_lost"] += n
        self._done_one()

    def _done_one(self) -> None:
        with self._idle:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()
