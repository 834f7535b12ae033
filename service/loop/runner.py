"""The real-time camera loop (docs/design.md, "Data flow and threads").

::

    grab thread --frames--> FrameQueue (bounded, drops the oldest) --> worker threads
      (FrameProcessor: reconstruct + segment) --> FrameSequencer (grab order) -->
      EventBook (tracking: an event id per cell) --crops--> the classifier (the shared
      micro-batcher) --> the results store --> observers: live view, crop archive
                                      +--> EventBook: an ended cell's views combined,
                                          stored once as its event

Nothing blocks the grab thread: a full queue drops its oldest frame and counts it.
Workers do not wait for inference either: each frame's crops go to the batcher
with a callback that stores the results, so a worker is free for the next frame.
Frames are tracked in grab order (:mod:`service.loop.events`): a worker that
finishes early hands its frame on once the frames before it are done.

States (:class:`RunState`)::

               start()              camera open
      IDLE ------------> STARTING --------------> RUNNING
       ^                   |   ^                    |  camera lost, silent or failing
       |       open fails  v   | reopened           v
       |                 FAILED <-------------------+   (retried with backoff)
       |                   |
       |  stop()           v        every queued frame processed, its cells stored
       +------------- STOPPING ------------------------------> IDLE
                           | (a replay's last frame stops by itself)
                           +---- not done within the timeout --> FAILED

Every count and error lives in the service's metrics only (:class:`LoopMetrics`); ``status()``
reads them back, so ``GET /acquisition`` and ``/metrics`` tell the same numbers.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from prometheus_client import Gauge, Histogram

from acquisition.cameras import (
    Camera,
    CameraError,
    CameraLost,
    EndOfStream,
    GrabbedFrame,
    GrabFailed,
    GrabTimeout,
)
from acquisition.frames import CropGeometry, ProcessedFrames
from acquisition.segmentation import Cell
from acquisition.tracking import TrackerConfig
from models.manifest import Manifest
from models.runtime import Prediction

from ..pipelines import CameraSettings, Pipeline, Stages
from ..store import EventRow
from .events import EventBook, FrameSequencer, TrackedFrame
from .frame_queue import FrameQueue
from .reference import ReferenceRefresher, RefreshConfig, reference_id
from .states import Count, ErrorReason, RunState
from .workers import Worker, WorkerConfig, WorkerDied, start_worker

logger = logging.getLogger(__name__)

#: Consecutive failed buffers (free run) after which the camera is reopened.
MAX_FAILED_IN_A_ROW = 50
#: Consecutive grab timeouts in free run after which the camera is reopened.
MAX_TIMEOUTS_IN_A_ROW = 5
#: The grab rate is measured over this window, seconds.
RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class FrameResult:
    """One frame's way through a worker, handed to the ``on_frame`` observers, with
    the id of the reference hologram it was reconstructed against (None: none)."""

    frame: GrabbedFrame
    processed: ProcessedFrames
    reference_id: str | None = None


@dataclass
class StoredCells:
    """Cells of one frame after they were committed (``on_stored`` observers)."""

    frame: GrabbedFrame
    cells: list[Cell]
    crops: np.ndarray
    prediction: Prediction
    labels: list[str]
    ids: list[int]
    event_ids: list[int] = field(default_factory=list)
    reference_id: str | None = None
    pipeline_id: str | None = None


@dataclass(frozen=True)
class LoopStatus:
    """A snapshot of the camera loop, taken under its lock (``GET /acquisition``)."""

    state: RunState
    camera: str
    detail: str
    started_at: float | None
    frames_per_second: float
    queue_depth: int
    queue_size: int
    reference_id: str | None
    pipeline_id: str | None
    counts: Mapping[Count, int]
    errors: Mapping[ErrorReason, int]
    last_error: str | None
    camera_info: Mapping[str, Any] = field(default_factory=dict)


class Classifier(Protocol):
    """What the loop needs from the service: the served model's crop geometry, the
    shared micro-batcher, the pipelines and the store (see
    :class:`service.classification.Classification`)."""

    def crop_geometry(self) -> CropGeometry: ...

    def submit(self, crops: np.ndarray) -> Future[Prediction]: ...

    def pipeline(self, stages: Stages, model: Manifest | None = None) -> Pipeline | None: ...

    def store_cells(
        self,
        prediction: Prediction,
        frame: GrabbedFrame,
        cells: list[Cell],
        event_ids: list[int] | None = None,
        reference_id: str | None = None,
        pipeline_id: str | None = None,
    ) -> tuple[list[str], Future[list[int]]]: ...

    def new_event_id(self) -> int: ...

    def store_event(self, event: EventRow) -> Future[list[int]]: ...


class LoopMetrics(Protocol):
    """Where the loop counts (see :class:`service.metrics.Metrics`)."""

    stage_seconds: Histogram
    queue_depth: Gauge
    camera_up: Gauge
    background_opd: Histogram
    fringe_contrast: Gauge
    carrier_drift: Gauge
    unwrap_residues: Histogram
    reference_age: Gauge

    def count(self, what: Count, n: int = 1) -> None: ...

    def error(self, reason: ErrorReason) -> None: ...

    def loop_counts(self) -> dict[Count, int]: ...

    def error_counts(self) -> dict[ErrorReason, int]: ...


class AcquisitionRunner:
    """Runs one camera through reconstruction, segmentation, classification and storage.

    Parameters
    ----------
    camera : the camera's name for the status (``emulator``, ``replay:PATH``, ...)
    camera_factory : builds the camera and the reference hologram (if it has one);
        called in the grab thread, again after every reconnect
    workers_config : how the workers reconstruct and segment
    classifier : the service side (crop geometry, batcher and store)
    metrics : where every count and error goes
    tracking : how cells are followed across frames; None: every detection is an
        event of its own
    camera_settings : the camera settings that shape the frames, for the pipeline id
        of every result (:mod:`service.pipelines`)
    """

    def __init__(
        self,
        camera: str,
        camera_factory: Callable[[], tuple[Camera, np.ndarray | None]],
        workers_config: WorkerConfig,
        classifier: Classifier,
        metrics: LoopMetrics,
        *,
        workers: int = 2,
        queue_size: int = 32,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        trigger: str = "free",
        tracking: TrackerConfig | None = None,
        reference_refresh: RefreshConfig | None = None,
        camera_settings: CameraSettings | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"at least one worker is needed, got {workers}")
        self.camera = camera
        self.camera_factory = camera_factory
        self.workers_config = workers_config
        self.classifier = classifier
        self.metrics = metrics
        self.workers = workers
        self.queue_size = queue_size
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.trigger = trigger
        self.tracking = tracking
        #: The pipeline of every result, besides the model (service.pipelines).
        self.stages = Stages(
            workers_config.reconstruction, workers_config.segmentation, camera_settings, tracking
        )
        self._pipeline_id: str | None = None  # of the last frame's cells, for the log
        #: Called in a worker for each processed frame, for each frame in grab order
        #: after tracking, and after a frame's cells are stored (from the store's
        #: thread); all must be quick.
        self.on_frame: list[Callable[[FrameResult], None]] = []
        self.on_tracked: list[Callable[[TrackedFrame], None]] = []
        self.on_stored: list[Callable[[StoredCells], None]] = []

        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._state = RunState.IDLE
        self._detail = "not started"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue = FrameQueue(queue_size)
        self._take = threading.Lock()  # a frame and its place in the order, together
        self._sequencer: FrameSequencer[FrameResult] = FrameSequencer(self._release)
        self._events = self._event_book()
        self._reference: np.ndarray | None = None
        self._reference_version = 0
        self._reference_id: str | None = None
        self._reference_since: float | None = None  # monotonic time it was taken
        # The id of the camera's own reference at its last opening: a reconnect that
        # brings back the same one keeps a refreshed reference in use.
        self._source_reference: str | None = None
        metrics.reference_age.set_function(self._reference_age)
        self.refresher: ReferenceRefresher | None = None
        if reference_refresh is not None:
            self.refresher = ReferenceRefresher(
                reference_refresh, lambda: self._reference_id, self._refreshed
            )
        self._camera_info: dict[str, Any] = {}
        self._inflight = 0  # frames whose cells are in the batcher or the store
        self._grab_times: collections.deque[float] = collections.deque(maxlen=256)
        self._last_error: str | None = None
        self._started_at: float | None = None
        self._finished: str | None = None  # why the stream ended by itself

    # -- control --------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def reference(self) -> np.ndarray | None:
        """The reference hologram of the open camera's source (None: none)."""
        with self._lock:
            return self._reference

    def start(self) -> None:
        """Start the loop (the camera opens in the background). Raises RuntimeError
        when it is already running or stopping."""
        with self._lock:
            busy = (RunState.STARTING, RunState.RUNNING, RunState.STOPPING)
            if self._state in busy or self._threads:
                raise RuntimeError(f"the acquisition is already {self._state}")
            self._set_state(RunState.STARTING, "opening the camera")
            self._stop.clear()
            self._finished = None
            self._queue = FrameQueue(self.queue_size)
            self._sequencer = FrameSequencer(self._release)
            self._events = self._event_book()
            self._grab_times.clear()  # the rate is this run's
            self._started_at = time.time()
        pipeline = self.classifier.pipeline(self.stages)
        logger.info(
            "acquisition pipeline %s", pipeline.id if pipeline else "none (no model is loaded)"
        )
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
            self._set_state(RunState.STOPPING, "finishing the queued frames")
        self._stop.set()
        deadline = time.monotonic() + timeout
        grab, *workers = self._threads
        grab.join(max(deadline - time.monotonic(), 0))
        self._queue.close()
        for thread in workers:
            thread.join(max(deadline - time.monotonic(), 0))
        self._events.close()  # every frame is tracked: the open events end
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
                    RunState.FAILED,
                    f"stop timed out: {left} frames' cells or events unstored, "
                    f"threads still running: {', '.join(alive) or 'none'}",
                )
            else:
                self._set_state(RunState.IDLE, self._finished or "stopped")
        counts = {what.value: n for what, n in self.metrics.loop_counts().items()}
        logger.info("acquisition stopped: %s", counts)

    def status(self) -> LoopStatus:
        """A frozen snapshot for ``GET /acquisition``."""
        counts = self.metrics.loop_counts()
        errors = self.metrics.error_counts()
        pipeline = self.classifier.pipeline(self.stages)
        with self._lock:
            times = list(self._grab_times)
            now = time.monotonic()
            recent = [t for t in times if now - t <= RATE_WINDOW_S]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else 0.0
            if self._state != RunState.RUNNING:
                fps = 0.0  # nothing is grabbed: no stale rate from the frames before
            return LoopStatus(
                state=self._state,
                camera=self.camera,
                detail=self._detail,
                started_at=self._started_at,
                frames_per_second=round(fps, 2),
                queue_depth=len(self._queue),
                queue_size=self.queue_size,
                reference_id=self._reference_id,
                pipeline_id=pipeline.id if pipeline else None,
                counts=counts,
                errors=errors,
                last_error=self._last_error,
                camera_info=dict(self._camera_info),
            )

    # -- internals ------------------------------------------------------------------

    def _event_book(self) -> EventBook:
        return EventBook.create(
            self.classifier, self.metrics, self.tracking, self._hold, self._done_one
        )

    def _set_state(self, state: RunState, detail: str) -> None:
        if state != self._state:
            logger.info("acquisition %s: %s", state, detail)
        self._state, self._detail = state, detail

    def _error(self, reason: ErrorReason, message: str) -> None:
        with self._lock:
            self._last_error = message
        self.metrics.error(reason)

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
                self._error(ErrorReason.CAMERA_OPEN, message)
                with self._lock:
                    self._set_state(
                        RunState.FAILED, f"{message}; retry {attempt} in {backoff:.1f} s"
                    )
                logger.warning("%s; retrying in %.1f s", message, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            with self._lock:
                source = reference_id(reference)
                if source != self._source_reference or self._reference_version == 0:
                    self._source_reference = source
                    self._use_reference(reference)
                self._camera_info = camera.describe()
                if self._state != RunState.STOPPING:
                    self._set_state(RunState.RUNNING, f"streaming from {self.camera}")
            if attempt:
                self.metrics.count(Count.RECONNECTS)
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
                self._set_state(RunState.FAILED, f"{lost}; reconnecting in {backoff:.1f} s")
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
                self._error(ErrorReason.GRAB_TIMEOUT, str(exc))
                timeouts_in_a_row += 1
                if timeouts_in_a_row >= MAX_TIMEOUTS_IN_A_ROW:
                    return f"camera silent: {timeouts_in_a_row} grab timeouts in a row"
                continue
            except GrabFailed as exc:
                self._error(ErrorReason.GRAB_FAILED, str(exc))
                failed_in_a_row += 1
                if failed_in_a_row in (1, 10) or failed_in_a_row % 100 == 0:
                    logger.warning("grab failed (%d in a row): %s", failed_in_a_row, exc)
                if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                    return f"camera failing: {failed_in_a_row} failed buffers in a row ({exc})"
                continue
            except EndOfStream as exc:
                with self._lock:
                    self._finished = str(exc)
                    self._set_state(RunState.STOPPING, str(exc))
                self._stop.set()
                threading.Thread(target=self.stop, name="replay-end", daemon=True).start()
                return None
            except CameraLost as exc:
                self._error(ErrorReason.CAMERA_LOST, str(exc))
                return f"camera lost: {exc}"
            except CameraError as exc:
                self._error(ErrorReason.GRAB_FAILED, str(exc))
                failed_in_a_row += 1
                if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                    return f"camera failing: {exc}"
                continue
            except Exception as exc:  # a driver error nobody foresaw: reopen the camera
                logger.exception("unexpected error grabbing")
                self._error(ErrorReason.CAMERA_LOST, f"{type(exc).__name__}: {exc}")
                return f"camera error: {type(exc).__name__}: {exc}"
            failed_in_a_row = timeouts_in_a_row = 0
            dropped = self._queue.put(frame)
            with self._lock:
                self._grab_times.append(frame.monotonic)
            self.metrics.count(Count.FRAMES_GRABBED)
            if dropped:
                self.metrics.count(Count.FRAMES_DROPPED, dropped)
            self.metrics.queue_depth.set(len(self._queue))
        return None

    def _use_reference(self, reference: np.ndarray | None) -> str | None:
        """Put ``reference`` in use (under the lock): each worker takes it for its
        next frame. Returns its id."""
        self._reference = reference
        self._reference_version += 1
        self._reference_id = reference_id(reference)
        self._reference_since = time.monotonic() if reference is not None else None
        logger.info("reference in use: %s", self._reference_id or "none")
        return self._reference_id

    def _refreshed(self, reference: np.ndarray) -> str:
        """A new reference from the refresher (a worker's thread), whole."""
        with self._lock:
            new = self._use_reference(reference)
        self.metrics.count(Count.REFERENCE_REFRESHES)
        assert new is not None
        return new

    def _start_worker(self) -> tuple[Worker, int, str | None]:
        with self._lock:
            reference, version = self._reference, self._reference_version
            used = self._reference_id
        return start_worker(self.workers_config, reference), version, used

    def _work_loop(self) -> None:
        worker: Worker | None = None
        version = -1
        used: str | None = None
        try:
            while True:
                with self._take:
                    frame = self._queue.get(timeout=0.25)
                    sequence = self._sequencer.take() if frame is not None else -1
                if frame is None:
                    if self._queue.closed:
                        return
                    continue
                self.metrics.queue_depth.set(len(self._queue))
                result: FrameResult | None = None
                for attempt in (1, 2):  # a frame whose worker died gets one more worker
                    try:
                        if worker is not None and version != self._reference_version:
                            worker.close()
                            worker = None
                        if worker is None:
                            worker, version, used = self._start_worker()
                        result = self._process(frame, worker, used)
                    except WorkerDied as exc:
                        if worker is not None:
                            worker.close()
                            worker = None
                        retry = attempt == 1
                        fate = "a new worker takes it" if retry else "the frame is lost"
                        self._error(ErrorReason.WORKER, f"frame {frame.index}: {exc}; {fate}")
                        logger.error("frame %d: %s; %s", frame.index, exc, fate)
                        if retry:
                            continue
                    except ValueError as exc:  # HologramError and friends: this frame is bad
                        self._error(ErrorReason.RECONSTRUCTION, f"frame {frame.index}: {exc}")
                        logger.debug("frame %d skipped: %s", frame.index, exc)
                    except Exception as exc:  # a worker must survive any one frame
                        message = f"frame {frame.index}: {type(exc).__name__}: {exc}"
                        self._error(ErrorReason.WORKER, message)
                        logger.exception("frame %d failed in the pipeline", frame.index)
                    break
                self._sequencer.done(sequence, result)  # a lost frame too: the order goes on
        finally:
            if worker is not None:
                worker.close()

    def _process(
        self, frame: GrabbedFrame, worker: Worker, reference_used: str | None
    ) -> FrameResult:
        processed = worker.process(frame.image, self.classifier.crop_geometry())
        self.metrics.stage_seconds.labels("reconstruct").observe(processed.reconstruct_s)
        self.metrics.stage_seconds.labels("segment").observe(processed.segment_s)
        self.metrics.count(Count.FRAMES_PROCESSED)
        self.metrics.count(Count.CELLS_CUT, len(processed.cells))
        if not processed.cells:
            self.metrics.count(Count.FRAMES_WITHOUT_CELLS)
        quality = processed.quality()
        if math.isfinite(quality["background_opd_nm"]):
            self.metrics.background_opd.observe(quality["background_opd_nm"])
        if math.isfinite(quality["fringe_contrast"]):
            self.metrics.fringe_contrast.set(quality["fringe_contrast"])
        if math.isfinite(quality["carrier_drift_cycles_per_px"]):
            self.metrics.carrier_drift.set(quality["carrier_drift_cycles_per_px"])
        if math.isfinite(quality["unwrap_residues"]):
            self.metrics.unwrap_residues.observe(quality["unwrap_residues"])
        result = FrameResult(frame, processed, reference_used)
        if self.refresher is not None:
            try:
                self.refresher.observe(frame.image, processed, reference_used)
            except Exception:  # the frame itself is fine: it goes on
                logger.exception("the reference refresh failed on frame %d", frame.index)
        for observer in self.on_frame:
            observer(result)
        return result

    def _release(self, result: FrameResult | None) -> None:
        """A frame in grab order (None: one that was lost): track it, then classify
        and store its cells with their event ids."""
        if result is None:
            return
        events = self._events  # this run's: a late callback never reaches the next run's
        start = time.perf_counter()
        try:
            tracked = events.track(result.frame, result.processed)
        except Exception as exc:  # the frame's cells are lost, and said so; the loop goes on
            logger.exception("frame %d could not be tracked", result.frame.index)
            self._error(ErrorReason.WORKER, f"frame {result.frame.index}: tracking: {exc}")
            self.metrics.count(Count.CELLS_LOST, len(result.processed.cells))
            return
        self.metrics.stage_seconds.labels("track").observe(time.perf_counter() - start)
        for observer in self.on_tracked:
            try:
                observer(tracked)
            except Exception:
                logger.exception("an observer of tracked frames failed")
        cells = result.processed.cells
        if not cells:
            return
        crops = result.processed.crops()
        self._hold()
        future = self.classifier.submit(crops)
        reference = result.reference_id
        future.add_done_callback(lambda f: self._classified(f, tracked, crops, events, reference))

    def _classified(
        self,
        future: Future[Prediction],
        tracked: TrackedFrame,
        crops: np.ndarray,
        events: EventBook,
        reference_id: str | None,
    ) -> None:
        frame, cells, event_ids = tracked.frame, tracked.processed.cells, tracked.event_ids
        try:
            prediction = future.result()
            pipeline = self.classifier.pipeline(self.stages, prediction.manifest)
            pipeline_id = pipeline.id if pipeline else None
            labels, stored = self.classifier.store_cells(
                prediction, frame, cells, event_ids, reference_id, pipeline_id
            )
        except Exception as exc:
            events.lost(event_ids)
            self._lost_cells(len(cells), f"classification failed: {type(exc).__name__}: {exc}")
            return
        if pipeline_id != self._pipeline_id:  # the first cells, or a model reloaded
            if self._pipeline_id is not None:
                logger.info("acquisition pipeline %s (was %s)", pipeline_id, self._pipeline_id)
            self._pipeline_id = pipeline_id
        result = StoredCells(
            frame, cells, crops, prediction, labels, [], event_ids, reference_id, pipeline_id
        )
        stored.add_done_callback(lambda f: self._stored(f, result, events))

    def _stored(self, future: Future[list[int]], result: StoredCells, events: EventBook) -> None:
        try:
            result.ids = future.result()
        except Exception as exc:
            events.lost(result.event_ids)
            self._lost_cells(len(result.cells), f"storing failed: {type(exc).__name__}: {exc}")
            return
        qc = [dict(c.qc) for c in result.cells]
        events.stored(
            result.event_ids,
            result.prediction,
            qc,
            result.frame.monotonic,
            result.reference_id,
            result.pipeline_id,
        )
        try:
            for observer in self.on_stored:
                observer(result)
        except Exception:
            logger.exception("an observer of stored cells failed")
        finally:
            self._done_one()

    def _lost_cells(self, n: int, message: str) -> None:
        self._error(ErrorReason.CLASSIFY, message)
        self.metrics.count(Count.CELLS_LOST, n)
        self._done_one()

    def _reference_age(self) -> float:
        """Seconds the current reference has been in use (NaN without one)."""
        since = self._reference_since
        return time.monotonic() - since if since is not None else float("nan")

    def _hold(self) -> None:
        """Something the stop must wait for: a frame's cells, or an ended event."""
        with self._idle:
            self._inflight += 1

    def _done_one(self) -> None:
        with self._idle:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()
