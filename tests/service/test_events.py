"""Cells in flow through the camera loop: each cell tracked across the frames it
crosses, stored once as an event classified from all its views, on a recorded
flow with ground truth (``topgan simulate holograms --flow``) replayed as a camera."""

from __future__ import annotations

import csv
import json
import math
import signal
import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from acquisition.commands.simulate import write_holograms
from acquisition.simulator.flow import FlowConfig
from acquisition.simulator.scene import SceneConfig
from models.views import combine_views
from service.loop.events import FrameSequencer
from service.loop.states import Count
from service.services import Services
from service.settings import Settings
from tests.service.conftest import Server, replay_settings, start_server, wait_until_replayed

REPO = Path(__file__).resolve().parents[2]
FRAMES = 90
PIXEL_UM = SceneConfig().optics.pixel_size_um
#: Flags some of the bundled model's views and cells of this flow, not all.
MIN_CONFIDENCE = 0.9


@pytest.fixture(scope="module")
def flow_folder(tmp_path_factory) -> Path:
    """90 frames of SW480/SW620 cells flowing along +y at 2000 um/s and 90 frames/s
    (5 to 22 views a cell), as ``topgan simulate holograms --flow`` writes them."""
    out = tmp_path_factory.mktemp("flow")
    flow = FlowConfig(flow_speed_um_s=2000.0, frame_rate_hz=90.0, cells_per_second=80.0)
    write_holograms(out, ["sw480", "sw620"], FRAMES, 4, SceneConfig(), flow)
    return out


