"""The event book on its own: cells linked across frames into events, each stored
once in the real results store when its cell has left, from the views that were
stored (the frames are built by hand: a cell at a known place in each frame)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from acquisition.cameras import GrabbedFrame
from acquisition.frames import CropGeometry, ProcessedFrames
from acquisition.reconstruction import OPDMaps
from acquisition.segmentation import Cell, FrameSegmentation
from acquisition.tracking import TrackerConfig
from models.runtime import Prediction
from models.views import combine_views
from service.loop.events import EventBook
from service.loop.states import Count
from service.services import Services
from service.settings import DEFAULT_MODEL, Settings

PIXEL_UM = 0.12
STEP_PX = 100.0  # 12 um a frame along +y


@pytest.fixture
def services(tmp_path):
    settings = Settings(
        camera="none",
        database_url=f"sqlite:///{tmp_path}/r.sqlite",
        model_dir=DEFAULT_MODEL,
        execution_provider="cpu",
    )
    state = Services.start(settings)
    yield state
    state.close()


class Held:
    """Counts what the book holds until stored (the runner's stop waits for it)."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def hold(self) -> None:
        with self.lock:
            self.n += 1

    def release(self) -> None:
        with self.lock:
            self.n -= 1


def processed(
    cells: list[tuple[float, float]], clipped: Sequence[tuple[float, float]] = ()
) -> ProcessedFrames:
    """A frame's segmentation with kept cells and clipped objects at these (y, x)."""
    maps = OPDMaps(
        np.zeros((1, 8, 8), np.float32),
        np.ones((1, 8, 8), np.float32),
        (PIXEL_UM, PIXEL_UM),
        (1.0, 1.0),
        (0.0, 0.0),
        (0.2, 0.25),
        1,
        632.8,
    )
    kept = [
        Cell(np.zeros((4, 4), np.float32), 0, p, i + 1, {"area_um2": 50.0 + i, "clipped": False})
        for i, p in enumerate(cells)
    ]
    segmentation = FrameSegmentation(np.zeros((8, 8), int), 10.0, 2.0, kept, {}, list(clipped))
    return ProcessedFrames(maps, [segmentation], CropGeometry(4, 0.25), 0.0, 0.0)


def frame(index: int, t0: float) -> GrabbedFrame:
    return GrabbedFrame(np.zeros((8, 8), np.uint8), index, 8, t0 + index / 90, t0 + index / 90)


def store_views(services, book, grabbed, work, probabilities):
    """Classify ``work``'s cells with these probabilities and store them, as the
    camera loop does; the book hears of each committed view."""
    tracked = book.track(grabbed, work)
    cells = work.cells
    if not cells:
        return tracked
    runtime = services.classification.runtime
    prediction = Prediction(np.asarray(probabilities, np.float32), runtime.manifest)
    _, stored = services.classification.store_cells(prediction, grabbed, cells, tracked.event_ids)
    stored.result(timeout=10)
    book.stored(tracked.event_ids, prediction, [dict(c.qc) for c in cells], grabbed.monotonic)
    return tracked


def wait_stored(services, n: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while len(events := services.classification.store.list_events()) < n:
        assert time.monotonic() < deadline, events
        time.sleep(0.01)
    return events


def test_a_cell_crossing_is_one_event_of_its_views_combined(services):
    held = Held()
    book = EventBook.create(
        services.classification,
        services.metrics,
        TrackerConfig(pixel_size_um=PIXEL_UM, flow_direction="+y"),
        held.hold,
        held.release,
    )
    t0 = time.monotonic()
    views = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]]
    ids = []
    # enters clipped, crosses in 4 frames, leaves clipped
    book.track(frame(1, t0), processed([], clipped=[(20.0, 300.0)]))
    for i, p in enumerate(views, start=2):
        tracked = store_views(
            services, book, frame(i, t0), processed([(20 + STEP_PX * (i - 1), 300.0)]), [p]
        )
        ids += tracked.event_ids
        assert tracked.paths[0][0] == tracked.event_ids[0]
        assert len(tracked.paths[0][1]) == i, "its path, the clipped sighting included"
    book.track(frame(6, t0), processed([], clipped=[(20 + STEP_PX * 5, 300.0)]))
    assert len(set(ids)) == 1, "one cell, one event id"
    assert held.n == 0, "nothing ended yet"
    for i in range(7, 12):  # not seen for more than 3 frames: it has left
        book.track(frame(i, t0), processed([]))
    [event] = wait_stored(services, 1)
    assert held.n == 0, "held while storing, released once committed"
    classes = services.classification.runtime.manifest.classes
    expected = combine_views(np.array(views))
    assert event["id"] == ids[0]
    assert [event["probabilities"][c] for c in classes] == pytest.approx(expected)
    assert event["label"] == classes[int(np.argmax(expected))]
    assert (event["views"], event["sightings"]) == (4, 6)
    assert (event["first_frame"], event["last_frame"]) == (1, 6)
    assert event["speed_um_s"] == pytest.approx(STEP_PX * 5 * PIXEL_UM / (5 / 90), rel=1e-6)
    assert event["qc"] == {"area_um2": 50.0, "clipped": 0.0}
    assert services.metrics.loop_counts()[Count.EVENTS_STORED] == 1


