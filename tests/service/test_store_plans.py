"""The index plan of the listings (docs/design.md): every page ``GET /results``
and ``GET /events`` can ask for (each filter, each pair of them, all at once; from
the start, after an id, newest, before an id; with and without a time window) is
read through an index narrowed by one of its filters, never by a scan of the table,
and gives exactly the rows that filtering every row would.

SQLite plans without statistics here, so a small table shows the plans of any size.
PostgreSQL's planner weighs statistics and takes a sequential scan on a small table:
``check_plans`` asks it, with sequential scans off, whether an index can serve each
page (``tests/service/test_postgres.py`` runs it there).
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from service.store import (
    DRIVING_ORDER,
    EventRow,
    ResultRow,
    ResultStore,
    _Cursor,
    _page_statements,
    events,
    results,
)

N_ROWS = 240
#: Each filter's value asked for: rare (api, an old reference), common (a label), of the
#: older rows only (model version 1) or of the newest (the last pipeline).
VALUES: dict[str, dict[str, Any]] = {
    "results": {
        "source": "api",
        "label": "sw620",
        "model_version": "1",
        "uncertain": True,
        "reference_id": f"{0:016x}",
        "pipeline_id": f"{2:016x}",
    },
    "events": {
        "label": "sw620",
        "model_version": "1",
        "uncertain": False,
        "reference_id": f"{0:016x}",
        "pipeline_id": f"{2:016x}",
    },
}
#: Time windows: the newest quarter (its rows next to the newest), most of the table.
WINDOWS = (1000.0 + 0.75 * N_ROWS, 1000.0 + 0.1 * N_ROWS)
LIMITS = (5,)


def fill(store: ResultStore) -> None:
    """``N_ROWS`` views and as many events: rows of every filter's values, some
    stored before the flag and the ids (NULL), created out of id order now and then."""
    views = []
    for i in range(N_ROWS):
        api = i % 7 == 0
        views.append(
            ResultRow(
                "api" if api else "camera",
                ("sw480", "sw620", "ht29")[i % 3],
                {"sw480": 0.5, "sw620": 0.5},
                "m",
                "1" if i < N_ROWS // 2 else "2",
                created=1000.0 + i + (40.0 if i % 11 == 0 else 0.0),
                uncertain=None if i < 20 else i % 4 == 0,
                reference_id=None if api else f"{i // 60:016x}",
                pipeline_id=None if i < 20 else f"{i // 80:016x}",
            )
        )
    store.add(views).result(timeout=30)
    futures = [
        store.add_event(
            EventRow(
                id=store.new_event_id(),
                created=view.created,
                ended=view.created + 0.1,
                first_frame=i,
                last_frame=i + 2,
                views=2,
                sightings=3,
                label=view.label,
                probabilities=view.probabilities,
                model_name="m",
                model_version=view.model_version,
                uncertain=view.uncertain,
                reference_id=view.reference_id,
                pipeline_id=view.pipeline_id,
            )
        )
        for i, view in enumerate(views)
    ]
    for future in futures:
        future.result(timeout=30)


def pages(table: str, limits: tuple[int, ...] = LIMITS) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every page asked for: (keyword arguments of the listing, cursor)."""
    names = list(VALUES[table])
    combos = [
        *(c for n in range(3) for c in itertools.combinations(names, n)),
        tuple(names),
    ]
    middle = N_ROWS // 2
    cursors = ((0, False, None), (middle, False, None), (0, True, None), (middle, True, middle))
    for combo, since, (after_id, descending, before_id), limit in itertools.product(
        combos, (None, *WINDOWS), cursors, limits
    ):
        equal = {name: VALUES[table][name] for name in combo}
        kwargs = {**equal, "since": since}
        yield kwargs, _Cursor(after_id, limit, descending, before_id)


def expected(rows: list[dict[str, Any]], kwargs: dict[str, Any], cursor: _Cursor) -> list[int]:
    """The page's ids, from every row filtered here."""
    since = kwargs["since"]
    kept = [
        r
        for r in rows
        if all(r[k] == v for k, v in kwargs.items() if k != "since")
        and (since is None or r["created"] >= since)
    ]
    if cursor.descending:
        below = [r for r in kept if cursor.before_id is None or r["id"] < cursor.before_id]
        return [r["id"] for r in sorted(below, key=lambda r: -r["id"])][: cursor.limit]
    return [r["id"] for r in kept if r["id"] > cursor.after_id][: cursor.limit]


def check_pages(store: ResultStore) -> None:
    """Every page of either listing holds exactly its rows, in order; of a time window,
    so does the window's statement alone, and the walk's whenever it fills the page
    (which some pages do and some do not)."""
    everything = {"results": store.list(limit=1000), "events": store.list_events(limit=1000)}
    assert len(everything["results"]) == len(everything["events"]) == N_ROWS
    listing = {"results": store.list, "events": store.list_events}
    tables = {"results": results, "events": events}
    walk_filled = {True: 0, False: 0}
    with store.engine.connect() as conn:
        for name in ("results", "events"):
            for kwargs, cursor in pages(name):
                got = listing[name](
                    cursor.after_id,
                    cursor.limit,
                    descending=cursor.descending,
                    before_id=cursor.before_id,
                    **kwargs,
                )
                want = expected(everything[name], kwargs, cursor)
                assert [r["id"] for r in got] == want, (name, kwargs, cursor)
                equal = {k: v for k, v in kwargs.items() if k != "since"}
                if kwargs["since"] is None:
                    continue
                walk, window = _page_statements(
                    tables[name], equal, kwargs["since"], cursor, store.engine.dialect.name
                )
                assert [r.id for r in conn.execute(window)] == want, (name, kwargs, cursor)
                walked = [r.id for r in conn.execute(walk)]
                walk_filled[len(walked) == cursor.limit] += 1
                if len(walked) == cursor.limit:
                    assert walked == want, (name, kwargs, cursor)
    assert walk_filled[True], walk_filled
    assert walk_filled[False], walk_filled