def truth(folder: Path) -> list[dict[str, str]]:
    with (folder / "cells.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["kind"] == "cell"]


def true_cells(folder: Path) -> set[int]:
    """The cells a user should count: seen whole (not clipped by the field's border)
    in at least one frame."""
    return {int(r["track"]) for r in truth(folder) if r["clipped"] == "False"}


def true_track_of(folder: Path, rows: list[dict]) -> list[int]:
    """The true cell of each stored view (the nearest true object of its frame;
    the replay counts frames from 1, the simulator from 0)."""
    by_frame: dict[int, list[dict[str, str]]] = defaultdict(list)
    for r in truth(folder):
        by_frame[int(r["frame"]) + 1].append(r)
    found = []
    for row in rows:
        objects = by_frame[row["frame_id"]]
        nearest = min(
            objects,
            key=lambda o: math.dist(
                (float(o["y_px"]), float(o["x_px"])), (row["y_px"], row["x_px"])
            ),
        )
        distance = math.dist(
            (float(nearest["y_px"]), float(nearest["x_px"])), (row["y_px"], row["x_px"])
        )
        assert distance < 3 / PIXEL_UM, f"a stored view is a real cell: {row}"
        found.append(int(nearest["track"]))
    return found


def settings_for(folder: Path, tmp_path: Path, **extra: Any) -> Settings:
    """Two worker threads (frames finish out of order) and a queue that holds the
    whole replay (as fast as it goes, nothing drops)."""
    settings: Settings = replay_settings(
        folder,
        tmp_path,
        pipeline_workers=2,
        frame_queue=2 * FRAMES,
        inference_threads=1,
        **extra,
    )
    return settings


# -- the order of frames ------------------------------------------------------------


def test_frames_are_released_in_the_order_they_were_taken():
    released: list[str | None] = []
    sequencer: FrameSequencer[str] = FrameSequencer(released.append)
    numbers = [sequencer.take() for _ in range(5)]
    assert numbers == [0, 1, 2, 3, 4]
    sequencer.done(2, "c")
    sequencer.done(1, None)  # a lost frame keeps its place
    assert released == []
    assert sequencer.waiting == 2
    sequencer.done(0, "a")
    assert released == ["a", None, "c"]
    sequencer.done(4, "e")
    sequencer.done(3, "d")
    assert released == ["a", None, "c", "d", "e"]
    assert sequencer.waiting == 0


def test_a_failing_release_does_not_stop_the_order():
    released: list[int | None] = []

    def release(item: int | None) -> None:
        if item == 1:
            raise RuntimeError("boom")
        released.append(item)

    sequencer: FrameSequencer[int] = FrameSequencer(release)
    for _n in range(3):
        sequencer.take()
    sequencer.done(1, 1)
    sequencer.done(2, 2)
    sequencer.done(0, 0)
    assert released == [0, 2]


# -- the camera loop on a recorded flow ---------------------------------------------


def test_each_cell_is_one_event_classified_from_all_its_views(tmp_path, flow_folder):
    settings = settings_for(flow_folder, tmp_path, min_confidence=MIN_CONFIDENCE)
    services = Services.start(settings)
    try:
        wait_until_replayed(services)
        store = services.classification.store
        rows = store.list(limit=1000)
        events = store.list_events(limit=1000)
        summary = store.summary(since=0)
        counts = services.metrics.loop_counts()
        registry = services.metrics.registry
        uncertain_metric = {
            kind: registry.get_sample_value("topgan_uncertain_total", {"kind": kind})
            for kind in ("view", "event")
        }
    finally:
        services.close()
    assert len(rows) < 1000
    assert len(events) < 1000
    cells = true_cells(flow_folder)
    assert len(cells) > 15

    # Every cell counted once: as many events as true cells, each event one cell.
    assert len(events) == len(cells)
    assert summary["events"]["total"] == len(cells)
    assert counts[Count.EVENTS_STORED] == len(cells)
    assert counts[Count.EVENTS_LOST] == 0
    members: dict[int, list[int]] = defaultdict(list)
    for row, track in zip(rows, true_track_of(flow_folder, rows), strict=True):
        members[row["event_id"]].append(track)
    assert set(members) == {e["id"] for e in events}
    assert all(len(set(tracks)) == 1 for tracks in members.values()), "purity"
    owners = Counter(tracks[0] for tracks in members.values())
    assert set(owners) == cells, "completeness"
    assert set(owners.values()) == {1}, "one event per cell"
    assert summary["cells"] == len(rows) > 3 * len(events), "views are still all stored"

    # Each event is its views combined (mean of log-probabilities).
    views_of: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        views_of[row["event_id"]].append(row)
    classes = list(rows[0]["probabilities"])
    for event in events:
        views = views_of[event["id"]]
        assert event["views"] == len(views)
        assert event["sightings"] >= event["views"]
        assert event["first_frame"] <= min(v["frame_id"] for v in views)
        assert event["last_frame"] >= max(v["frame_id"] for v in views)
        expected = combine_views(
            np.array([[v["probabilities"][c] for c in classes] for v in views])
        )
        np.testing.assert_allclose([event["probabilities"][c] for c in classes], expected)
        assert event["label"] == classes[int(np.argmax(expected))]
        assert event["qc"]["area_um2"] == pytest.approx(
            np.mean([v["qc"]["area_um2"] for v in views])
        )
    assert summary["events"]["counts"] == dict(Counter(e["label"] for e in events))

    # Uncertain: views by their own probabilities, events by the combined ones.
    for kind, stored in (("view", rows), ("event", events)):
        flags = [max(r["probabilities"].values()) < MIN_CONFIDENCE for r in stored]
        assert [r["uncertain"] for r in stored] == flags, kind
        assert 0 < sum(flags) < len(flags), kind
        assert uncertain_metric[kind] == sum(flags), kind
    assert summary["uncertain"] == sum(r["uncertain"] for r in rows)
    assert summary["events"]["uncertain"] == sum(e["uncertain"] for e in events)

    # Speeds: from the grab times of a replay as fast as it can go; their spread
    # follows the parabolic profile (the fastest lanes several times the slowest).
    speeds = [e["speed_um_s"] for e in events if e["speed_um_s"]]
    assert len(speeds) > 0.8 * len(events)
    assert max(speeds) > 2 * min(speeds)


def test_tracking_off_makes_every_detection_an_event(tmp_path, flow_folder):
    services = Services.start(settings_for(flow_folder, tmp_path, tracking=False))
    try:
        wait_until_replayed(services)
        store = services.classification.store
        rows = store.list(limit=1000)
        events = store.list_events(limit=1000)
    finally:
        services.close()
    assert len(events) == len(rows) > 0
    assert len({r["event_id"] for r in rows}) == len(rows)
    assert {e["views"] for e in events} == {1}


# -- topgan serve on a recorded flow ------------------------------------------------


def serve_flow(tmp_path: Path, folder: Path, rate_hz: float) -> Server:
    return start_server(
        tmp_path,
        REPO / "models",
        model="sw480-sw620",
        TOPGAN_CAMERA=f"replay:{folder}",
        TOPGAN_REPLAY_LOOP="false",
        TOPGAN_FRAME_RATE_HZ=str(rate_hz),
        TOPGAN_WORKER_PROCESSES="false",
        TOPGAN_FRAME_QUEUE=str(2 * FRAMES),
        TOPGAN_ARRAY_BACKEND="numpy",
        TOPGAN_FLOW_RATE_UL_MIN="0.5",
    )


def stored(db: Path) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """(result id, event id) of every stored camera view, and each stored event's views."""
    with sqlite3.connect(db) as conn:
        views = conn.execute(
            "SELECT id, event_id FROM results WHERE source = 'camera' ORDER BY id"
        ).fetchall()
        events = dict(conn.execute("SELECT id, views FROM events").fetchall())
    return views, events


def test_serve_counts_a_replayed_flow_once_per_cell(tmp_path, flow_folder):
    srv = serve_flow(tmp_path, flow_folder, rate_hz=0)
    try:
        deadline = time.monotonic() + 300
        while True:
            status = httpx.get(f"{srv.url}/acquisition", timeout=5).json()
            if status["state"] == "idle" and "finished" in (status["detail"] or ""):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        summary = httpx.get(f"{srv.url}/results/summary", timeout=5).json()
        page = httpx.get(f"{srv.url}/events", params={"limit": 1000}, timeout=5).json()
        metrics = httpx.get(f"{srv.url}/metrics", timeout=5).text
    finally:
        srv.stop()
    cells = true_cells(flow_folder)
    assert summary["events"]["total"] == len(cells)
    assert summary["events"]["per_ul"] == pytest.approx(
        summary["events"]["per_second"] / (0.5 / 60)
    )
    assert len(page["events"]) == len(cells)
    assert page["next_after_id"] == page["events"][-1]["id"]
    total = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("topgan_events_total{")
    )
    assert total == len(cells)
    assert f"topgan_event_views_count {float(len(cells))}" in metrics


