"""Cells counted once: frames put back in order, tracked, their views gathered into events.

The workers finish frames in any order; :class:`FrameSequencer` hands them on in
the order they were taken from the queue (grab order), so the tracker sees the
frames one after the other. :class:`EventBook` links each frame's cells to the
cells of the previous frames (:class:`acquisition.tracking.Tracker`): every
detection gets the id of its event (its cell), its view is classified and stored
with that id, and when the cell has left (or is not seen for a few frames, or the
acquisition stops) its views' probabilities are combined
(:func:`models.views.combine_views`) into one event row::

    worker threads --frames, any order--> FrameSequencer --grab order--> EventBook.track
        --cells with event ids--> classifier --> store (views)
                                                   \\--> EventBook.stored --event ended,
                                                        all its views stored--> store (event)

Cells cut by the field's border are followed (so a cell entering keeps its id) but
not classified; a track only ever seen clipped is counted, not stored.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from acquisition.cameras import GrabbedFrame
from acquisition.frames import ProcessedFrames
from acquisition.tracking import Tracker, TrackerConfig
from models.runtime import Prediction
from models.views import combine_views

from ..store import EventRow
from .states import Count

logger = logging.getLogger(__name__)

T = TypeVar("T")


class FrameSequencer(Generic[T]):
    """Hands items on in the order of their sequence numbers.

    Each number from :meth:`take` must come back exactly once through :meth:`done`
    (with ``None`` for a frame that was lost); ``release`` is called with every
    item in order, one call at a time, from whichever thread completed the gap.
    """

    def __init__(self, release: Callable[[T | None], None]) -> None:
        self.release = release
        self._lock = threading.Lock()
        self._taken = 0
        self._next = 0
        self._ready: dict[int, T | None] = {}

    def take(self) -> int:
        """The next sequence number (call it in the order the items are taken)."""
        with self._lock:
            self._taken += 1
            return self._taken - 1

    def done(self, sequence: int, item: T | None) -> None:
        with self._lock:
            self._ready[sequence] = item
            while self._next in self._ready:
                ready = self._ready.pop(self._next)
                self._next += 1
                try:
                    self.release(ready)
                except Exception:  # one frame's tracking must not stop the others
                    logger.exception("releasing frame %d in order failed", self._next - 1)

    @property
    def waiting(self) -> int:
        """Items done but held back by an earlier one."""
        with self._lock:
            return len(self._ready)


class EventSink(Protocol):
    """Where events go (see :class:`service.classification.Classification`)."""

    def new_event_id(self) -> int: ...

    def store_event(self, event: EventRow) -> Future[list[int]]: ...


class EventMetrics(Protocol):
    def count(self, what: Count, n: int = 1) -> None: ...


@dataclass
class _Event:
    """One cell while it is being followed."""

    track: int
    first_frame: int
    first_at: float
    first_monotonic: float
    first_px: tuple[float, float]
    id: int | None = None  # given with the first classified view
    last_frame: int = 0
    last_at: float = 0.0
    last_monotonic: float = 0.0
    last_px: tuple[float, float] = (0.0, 0.0)
    sightings: int = 0
    pending: int = 0  # views submitted, not yet stored (or lost)
    ended: bool = False
    classes: tuple[str, ...] = ()
    views: list[np.ndarray] = field(default_factory=list)
    qc: list[dict[str, Any]] = field(default_factory=list)
    model: tuple[str, str] = ("", "")
    last_view_monotonic: float | None = None
    reference_id: str | None = None  # the last stored view's
    pipeline_id: str | None = None  # the last stored view's

    def seen(self, frame: GrabbedFrame, position: tuple[float, float]) -> None:
        self.sightings += 1
        self.last_frame, self.last_at = frame.index, frame.grabbed_at
        self.last_monotonic, self.last_px = frame.monotonic, position


@dataclass(frozen=True)
class TrackedFrame:
    """A frame after tracking (``on_tracked`` observers): the event id of each
    kept cell (in :attr:`ProcessedFrames.cells` order) and the recent path of every
    cell in view (event id, or None for one not yet classified -> camera (y, x))."""

    frame: GrabbedFrame
    processed: ProcessedFrames
    event_ids: list[int]
    paths: list[tuple[int | None, list[tuple[float, float]]]]


#: Positions of a path kept for the live view.
PATH_POINTS = 32


class EventBook:
    """Tracks each frame's cells into events and stores every event once.

    Parameters
    ----------
    sink : gives event ids and stores event rows
    metrics : counts edge-only tracks and lost events
    tracker : links detections across frames; None: every detection is an event
        of its own (tracking off)
    pixel_size_um : camera pixel in the sample plane (for the speed)
    hold, release : called once for every event from its end until its row is
        committed (or lost), so the camera loop's stop waits for it
    """

    def __init__(
        self,
        sink: EventSink,
        metrics: EventMetrics,
        tracker: Tracker | None,
        pixel_size_um: float,
        hold: Callable[[], None] = lambda: None,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.sink = sink
        self.metrics = metrics
        self.tracker = tracker
        self.pixel_size_um = pixel_size_um
        self.hold = hold
        self.release = release
        self._lock = threading.Lock()
        self._open: dict[int, _Event] = {}  # by track id
        self._by_id: dict[int, _Event] = {}  # by event id, until stored
        self._paths: dict[int, list[tuple[float, float]]] = {}  # by track id
        self._last_frame: int | None = None
        self._untracked = 0

    @classmethod
    def create(
        cls,
        sink: EventSink,
        metrics: EventMetrics,
        tracking: TrackerConfig | None,
        hold: Callable[[], None] = lambda: None,
        release: Callable[[], None] = lambda: None,
    ) -> EventBook:
        tracker = None if tracking is None else Tracker(tracking)
        pixel = tracking.pixel_size_um if tracking is not None else 0.0
        return cls(sink, metrics, tracker, pixel, hold, release)

    # -- in frame order (the sequencer) ---------------------------------------------

    def track(self, frame: GrabbedFrame, processed: ProcessedFrames) -> TrackedFrame:
        """Link ``processed``'s cells (and clipped objects) of ``frame``: each kept
        cell's event id, a view of it now to be classified and stored."""
        cells = processed.cells
        positions = [c.position_px for c in cells]
        positions += [p for s in processed.segmentations for p in s.clipped_px]
        to_store: list[_Event] = []
        with self._lock:
            if self._last_frame is not None and frame.index <= self._last_frame:
                # The camera's counter started again (reopened, a replay looped).
                logger.info(
                    "frame counter went back (%d -> %d): every open event ends",
                    self._last_frame,
                    frame.index,
                )
                to_store += self._end_all()
                self._restart_tracker()
            self._last_frame = frame.index
            if self.tracker is None:
                tracks, ended = self._untracked_ids(len(positions)), []
            else:
                update = self.tracker.update(frame.index, positions)
                tracks, ended = update.ids, [t.id for t in update.ended]
            for track in ended:
                to_store += self._end(track)
            ids: list[int] = []
            for index, (track, position) in enumerate(zip(tracks, positions, strict=True)):
                event = self._open.get(track)
                if event is None:
                    event = self._open[track] = _Event(
                        track, frame.index, frame.grabbed_at, frame.monotonic, position
                    )
                event.seen(frame, position)
                path = self._paths.setdefault(track, [])
                path.append(position)
                del path[:-PATH_POINTS]
                if index < len(cells):
                    if event.id is None:
                        event.id = self.sink.new_event_id()
                        self._by_id[event.id] = event
                    event.pending += 1
                    ids.append(event.id)
            paths = [(self._open[t].id, list(self._paths[t])) for t in tracks]
            if self.tracker is None:  # each detection an event of its own: it ends now
                for track in tracks:
                    to_store += self._end(track)
        self._store(to_store)
        return TrackedFrame(frame, processed, ids, paths)

    def close(self) -> None:
        """End every open event (acquisition stops, a replay ends, shutdown)."""
        with self._lock:
            to_store = self._end_all()
            self._last_frame = None
            self._restart_tracker()
        self._store(to_store)

    # -- from the store's thread ----------------------------------------------------

    def stored(
        self,
        ids: list[int],
        prediction: Prediction,
        qc: list[dict[str, Any]],
        started: float,
        reference_id: str | None = None,
        pipeline_id: str | None = None,
    ) -> None:
        """The views of ``ids`` (one per row of ``prediction``, reconstructed against
        ``reference_id`` in ``pipeline_id``) are committed. An event records its last
        view's reference and pipeline, as it does its model: a refresh or a reload
        while a cell crosses the field changes them between its views."""
        classes = tuple(prediction.manifest.classes)
        model = (prediction.manifest.name, prediction.manifest.version)
        to_store = []
        with self._lock:
            for i, event_id in enumerate(ids):
                event = self._by_id.get(event_id)
                if event is None:
                    continue
                event.pending -= 1
                if classes != event.classes:  # the first view, or a model of other classes
                    event.classes, event.views, event.qc = classes, [], []
                event.views.append(np.asarray(prediction.probabilities[i], dtype=np.float64))
                event.qc.append(qc[i])
                event.model = model
                event.last_view_monotonic = started
                event.reference_id, event.pipeline_id = reference_id, pipeline_id
                if event.ended and event.pending == 0:
                    to_store.append(event)
        self._store(to_store)

    def lost(self, ids: list[int]) -> None:
        """The views of ``ids`` were not stored (classification or storage failed)."""
        to_store = []
        with self._lock:
            for event_id in ids:
                event = self._by_id.get(event_id)
                if event is None:
                    continue
                event.pending -= 1
                if event.ended and event.pending == 0:
                    to_store.append(event)
        self._store(to_store)

    # -- internals (under the lock) -------------------------------------------------

    def _restart_tracker(self) -> None:
        """A fresh tracker (its tracks have ended), for frames counted from anew."""
        if self.tracker is not None:
            self.tracker = Tracker(self.tracker.config)

    def _untracked_ids(self, n: int) -> list[int]:
        self._untracked += n
        return list(range(-self._untracked, -self._untracked + n))

    def _end(self, track: int) -> list[_Event]:
        """End ``track``'s event; the events now ready to be stored."""
        self._paths.pop(track, None)
        event = self._open.pop(track, None)
        if event is None:
            return []
        event.ended = True
        if event.id is None:
            self.metrics.count(Count.EDGE_ONLY_TRACKS)
            return []
        self.hold()
        return [event] if event.pending == 0 else []

    def _end_all(self) -> list[_Event]:
        return [e for track in list(self._open) for e in self._end(track)]

    # -- storing (outside the lock) ---------------------------------------------------

    def _store(self, events: list[_Event]) -> None:
        for event in events:
            assert event.id is not None
            with self._lock:
                self._by_id.pop(event.id, None)
            if not event.views:
                self._lost(event.id, "none of its views was stored")
                continue
            try:
                future = self.sink.store_event(self._row(event))
            except Exception as exc:
                self._lost(event.id, f"{type(exc).__name__}: {exc}")
                continue
            future.add_done_callback(functools.partial(self._committed, event_id=event.id))

    def _committed(self, future: Future[list[int]], event_id: int) -> None:
        try:
            future.result()
        except Exception as exc:
            self._lost(event_id, f"storing it failed: {type(exc).__name__}: {exc}")
            return
        self.release()

    def _lost(self, event_id: int, why: str) -> None:
        logger.warning("event %d lost: %s", event_id, why)
        self.metrics.count(Count.EVENTS_LOST)
        self.release()

    def _row(self, event: _Event) -> EventRow:
        combined = combine_views(np.stack(event.views))
        label = event.classes[int(np.argmax(combined))]
        dt = event.last_monotonic - event.first_monotonic
        distance_px = float(np.hypot(*np.subtract(event.last_px, event.first_px)))
        speed = distance_px * self.pixel_size_um / dt if dt > 0 and self.pixel_size_um else None
        return EventRow(
            id=event.id or 0,
            created=event.first_at,
            ended=event.last_at,
            first_frame=event.first_frame,
            last_frame=event.last_frame,
            views=len(event.views),
            sightings=event.sightings,
            label=label,
            probabilities={c: float(p) for c, p in zip(event.classes, combined, strict=True)},
            model_name=event.model[0],
            model_version=event.model[1],
            speed_um_s=speed,
            qc=_mean_qc(event.qc),
            started=event.last_view_monotonic,
            reference_id=event.reference_id,
            pipeline_id=event.pipeline_id,
        )


def _mean_qc(views: list[dict[str, Any]]) -> dict[str, float]:
    """The views' QC averaged (flags as the fraction of views that had them)."""
    keys = [k for k in views[0] if all(k in v for v in views)] if views else []
    return {k: float(np.mean([float(v[k]) for v in views])) for k in keys}