def explain(conn: sa.Connection, statement: sa.Select[Any]) -> list[str]:
    """The plan's lines: SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN."""
    sql = str(statement.compile(conn.engine, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        return [str(r[3]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    return [str(r[0]).strip() for r in conn.exec_driver_sql(f"EXPLAIN {sql}")]


def narrowed(plan: list[str], table: str, columns: set[str], dialect: str) -> bool:
    """Whether every read of ``table`` in ``plan`` is an index search with a
    condition on one of ``columns`` (none: the primary key's order, cut by a LIMIT)."""
    if dialect == "sqlite":
        reads = [line for line in plan if line.startswith(("SCAN", "SEARCH")) and table in line]
        if not columns:
            return all(
                line == f"SCAN {table}" or "USING INTEGER PRIMARY KEY (rowid" in line
                for line in reads
            )
        return bool(reads) and all(
            any(f"_{c}_id ({c}=?" in line or f"_{c} ({c}>?" in line for c in columns)
            for line in reads
        )
    if any("Seq Scan" in line for line in plan):
        return False
    if not columns:
        return all(f"{table}_pkey" in line for line in plan if " using " in line)
    conditions = [line for line in plan if line.startswith(("Index Cond", "Recheck Cond"))]
    scans = [line for line in plan if "Scan" in line and " on " in line and "walked" not in line]
    return (
        bool(scans)
        and all(f"{table}_pkey" not in line for line in scans)
        and all(any(re.search(rf"\b{c}\b", line) for c in columns) for line in conditions)
    )


def check_plans(store: ResultStore) -> None:
    """Each statement of every page is served by an index narrowed by its filters:
    the walk by its driving filter's (or the primary key's, without filters), the
    window by ``created`` (PostgreSQL: by any of the page's filters' indexes)."""
    dialect = store.engine.dialect.name
    tables = {"results": results, "events": events}
    with store.engine.connect() as conn:
        if dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE")
            conn.exec_driver_sql("SET enable_seqscan = off")
        for name, table in tables.items():
            for kwargs, cursor in pages(name, limits=(100,)):
                since = kwargs.pop("since")
                walk, *window = _page_statements(table, kwargs, since, cursor, dialect)
                filters = set(kwargs)
                plan = explain(conn, walk)
                if dialect == "sqlite":
                    driver = [c for c in DRIVING_ORDER if c in filters][:1]
                    assert narrowed(plan, name, set(driver), dialect), (name, kwargs, plan)
                    if since is None:
                        assert not any("TEMP B-TREE" in line for line in plan), plan
                else:
                    assert narrowed(plan, name, filters, dialect), (name, kwargs, plan)
                for statement in window:
                    plan = explain(conn, statement)
                    allowed = {"created"} if dialect == "sqlite" else {"created", *filters}
                    assert narrowed(plan, name, allowed, dialect), (name, kwargs, since, plan)


@pytest.fixture
def filled(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path}/plans.sqlite")
    fill(store)
    yield store
    store.close()


def test_every_page_holds_exactly_its_rows(filled):
    check_pages(filled)


def test_every_page_is_read_through_an_index_narrowed_by_its_filters(filled):
    check_plans(filled)


def test_a_database_with_the_older_indexes_gains_the_new_ones(tmp_path):
    """An earlier version's single-column indexes are replaced by the (column, id)
    ones; the rows are kept and listed through them."""
    db = tmp_path / "old.sqlite"
    store = ResultStore(f"sqlite:///{db}")
    fill(store)
    store.close()
    with sqlite3.connect(db) as conn:
        for index in sorted({str(i.name) for t in (results, events) for i in t.indexes}):
            if index.endswith("_id") and "event_id" not in index:
                conn.execute(f"DROP INDEX {index}")
        for table, column in (
            ("results", "label"),
            ("results", "reference_id"),
            ("results", "pipeline_id"),
            ("events", "label"),
        ):
            conn.execute(f"CREATE INDEX ix_{table}_{column} ON {table} ({column})")
    again = ResultStore(f"sqlite:///{db}")
    try:
        for schema in (results, events):
            present = {i["name"] for i in sa.inspect(again.engine).get_indexes(schema.name)}
            assert present == {i.name for i in schema.indexes}, schema.name
        rows = again.list(limit=1000)
        assert len(rows) == N_ROWS
        for kwargs, cursor in itertools.islice(pages("results"), 0, None, 37):
            page = again.list(
                cursor.after_id,
                cursor.limit,
                descending=cursor.descending,
                before_id=cursor.before_id,
                **kwargs,
            )
            assert [r["id"] for r in page] == expected(rows, kwargs, cursor), kwargs
        check_plans(again)
    finally:
        again.close()