@pytest.mark.parametrize("how", ["stop", "sigterm"])
def test_stopping_mid_flow_loses_no_event_whose_views_were_stored(tmp_path, flow_folder, how):
    srv = serve_flow(tmp_path, flow_folder, rate_hz=30)
    try:
        # Mid-run by the camera's clock: a third of the frames grabbed (the rest never
        # will be), cells in view and events open, however far behind the workers are
        # on a busy machine (the stop processes every queued frame first).
        deadline = time.monotonic() + 120
        while True:
            counts = httpx.get(f"{srv.url}/acquisition", timeout=10).json()["counts"]
            if counts.get("frames_grabbed", 0) >= FRAMES // 3:
                break
            assert time.monotonic() < deadline, srv.log.read_text()
            time.sleep(0.05)
        if how == "stop":
            answer = httpx.post(f"{srv.url}/acquisition/stop", timeout=60)
            assert answer.status_code == 200, answer.text
        else:
            srv.process.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then dies of the signal it caught
            assert srv.process.wait(timeout=60) in (0, -signal.SIGTERM)
            assert "Application shutdown complete" in srv.log.read_text()
        views, events = stored(srv.db)
    finally:
        srv.stop()
    assert views, "views were stored"
    assert all(event_id is not None for _, event_id in views)
    per_event = Counter(event_id for _, event_id in views)
    assert set(per_event) == set(events), "every event whose views were stored is stored"
    assert per_event == Counter(events), "with all its stored views"
    assert len(events) < len(true_cells(flow_folder)), "it stopped mid-run"


