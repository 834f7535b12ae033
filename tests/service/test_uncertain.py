"""Cells below the confidence threshold (TOPGAN_MIN_CONFIDENCE): flagged uncertain in
the answers, the stored rows, the summary and the metrics, still stored with their
label; and databases from before the flag, migrated on start."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time

import httpx
import numpy as np
import pytest

from service.store import EventRow, ResultRow, ResultStore
from tests.service.conftest import start_server
from tests.service.test_api import NPY, crops, direct_probabilities, npy


def _metric(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[-1])


def test_classify_flags_cells_below_min_confidence_and_counts_them(tmp_path, models_root):
    batch = crops(12, seed=5)
    confidence = direct_probabilities(models_root / "m1", batch).max(1)
    # A threshold between the crops' confidences: some are flagged, some are not.
    threshold = float(np.median(confidence))
    flagged = confidence < threshold
    assert 0 < flagged.sum() < len(batch)
    srv = start_server(tmp_path, models_root, TOPGAN_MIN_CONFIDENCE=repr(threshold))
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            answer = c.post("/classify", content=npy(batch), headers=NPY)
            assert answer.status_code == 200, answer.text
            cells = answer.json()["cells"]
            assert [cell["uncertain"] for cell in cells] == flagged.tolist()
            assert all(cell["label"] in ("sw480", "sw620") for cell in cells), "labels kept"
            ids = [cell["id"] for cell in cells]
            stored = c.get("/results").json()["results"]
            assert [r["id"] for r in stored] == ids, "uncertain cells are stored too"
            assert [r["uncertain"] for r in stored] == flagged.tolist()
            only = c.get("/results", params={"uncertain": "true"}).json()["results"]
            assert [r["id"] for r in only] == [i for i, f in zip(ids, flagged, strict=True) if f]
            sure = c.get("/results", params={"uncertain": "false"}).json()["results"]
            assert len(sure) == len(batch) - flagged.sum()
            summary = c.get("/results/summary").json()
            metrics = c.get("/metrics").text
    finally:
        srv.stop()
    assert summary["min_confidence"] == pytest.approx(threshold)
    assert summary["uncertain"] == flagged.sum()
    assert summary["cells"] == len(batch), "counted in their classes too"
    assert summary["total_uncertain"] == flagged.sum()
    assert summary["by_source"]["api"]["uncertain"] == flagged.sum()
    assert summary["by_model"]["1"]["uncertain"] == flagged.sum()
    assert summary["events"]["uncertain"] == 0
    assert _metric(metrics, 'topgan_uncertain_total{kind="view"}') == flagged.sum()
    assert _metric(metrics, 'topgan_uncertain_total{kind="event"}') == 0


def _event(event_id: int, probabilities: dict[str, float]) -> EventRow:
    return EventRow(
        id=event_id,
        created=time.time(),
        ended=time.time(),
        first_frame=1,
        last_frame=2,
        views=2,
        sightings=2,
        label=max(probabilities, key=probabilities.__getitem__),
        probabilities=probabilities,
        model_name="m",
        model_version="1",
    )


def test_events_are_flagged_by_their_combined_probabilities(tmp_path):
    from service.services import Services
    from service.settings import Settings

    settings = Settings(
        camera="none",
        database_url=f"sqlite:///{tmp_path}/r.sqlite",
        execution_provider="cpu",
        min_confidence=0.8,
    )
    services = Services.start(settings)
    try:
        classification = services.classification
        for p in (0.95, 0.7, 0.6, 0.85):
            event = _event(classification.new_event_id(), {"a": p, "b": 1 - p})
            classification.store_event(event).result(timeout=10)
        events = classification.store.list_events()
        summary = classification.store.summary()
        metrics = services.metrics
    finally:
        services.close()
    assert [e["uncertain"] for e in events] == [False, True, True, False]
    assert summary["events"]["uncertain"] == 2
    assert summary["events"]["total"] == 4
    uncertain = metrics.registry.get_sample_value("topgan_uncertain_total", {"kind": "event"})
    assert uncertain == 2


#: The schema of before the flag: results with event_id, events, tallies.
OLD_SCHEMA = (
    "CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, created FLOAT NOT NULL,"
    " source VARCHAR(16) NOT NULL, frame_id INTEGER, y_px FLOAT, x_px FLOAT,"
    " label VARCHAR(64) NOT NULL, probabilities TEXT NOT NULL,"
    " model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL,"
    " qc TEXT NOT NULL, latency_s FLOAT, event_id INTEGER)",
    "CREATE TABLE events (id INTEGER PRIMARY KEY, created FLOAT NOT NULL, ended FLOAT NOT NULL,"
    " source VARCHAR(16) NOT NULL, first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL,"
    " views INTEGER NOT NULL, sightings INTEGER NOT NULL, label VARCHAR(64) NOT NULL,"
    " probabilities TEXT NOT NULL, speed_um_s FLOAT, qc TEXT NOT NULL,"
    " model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL, latency_s FLOAT)",
    "CREATE TABLE tallies (kind VARCHAR(16) NOT NULL, source VARCHAR(16) NOT NULL,"
    " label VARCHAR(64) NOT NULL, model_version VARCHAR(64) NOT NULL, n BIGINT NOT NULL,"
    " PRIMARY KEY (kind, source, label, model_version))",
)


def test_a_database_from_before_the_flag_is_migrated(tmp_path):
    db = tmp_path / "old.sqlite"
    probabilities = json.dumps({"sw480": 0.55, "sw620": 0.45})
    with sqlite3.connect(db) as conn:
        for statement in OLD_SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO results (created, source, label, probabilities, model_name,"
            " model_version, qc, event_id) VALUES (1.0, 'camera', 'sw480', ?, 'm', '1', '{}', 7)",
            (probabilities,),
        )
        conn.execute(
            "INSERT INTO events VALUES (7, 1.0, 1.1, 'camera', 1, 2, 1, 2, 'sw480', ?, NULL,"
            " '{}', 'm', '1', 0.01)",
            (probabilities,),
        )
        conn.execute("INSERT INTO tallies VALUES ('results', 'camera', 'sw480', '1', 1)")
        conn.execute("INSERT INTO tallies VALUES ('events', 'camera', 'sw480', '1', 1)")
    store = ResultStore(f"sqlite:///{db}")
    try:
        [old_view] = store.list()
        [old_event] = store.list_events()
        assert old_view["uncertain"] is None, "never judged: not made up"
        assert old_event["uncertain"] is None
        assert old_view["label"] == "sw480"
        new = ResultRow("api", "sw620", {"sw480": 0.4, "sw620": 0.6}, "m", "1", uncertain=True)
        store.add([new]).result(timeout=10)
        event = dataclasses.replace(_event(8, {"sw480": 0.6, "sw620": 0.4}), uncertain=True)
        store.add_event(event).result(timeout=10)
        summary = store.summary()
        counted = store.summary(since=0)  # the rows counted, the old ones too
        assert store.list(uncertain=True)[0]["uncertain"] is True
        assert [r["id"] for r in store.list(uncertain=False)] == [], "NULL is neither"
    finally:
        store.close()
    assert summary["total_stored"] == 2
    assert summary["total_uncertain"] == 1, "the old row is not counted uncertain"
    assert (summary["uncertain"], summary["events"]["uncertain"]) == (1, 1)
    assert (counted["uncertain"], counted["events"]["uncertain"]) == (1, 1)
    assert counted["cells"] == 2
    with sqlite3.connect(db) as conn:
        tallies = conn.execute(
            "SELECT kind, source, n, uncertain FROM tallies ORDER BY kind, source"
        ).fetchall()
        columns = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in
                   ("results", "events")}  # fmt: skip
    assert tallies == [
        ("events", "camera", 2, 1),
        ("results", "api", 1, 1),
        ("results", "camera", 1, 0),
    ]
    assert "uncertain" in columns["results"]
    assert "uncertain" in columns["events"]
