"""The results store on a real PostgreSQL server (a throw-away cluster on 127.0.0.1)."""

from __future__ import annotations

import time

import httpx
import pytest

from service.store import ResultRow, ResultStore
from tests.postgres import MISSING, server_bin_dir, throwaway_server
from tests.service.conftest import start_server
from tests.service.test_api import NPY, crops, npy


@pytest.fixture(scope="module")
def postgres_url():
    if server_bin_dir() is None:
        pytest.fail(MISSING)
    with throwaway_server() as url:
        yield url


def test_store_on_postgres_keeps_order_and_ids(postgres_url):
    store = ResultStore(postgres_url)
    try:
        probabilities = {"sw480": 0.5, "sw620": 0.5}
        rows = [
            ResultRow(
                "api",
                "sw480" if i % 3 else "sw620",
                probabilities,
                "m",
                "1",
                {"area_um2": float(i)},
            )
            for i in range(7)
        ]
        ids = store.add(rows).result(30)
        assert ids == sorted(ids)
        listed = store.list(after_id=ids[0] - 1, limit=7)
        assert [r["id"] for r in listed] == ids
        assert [r["qc"]["area_um2"] for r in listed] == [float(i) for i in range(7)]
        assert store.summary(since=0)["counts"] == {"sw480": 4, "sw620": 3}
        kept = store.summary()  # from the figures kept as rows are committed
        assert kept["counts"] == {"sw480": 4, "sw620": 3}
        with store.engine.connect() as conn:
            rows_stored = conn.exec_driver_sql("SELECT count(*) FROM results").scalar()
        assert kept["total_stored"] == rows_stored, "the tallies (upserts) count every row"
    finally:
        store.close()


def test_service_on_postgres_survives_a_restart(tmp_path, models_root, postgres_url):
    srv = start_server(tmp_path, models_root, TOPGAN_DATABASE_URL=postgres_url)
    with httpx.Client(base_url=srv.url) as c:
        answer = c.post("/classify", content=npy(crops(3)), headers=NPY)
        assert answer.status_code == 200, answer.text
        ids = [cell["id"] for cell in answer.json()["cells"]]
    srv.stop()
    again = start_server(tmp_path, models_root, TOPGAN_DATABASE_URL=postgres_url)
    try:
        with httpx.Client(base_url=again.url) as c:
            stored = {r["id"] for r in c.get("/results", params={"limit": 1000}).json()["results"]}
            assert set(ids) <= stored
    finally:
        again.stop()


def fresh_database(postgres_url: str, name: str) -> str:
    """The URL of a new, empty database ``name`` on the server (dropped first if there)."""
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


def test_every_page_on_postgres_is_exact_and_read_through_an_index(postgres_url):
    """The index plan on PostgreSQL (tests/service/test_store_plans.py): every page
    of either listing holds exactly its rows, and an index narrowed by its filters
    can serve each of its statements (sequential scans off: on a table this small
    the planner would rather read it all)."""
    from tests.service.test_store_plans import check_pages, check_plans, fill

    store = ResultStore(fresh_database(postgres_url, "plans"))
    try:
        fill(store)
        check_pages(store)
        check_plans(store)
    finally:
        store.close()