def test_results_of_an_older_database_gain_event_ids(tmp_path):
    """A results table created before events existed is migrated on start: its rows
    stay, with no event."""
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, created FLOAT NOT NULL,"
            " source VARCHAR(16) NOT NULL, frame_id INTEGER, y_px FLOAT, x_px FLOAT,"
            " label VARCHAR(64) NOT NULL, probabilities TEXT NOT NULL,"
            " model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL,"
            " qc TEXT NOT NULL, latency_s FLOAT)"
        )
        conn.execute(
            "INSERT INTO results (created, source, frame_id, y_px, x_px, label, probabilities,"
            " model_name, model_version, qc, latency_s) VALUES"
            " (1.0, 'camera', 3, 10.0, 20.0, 'sw480', ?, 'm', '1', '{}', 0.01)",
            (json.dumps({"sw480": 0.9, "sw620": 0.1}),),
        )
    from service.store import ResultStore

    store = ResultStore(f"sqlite:///{db}")
    try:
        [row] = store.list()
        assert row["event_id"] is None
        assert row["label"] == "sw480"
        assert store.new_event_id() == 1
        assert store.summary(since=0)["events"]["total"] == 0
    finally:
        store.close()
    with sqlite3.connect(db) as conn:
        indexes = [r[1] for r in conn.execute("PRAGMA index_list('results')")]
    assert "ix_results_event_id" in indexes


def test_event_ids_continue_after_a_restart(tmp_path):
    from service.store import EventRow, ResultRow, ResultStore

    url = f"sqlite:///{tmp_path}/r.sqlite"
    store = ResultStore(url)
    first = store.new_event_id()
    row = ResultRow("camera", "a", {"a": 1.0}, "m", "1", event_id=first)
    store.add([row]).result(timeout=10)
    store.close()
    store = ResultStore(url)
    try:
        assert store.new_event_id() == first + 1  # the view's id is taken, unstored event too
        event = EventRow(
            id=first + 1,
            created=1.0,
            ended=2.0,
            first_frame=1,
            last_frame=2,
            views=1,
            sightings=2,
            label="a",
            probabilities={"a": 1.0},
            model_name="m",
            model_version="1",
        )
        assert store.add_event(event).result(timeout=10) == [first + 1]
    finally:
        store.close()
    store = ResultStore(url)
    try:
        assert store.new_event_id() == first + 2
    finally:
        store.close()


def test_events_route_pages_and_validates(tmp_path):
    from service.app import create_app
    from service.store import EventRow
    from tests.service.conftest import in_process

    settings = Settings(
        camera="none", database_url=f"sqlite:///{tmp_path}/r.sqlite", execution_provider="cpu"
    )
    app = create_app(settings)
    services = Services.start(settings)
    app.state.services = services
    try:
        store = services.classification.store
        for _ in range(3):
            event_id = store.new_event_id()
            store.add_event(
                EventRow(
                    id=event_id,
                    created=time.time(),
                    ended=time.time(),
                    first_frame=1,
                    last_frame=4,
                    views=3,
                    sightings=4,
                    label="a",
                    probabilities={"a": 0.8, "b": 0.2},
                    model_name="m",
                    model_version="1",
                    speed_um_s=1500.0,
                    qc={"area_um2": 80.0},
                )
            ).result(timeout=10)
        with in_process(app) as client:
            first = client.get("/events", params={"limit": 2}).json()
            rest = client.get("/events", params={"after_id": first["next_after_id"]}).json()
            bad = client.get("/events", params={"limit": 0})
            summary = client.get("/results/summary").json()
    finally:
        services.close()
    assert [e["id"] for e in first["events"]] == [1, 2]
    assert [e["id"] for e in rest["events"]] == [3]
    assert first["events"][0]["speed_um_s"] == 1500.0
    assert bad.status_code == 422
    assert "detail" in bad.json()
    assert summary["events"]["total"] == 3
    assert summary["events"]["counts"] == {"a": 3}
    assert summary["events"]["per_ul"] is None