def test_tracks_only_ever_clipped_are_counted_not_stored(services):
    book = EventBook.create(services.classification, services.metrics, TrackerConfig())
    t0 = time.monotonic()
    for i in range(1, 4):
        book.track(frame(i, t0), processed([], clipped=[(5.0, 10.0 + 50 * i)]))
    book.close()
    assert services.metrics.loop_counts()[Count.EDGE_ONLY_TRACKS] == 1
    assert services.classification.store.list_events() == []


def test_a_counter_that_starts_again_ends_every_event(services):
    """A reopened camera counts from 1 again: the open events end, tracking goes on."""
    book = EventBook.create(services.classification, services.metrics, TrackerConfig())
    t0 = time.monotonic()
    for i in (1, 2):
        store_views(services, book, frame(i, t0), processed([(100.0 * i, 50.0)]), [[0.3, 0.7]])
    after = store_views(services, book, frame(1, t0 + 5), processed([(100.0, 50.0)]), [[0.8, 0.2]])
    [first] = wait_stored(services, 1)
    assert first["views"] == 2
    assert after.event_ids[0] != first["id"]
    book.close()
    events = wait_stored(services, 2)
    assert [e["views"] for e in events] == [2, 1]


def test_an_event_keeps_the_views_that_were_stored(services):
    held = Held()
    book = EventBook.create(
        services.classification, services.metrics, TrackerConfig(), held.hold, held.release
    )
    t0 = time.monotonic()
    store_views(services, book, frame(1, t0), processed([(100.0, 50.0)]), [[0.3, 0.7]])
    lost = book.track(frame(2, t0), processed([(200.0, 50.0)]))
    book.lost(lost.event_ids)  # that view's classification failed
    only = book.track(frame(3, t0), processed([(2000.0, 500.0)]))  # another cell
    book.lost(only.event_ids)
    book.close()
    [event] = wait_stored(services, 1)
    assert event["views"] == 1
    assert event["sightings"] == 2
    counts = services.metrics.loop_counts()
    assert counts[Count.EVENTS_LOST] == 1, "the cell none of whose views was stored"
    assert held.n == 0


def test_tracking_off_makes_each_detection_an_event(services):
    book = EventBook.create(services.classification, services.metrics, None)
    t0 = time.monotonic()
    tracked = store_views(
        services, book, frame(1, t0), processed([(100.0, 50.0), (400.0, 50.0)]), [[0.3, 0.7]] * 2
    )
    store_views(services, book, frame(2, t0), processed([(110.0, 50.0)]), [[0.6, 0.4]])
    events = wait_stored(services, 3)
    assert len(set(tracked.event_ids)) == 2
    assert [e["views"] for e in events] == [1, 1, 1]
    # the live view still sees where each one is, with its id
    assert [(e, p) for e, p in tracked.paths] == [
        (tracked.event_ids[0], [(100.0, 50.0)]),
        (tracked.event_ids[1], [(400.0, 50.0)]),
    ]