def test_events_on_postgres_and_an_older_database_migrated(postgres_url):
    """A results table from before events gains event_id, and it, events and tallies
    from before the uncertain flag gain it; events are stored and listed; event ids
    continue after the database's largest."""
    import sqlalchemy as sa

    from service.store import EventRow

    url = fresh_database(postgres_url, "before_events")
    old = sa.create_engine(url)
    with old.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE results (id SERIAL PRIMARY KEY, created FLOAT NOT NULL,"
                " source VARCHAR(16) NOT NULL, frame_id INTEGER, y_px FLOAT, x_px FLOAT,"
                " label VARCHAR(64) NOT NULL, probabilities TEXT NOT NULL,"
                " model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL,"
                " qc TEXT NOT NULL, latency_s FLOAT)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO results (created, source, label, probabilities, model_name,"
                " model_version, qc) VALUES (1.0, 'camera', 'sw480', '{}', 'm', '1', '{}')"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE events (id INTEGER PRIMARY KEY, created FLOAT NOT NULL,"
                " ended FLOAT NOT NULL, source VARCHAR(16) NOT NULL,"
                " first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL,"
                " views INTEGER NOT NULL, sightings INTEGER NOT NULL, label VARCHAR(64) NOT NULL,"
                " probabilities TEXT NOT NULL, speed_um_s FLOAT, qc TEXT NOT NULL,"
                " model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL,"
                " latency_s FLOAT)"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE tallies (kind VARCHAR(16), source VARCHAR(16), label VARCHAR(64),"
                " model_version VARCHAR(64), n BIGINT NOT NULL,"
                " PRIMARY KEY (kind, source, label, model_version))"
            )
        )
    old.dispose()
    store = ResultStore(url)
    try:
        [before] = store.list()
        assert before["event_id"] is None
        assert before["uncertain"] is None
        event_id = store.new_event_id()
        view = ResultRow(
            "camera",
            "sw620",
            {"sw480": 0.2, "sw620": 0.8},
            "m",
            "1",
            event_id=event_id,
            uncertain=True,
        )
        store.add([view]).result(30)
        event = EventRow(
            id=event_id,
            created=2.0,
            ended=2.1,
            first_frame=3,
            last_frame=9,
            views=1,
            sightings=7,
            label="sw620",
            probabilities={"sw480": 0.2, "sw620": 0.8},
            model_name="m",
            model_version="1",
            speed_um_s=1800.0,
            qc={"area_um2": 90.0},
            uncertain=False,
        )
        assert store.add_event(event).result(30) == [event_id]
        [listed] = store.list_events()
        assert (listed["id"], listed["views"], listed["speed_um_s"]) == (event_id, 1, 1800.0)
        assert store.list(after_id=before["id"])[0]["event_id"] == event_id
        assert store.summary(since=0)["events"]["counts"] == {"sw620": 1}
        assert store.summary()["total_stored"] == 2, "the old row counted once, at start"
        assert store.summary()["events"]["counts"] == {"sw620": 1}
        assert store.summary()["total_uncertain"] == store.summary()["uncertain"] == 1
        assert store.summary(since=0)["uncertain"] == 1
        assert store.list_events()[0]["uncertain"] is False
        assert [r["id"] for r in store.list(uncertain=True)] == [store.list()[-1]["id"]]
    finally:
        store.close()
    again = ResultStore(url, retention_s=60)
    try:
        assert again.new_event_id() == event_id + 1
        # retention: every row is older than a minute an hour from now
        assert again.prune(time.time() + 3600) == 3
        assert again.summary()["total_stored"] == 0
        assert again.summary()["total_uncertain"] == 0
        assert again.list() == []
        assert again.list_events() == []
    finally:
        again.close()


def test_a_postgres_database_from_before_the_ids_is_migrated(postgres_url):
    """Results and events from before the reference and pipeline ids gain them (NULL
    for the old rows), the pipelines table is created; both are stored and read back."""
    import sqlalchemy as sa

    from service.store import events, results
    from tests.service.test_provenance import check_migrated_store

    url = fresh_database(postgres_url, "before_ids")
    old = sa.create_engine(url)
    with old.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE results (id SERIAL PRIMARY KEY, created FLOAT NOT NULL,"
                " source VARCHAR(16) NOT NULL, frame_id INTEGER, y_px FLOAT, x_px FLOAT,"
                " label VARCHAR(64) NOT NULL, probabilities TEXT NOT NULL,"
                " model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL,"
                " qc TEXT NOT NULL, latency_s FLOAT, event_id INTEGER, uncertain BOOLEAN)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO results (created, source, frame_id, label, probabilities,"
                " model_name, model_version, qc, event_id, uncertain)"
                " VALUES (1.0, 'camera', 1, 'sw480', '{}', 'm', '1', '{}', 7, false)"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE events (id INTEGER PRIMARY KEY, created FLOAT NOT NULL,"
                " ended FLOAT NOT NULL, source VARCHAR(16) NOT NULL,"
                " first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL,"
                " views INTEGER NOT NULL, sightings INTEGER NOT NULL, label VARCHAR(64) NOT NULL,"
                " probabilities TEXT NOT NULL, speed_um_s FLOAT, qc TEXT NOT NULL,"
                " model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL,"
                " latency_s FLOAT, uncertain BOOLEAN)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO events VALUES (7, 1.0, 1.1, 'camera', 1, 2, 1, 2, 'sw480', '{}',"
                " NULL, '{}', 'm', '1', 0.01, false)"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE tallies (kind VARCHAR(16), source VARCHAR(16), label VARCHAR(64),"
                " model_version VARCHAR(64), n BIGINT NOT NULL,"
                " uncertain BIGINT NOT NULL DEFAULT 0,"
                " PRIMARY KEY (kind, source, label, model_version))"
            )
        )
        conn.execute(
            sa.text("INSERT INTO tallies VALUES ('results', 'camera', 'sw480', '1', 1, 0)")
        )
        for table in ("results", "events"):  # the indexes of that version
            for column in ("created", "label"):
                conn.execute(sa.text(f"CREATE INDEX ix_{table}_{column} ON {table} ({column})"))
        conn.execute(sa.text("CREATE INDEX ix_results_event_id ON results (event_id)"))
        conn.execute(sa.text("INSERT INTO tallies VALUES ('events', 'camera', 'sw480', '1', 1, 0)"))
    old.dispose()
    store = ResultStore(url)
    try:
        check_migrated_store(store)
        for schema in (results, events):
            indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes(schema.name)}
            assert indexes == {i.name for i in schema.indexes}, "the old label index replaced"
    finally:
        store.close()
