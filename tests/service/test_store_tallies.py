"""The summary without counting tables: figures kept as rows are committed (since
the store started) and tallies kept in the same transaction (all time), equal to
what counting the rows gives."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from typing import Any

import pytest

from service.store import EventRow, ResultRow, ResultStore

KEYS = ("cells", "counts", "sources", "by_source", "by_model", "uncertain")


def fill(store: ResultStore) -> int:
    """15 views (every third uncertain, 5 in all) and 3 events (one uncertain)."""
    rows = [
        ResultRow(source, label, {label: 1.0}, "m", version)
        for source, label, version, n in (
            ("camera", "sw480", "1", 5),
            ("camera", "sw620", "1", 3),
            ("api", "sw620", "1", 3),
            ("camera", "sw480", "2", 4),
        )
        for _ in range(n)
    ]
    for i, row in enumerate(rows):
        row.uncertain = i % 3 == 0
    store.add(rows[:7]).result(timeout=10)
    store.add(rows[7:]).result(timeout=10)
    for label, uncertain in (("sw480", False), ("sw480", True), ("sw620", False)):
        cell = event(store.new_event_id(), label, time.time(), uncertain)
        store.add_event(cell).result(timeout=10)
    return len(rows)


def event(event_id: int, label: str, created: float, uncertain: bool = False) -> EventRow:
    """A cell of one view, seen in one frame, of model version 1."""
    return EventRow(
        id=event_id,
        created=created,
        ended=created,
        first_frame=1,
        last_frame=1,
        views=1,
        sightings=1,
        label=label,
        probabilities={label: 1.0},
        model_name="m",
        model_version="1",
        uncertain=uncertain,
    )


def test_the_kept_figures_equal_the_counted_ones(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path}/r.sqlite")
    try:
        n = fill(store)
        kept = store.summary()
        counted = store.summary(since=store.started - 60)  # counts the rows instead
    finally:
        store.close()
    for key in KEYS:
        assert kept[key] == counted[key], key
    assert kept["events"]["counts"] == counted["events"]["counts"] == {"sw480": 2, "sw620": 1}
    assert kept["total_stored"] == counted["total_stored"] == n
    assert kept["by_model"]["2"]["counts"] == {"sw480": 4}
    assert kept["by_source"]["api"]["cells"] == 3
    assert kept["uncertain"] == kept["total_uncertain"] == 5
    assert kept["by_source"]["api"]["uncertain"] == 1  # rows 8 to 10: row 9
    assert kept["events"]["uncertain"] == counted["events"]["uncertain"] == 1


def test_all_time_tallies_survive_a_restart_and_are_counted_once_for_an_old_database(tmp_path):
    url = f"sqlite:///{tmp_path}/r.sqlite"
    store = ResultStore(url)
    n = fill(store)
    store.close()
    again = ResultStore(url)
    try:
        summary = again.summary()
        assert summary["total_stored"] == n, "the tallies persist"
        assert summary["cells"] == 0, "nothing committed since this start"
        again.add([ResultRow("api", "sw480", {"sw480": 1.0}, "m", "1")]).result(timeout=10)
        assert again.summary()["total_stored"] == n + 1
    finally:
        again.close()
    # A database from before the tallies: they are counted once, at start.
    with sqlite3.connect(tmp_path / "r.sqlite") as conn:
        conn.execute("DROP TABLE tallies")
    old = ResultStore(url)
    try:
        assert old.summary()["total_stored"] == n + 1
        with old.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT kind, label, SUM(n) FROM tallies GROUP BY kind, label ORDER BY 1, 2"
            ).all()
            counted_uncertain = conn.exec_driver_sql(
                "SELECT kind, SUM(uncertain) FROM tallies GROUP BY kind ORDER BY 1"
            ).all()
        assert [tuple(r) for r in rows] == [
            ("events", "sw480", 2),
            ("events", "sw620", 1),
            ("results", "sw480", 10),
            ("results", "sw620", 6),
        ]
        assert [tuple(r) for r in counted_uncertain] == [("events", 1), ("results", 5)]
    finally:
        old.close()


def test_a_failed_commit_counts_nothing(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path}/r.sqlite")
    try:
        fill(store)
        before = store.summary()
        twice = event(store.new_event_id(), "sw480", 1.0)
        store.add_event(twice).result(timeout=10)
        failed = store.add_event(twice)  # the same id again: the commit fails
        with pytest.raises(Exception, match=r"(?i)unique"):
            failed.result(timeout=10)
        after = store.summary()
        assert after["events"]["total"] == before["events"]["total"] + 1
        assert after["total_stored"] == before["total_stored"]
    finally:
        store.close()


def _counted(store: ResultStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            table: int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() or 0)
            for table in ("results", "events")
        }


def test_retention_deletes_old_rows_and_the_tallies_follow(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path}/r.sqlite", retention_s=3600)
    try:
        now = time.time()
        old = [ResultRow("camera", "sw480", {"sw480": 1.0}, "m", "1", created=now - 7200)] * 5
        old[0] = dataclasses.replace(old[0], uncertain=True)
        new = [ResultRow("camera", "sw620", {"sw620": 1.0}, "m", "1", created=now)] * 3
        store.add(old + new).result(timeout=10)
        for created in (now - 7200, now):
            store.add_event(event(store.new_event_id(), "sw480", created)).result(timeout=10)
        assert store.summary()["total_uncertain"] == 1
        assert store.prune(now) == 5 + 1
        assert _counted(store) == {"results": 3, "events": 1}
        assert store.summary()["total_stored"] == 3, "the tallies follow the deletions"
        assert store.summary()["total_uncertain"] == 0, "so do their uncertain counts"
        assert [r["label"] for r in store.list()] == ["sw620"] * 3
        assert store.prune(now) == 0, "nothing more to delete"
    finally:
        store.close()


def test_at_most_max_rows_views_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr("service.store.PRUNE_CHUNK", 4)  # several chunks
    store = ResultStore(f"sqlite:///{tmp_path}/r.sqlite", max_rows=5)
    try:
        rows = [ResultRow("api", f"c{i % 2}", {"c0": 0.5, "c1": 0.5}, "m", "1") for i in range(13)]
        ids = store.add(rows).result(timeout=10)
        assert store.prune() == 8
        assert [r["id"] for r in store.list()] == ids[-5:], "the newest stay"
        assert store.summary()["total_stored"] == _counted(store)["results"] == 5
    finally:
        store.close()


def test_retention_settings_are_checked():
    with pytest.raises(ValueError, match="retention_s"):
        ResultStore("sqlite:///:memory:", retention_s=0)
    with pytest.raises(ValueError, match="max_rows"):
        ResultStore("sqlite:///:memory:", max_rows=0)


def test_numpy_values_are_stored_and_a_bad_submission_loses_only_itself(tmp_path):
    """QC flags and probabilities computed by NumPy are stored as plain JSON values;
    a submission the database refuses fails alone, not the others the writer grouped
    into the same commit."""
    import numpy as np

    path = tmp_path / "r.sqlite"
    store = ResultStore(f"sqlite:///{path}")
    try:
        numpy_qc: dict[str, Any] = {"touching": np.bool_(False), "area_um2": np.float32(80.5)}
        probabilities: dict[str, Any] = {"sw480": np.float32(0.75)}
        first = ResultRow("api", "sw480", probabilities, "m", "1", numpy_qc)
        store.add([first]).result(timeout=10)
        # Hold the database so the writer waits on the next submission and finds the
        # three after it queued together: one group commit.
        lock = sqlite3.connect(path, timeout=10)
        lock.execute("BEGIN EXCLUSIVE")
        waiting = store.add([ResultRow("api", "sw480", {"sw480": 1.0}, "m", "1")])
        time.sleep(0.3)
        good = store.add([ResultRow("api", "sw620", {"sw620": 1.0}, "m", "1")])
        bad = store.add([ResultRow("api", "sw620", {"sw620": 1.0}, "m", "1", {"x": {1, 2}})])
        later = store.add([ResultRow("api", "sw480", {"sw480": 1.0}, "m", "1")])
        lock.rollback()
        lock.close()
        assert len(waiting.result(timeout=30)) == 1
        assert len(good.result(timeout=30)) == 1
        assert len(later.result(timeout=30)) == 1
        with pytest.raises(TypeError, match="set"):
            bad.result(timeout=30)
        assert _counted(store)["results"] == 4
        assert store.summary()["total_stored"] == 4
        stored = store.list(limit=10)
        assert {"touching": False, "area_um2": 80.5} in [r["qc"] for r in stored]
    finally:
        store.close()
