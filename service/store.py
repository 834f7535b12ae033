"""The results store: every classification, from the camera loop and from the API.

SQLAlchemy Core over SQLite (a file, WAL journal) by default, PostgreSQL by URL.
Writes go through one writer thread that commits whatever has queued up in a
single transaction (group commit); a caller's future resolves only once its rows
are committed, so a result that was acknowledged is on disk.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from .queues import with_waiting

logger = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_S = 1.0
#: How often the retention settings are applied, and rows deleted per transaction.
PRUNE_INTERVAL_S = 60.0
PRUNE_CHUNK = 10_000
#: A page of a time window first walks this many rows per row asked past its cursor
#: (:func:`_page_statements`): the window's rows among them fill the page unless
#: fewer than one in ten is in the window.
SINCE_WALK_ROWS_PER_ROW = 10

metadata = sa.MetaData()


def _listed_by(table: str, *columns: str) -> list[sa.Index]:
    """The indexes of a listing's filters of equality, each beside the id
    (``ix_<table>_<column>_id``): a page of one is a walk of its index in id order
    from the cursor, whatever the table's size (docs/design.md, "The index plan of
    the listings"). A time window (``since``) is served by the ``created`` index
    (:func:`_page_statements`)."""
    return [sa.Index(f"ix_{table}_{column}_id", column, "id") for column in columns]


results = sa.Table(
    "results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.Float, nullable=False, index=True),  # Unix time, seconds
    sa.Column("source", sa.String(16), nullable=False),  # "camera" or "api"
    sa.Column("frame_id", sa.Integer, nullable=True),
    sa.Column("y_px", sa.Float, nullable=True),
    sa.Column("x_px", sa.Float, nullable=True),
    sa.Column("label", sa.String(64), nullable=False),
    sa.Column("probabilities", sa.Text, nullable=False),  # JSON {class: p}
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("qc", sa.Text, nullable=False),  # JSON
    sa.Column("latency_s", sa.Float, nullable=True),  # grab (or request) to stored
    # The cell (event) this view belongs to; None for crops posted to the API.
    sa.Column("event_id", sa.Integer, nullable=True, index=True),
    # Its largest probability was below min_confidence; None: stored before the flag.
    sa.Column("uncertain", sa.Boolean, nullable=True),
    # The reference hologram it was reconstructed against (service.loop.reference_id)
    # and its pipeline (the pipelines table); None: none, a posted crop, or stored before.
    sa.Column("reference_id", sa.String(16), nullable=True),
    sa.Column("pipeline_id", sa.String(16), nullable=True),
    *_listed_by(
        "results", "source", "label", "model_version", "uncertain", "reference_id", "pipeline_id"
    ),
)
#: Counts of the stored rows, kept in the transaction that stores them, so that the
#: summary never counts a table: per kind ("results" or "events"), source, label and
#: model version, the rows (n) and of them the uncertain ones.
tallies = sa.Table(
    "tallies",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("source", sa.String(16), primary_key=True),
    sa.Column("label", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.String(64), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("uncertain", sa.BigInteger, nullable=False, server_default="0"),
)
#: One row per cell of the camera loop: its views combined (docs/design.md, "Events").
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("created", sa.Float, nullable=False, index=True),  # first sighting, Unix s
    sa.Column("ended", sa.Float, nullable=False),  # last sighting, Unix s
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("first_frame", sa.Integer, nullable=False),
    sa.Column("last_frame", sa.Integer, nullable=False),
    sa.Column("views", sa.Integer, nullable=False),  # classified views
    sa.Column("sightings", sa.Integer, nullable=False),  # frames seen in, clipped ones too
    sa.Column("label", sa.String(64), nullable=False),
    sa.Column("probabilities", sa.Text, nullable=False),  # JSON {class: p}, views combined
    sa.Column("speed_um_s", sa.Float, nullable=True),
    sa.Column("qc", sa.Text, nullable=False),  # JSON: the views' mean QC
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("latency_s", sa.Float, nullable=True),  # last view's grab to stored
    # The combined probabilities' largest was below min_confidence (None: stored before).
    sa.Column("uncertain", sa.Boolean, nullable=True),
    # Its last view's reference and pipeline (None: stored before they were recorded).
    sa.Column("reference_id", sa.String(16), nullable=True),
    sa.Column("pipeline_id", sa.String(16), nullable=True),
    *_listed_by("events", "label", "model_version", "uncertain", "reference_id", "pipeline_id"),
)
#: Single-column indexes of earlier versions that the ones above replace: dropped.
SUPERSEDED_INDEXES = (
    "ix_results_label",
    "ix_results_reference_id",
    "ix_results_pipeline_id",
    "ix_events_label",
)
#: One row per configuration that stored a result (service.pipelines): its id and
#: the canonical JSON the id is the SHA-256 of. Never pruned: a handful of rows.
pipelines = sa.Table(
    "pipelines",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("created", sa.Float, nullable=False),  # first registered, Unix s
    sa.Column("description", sa.Text, nullable=False),
)
#: A tally's key: kind, source, label, model version, and whether the rows are
#: uncertain (rows stored before the flag count as not uncertain).
TallyKey = tuple[str, str, str, str, bool]


@dataclass
class ResultRow:
    """One classified cell, before it has an id."""

    source: str
    label: str
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    qc: dict[str, Any] = field(default_factory=dict)
    frame_id: int | None = None
    y_px: float | None = None
    x_px: float | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None  # monotonic time the cell's frame or request began
    event_id: int | None = None
    uncertain: bool | None = None  # largest probability below min_confidence
    reference_id: str | None = None
    pipeline_id: str | None = None


@dataclass
class EventRow:
    """One cell of the camera loop, counted once: its views combined."""

    id: int
    created: float
    ended: float
    first_frame: int
    last_frame: int
    views: int
    sightings: int
    label: str
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    speed_um_s: float | None = None
    qc: dict[str, float] = field(default_factory=dict)
    source: str = "camera"
    started: float | None = None  # monotonic grab time of the last view
    uncertain: bool | None = None  # the combined probabilities' largest below min_confidence
    reference_id: str | None = None  # its last view's
    pipeline_id: str | None = None  # its last view's


@dataclass(frozen=True)
class PipelineRow:
    """A pipeline to keep (service.pipelines): its id and canonical JSON."""

    id: str
    description: str
    created: float = field(default_factory=time.time)


class ResultStore:
    """Results in a database; thread-safe; :meth:`add` returns a future of the ids."""

    def __init__(
        self, url: str, retention_s: float | None = None, max_rows: int | None = None
    ) -> None:
        if retention_s is not None and not retention_s > 0:
            raise ValueError(f"retention_s must be positive, got {retention_s}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.url = url
        self.retention_s = retention_s
        self.max_rows = max_rows
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(
                parents=True, exist_ok=True
            )
        self.engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        _migrate(self.engine)
        self.started = time.time()
        # Rows committed since this store started, by (kind, source, label, model
        # version, uncertain): the summary's figures, counted as the rows are committed.
        self._since_start: collections.Counter[TallyKey] = collections.Counter()
        self._tally_lock = threading.Lock()
        with self.engine.connect() as conn:
            last = max(
                conn.execute(sa.select(sa.func.max(events.c.id))).scalar() or 0,
                conn.execute(sa.select(sa.func.max(results.c.event_id))).scalar() or 0,
            )
        self._event_ids = itertools.count(int(last) + 1)
        self._event_ids_lock = threading.Lock()
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="results-writer", daemon=True)
        self._writer.start()
        self._stop = threading.Event()
        if self.engine.dialect.name == "sqlite":
            # Automatic WAL checkpoints run inside a commit and stall every request
            # waiting on it; a passive checkpoint in its own thread never blocks writers.
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="results-checkpoint", daemon=True
            )
            self._checkpointer.start()
        if retention_s is not None or max_rows is not None:
            self._pruner = threading.Thread(
                target=self._prune_loop, name="results-retention", daemon=True
            )
            self._pruner.start()
        self.on_commit: Any = None  # called with (rows, seconds, done) after each commit
        self.on_events: Any = None  # called with (event rows, done) after each commit

    # -- writing --------------------------------------------------------------------

    def add(self, rows: Sequence[ResultRow]) -> Future[list[int]]:
        """Queue ``rows``; the future gives their ids once they are committed."""
        future: Future[list[int]] = Future()
        if not rows:
            future.set_result([])
        else:
            self._queue.put(_Pending(list(rows), future))
        return future

    def new_event_id(self) -> int:
        """An id for a new event (its views carry it before the event is stored);
        ids continue after the largest in the database (one writing service per
        database)."""
        with self._event_ids_lock:
            return next(self._event_ids)

    def add_event(self, event: EventRow) -> Future[list[int]]:
        """Queue ``event``; the future gives ``[event.id]`` once it is committed."""
        future: Future[list[int]] = Future()
        self._queue.put(_Pending([event], future))
        return future

    def add_pipeline(self, pipeline: PipelineRow) -> Future[list[int]]:
        """Queue ``pipeline`` (kept once: a pipeline already stored stays as it is);
        committed before, or with, the rows queued after it."""
        future: Future[list[int]] = Future()
        self._queue.put(_Pending([pipeline], future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then stop the writer and dispose of the engine."""
        self._queue.put(None)
        self._writer.join(timeout)
        self._stop.set()
        self.engine.dispose()

    def prune(self, now: float | None = None) -> int:
        """Delete the rows the retention settings no longer keep: results and events
        created more than ``retention_s`` before ``now``, and the oldest results
        beyond ``max_rows``; the tallies follow in the same transactions. Deletes in
        chunks, so the writer never waits long. Returns the rows deleted."""
        now = time.time() if now is None else now
        deleted = 0
        for kind, table in (("results", results), ("events", events)):
            conditions: list[sa.ColumnElement[bool]] = []
            if self.retention_s is not None:
                conditions.append(table.c.created < now - self.retention_s)
            if self.max_rows is not None and kind == "results":
                with self.engine.connect() as conn:
                    top = conn.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0
                conditions.append(table.c.id <= top - self.max_rows)
            if not conditions:
                continue
            while True:
                chunk = (
                    sa.select(table.c.id)
                    .where(sa.or_(*conditions))
                    .order_by(table.c.id)
                    .limit(PRUNE_CHUNK)
                    .scalar_subquery()
                )
                with self.engine.begin() as conn:
                    counted = _tally_rows(conn, kind, table, table.c.id.in_(chunk))
                    if not counted:
                        break
                    conn.execute(table.delete().where(table.c.id.in_(chunk)))
                    _add_tallies(conn, collections.Counter({k: -n for k, n in counted.items()}))
                deleted += sum(counted.values())
        if deleted:
            logger.info("retention: %d stored rows deleted", deleted)
        return deleted

    def _prune_loop(self) -> None:
        while not self._stop.wait(PRUNE_INTERVAL_S):
            try:
                self.prune()
            except Exception:  # a busy database: try again next time
                logger.warning("retention pass failed; trying again later", exc_info=True)

    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(CHECKPOINT_INTERVAL_S):
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:  # a busy database: try again next time
                logger.debug("WAL checkpoint skipped", exc_info=True)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            pending, stop = with_waiting(self._queue, item)  # group commit
            self._commit(pending)
            if stop:
                return

    def _commit(self, pending: list[_Pending]) -> None:
        start = time.perf_counter()
        rows = [r for p in pending for r in p.rows if isinstance(r, ResultRow)]
        event_rows = [e for p in pending for e in p.rows if isinstance(e, EventRow)]
        pipeline_rows = [q for p in pending for q in p.rows if isinstance(q, PipelineRow)]
        tally = collections.Counter(
            [("results", r.source, r.label, r.model_version, bool(r.uncertain)) for r in rows]
            + [
                ("events", e.source, e.label, e.model_version, bool(e.uncertain))
                for e in event_rows
            ]
        )
        try:
            with self.engine.begin() as conn:
                _insert_pipelines(conn, pipeline_rows)
                ids = _insert_results(conn, [_values(r) for r in rows])
                if event_rows:
                    conn.execute(events.insert(), [_values(e) for e in event_rows])
                _add_tallies(conn, tally)
        except Exception as exc:
            if len(pending) > 1:
                # One bad submission must not lose the others it was grouped with:
                # each is committed on its own, and only the bad one fails.
                logger.warning(
                    "a group commit of %d submissions failed (%s); committing each alone",
                    len(pending),
                    exc,
                )
                for p in pending:
                    self._commit([p])
                return
            logger.exception("storing a result batch failed")
            pending[0].future.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        done = time.monotonic()
        with self._tally_lock:
            self._since_start.update(tally)
        if self.on_commit:
            self.on_commit(rows, seconds, done)
        if event_rows and self.on_events:
            self.on_events(event_rows, done)
        result_ids = iter(ids)
        for p in pending:
            if p.rows and isinstance(p.rows[0], EventRow):
                p.future.set_result([e.id for e in p.rows if isinstance(e, EventRow)])
            elif p.rows and isinstance(p.rows[0], PipelineRow):
                p.future.set_result([])
            else:
                p.future.set_result([next(result_ids) for _ in p.rows])

    # -- reading --------------------------------------------------------------------

    def pipeline(self, pipeline_id: str) -> dict[str, Any] | None:
        """The stored pipeline ``pipeline_id``: its id, when it was first stored and
        its description; None when there is none."""
        query = sa.select(pipelines).where(pipelines.c.id == pipeline_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _pipeline_dict(row)

    def list_pipelines(self) -> list[dict[str, Any]]:
        """Every stored pipeline, the oldest first."""
        query = sa.select(pipelines).order_by(pipelines.c.created, pipelines.c.id)
        with self.engine.connect() as conn:
            return [_pipeline_dict(r) for r in conn.execute(query).mappings()]

    def list_events(
        self,
        after_id: int = 0,
        limit: int = 100,
        *,
        descending: bool = False,
        before_id: int | None = None,
        label: str | None = None,
        model_version: str | None = None,
        since: float | None = None,
        uncertain: bool | None = None,
        reference_id: str | None = None,
        pipeline_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Events with an id above ``after_id`` (oldest first), or with ``descending``
        below ``before_id`` (newest first), matching every filter given."""
        equal = {
            "label": label,
            "model_version": model_version,
            "uncertain": uncertain,
            "reference_id": reference_id,
            "pipeline_id": pipeline_id,
        }
        cursor = _Cursor(after_id, limit, descending, before_id)
        statements = _page_statements(events, equal, since, cursor, self.engine.dialect.name)
        return _read_page(self.engine, statements, limit)

    def list(
        self,
        after_id: int = 0,
        limit: int = 100,
        *,
        descending: bool = False,
        before_id: int | None = None,
        source: str | None = None,
        label: str | None = None,
        model_version: str | None = None,
        since: float | None = None,
        uncertain: bool | None = None,
        reference_id: str | None = None,
        pipeline_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Results with an id above ``after_id`` (oldest first), or with ``descending``
        below ``before_id`` (newest first), matching every filter given."""
        equal = {
            "source": source,
            "label": label,
            "model_version": model_version,
            "uncertain": uncertain,
            "reference_id": reference_id,
            "pipeline_id": pipeline_id,
        }
        cursor = _Cursor(after_id, limit, descending, before_id)
        statements = _page_statements(results, equal, since, cursor, self.engine.dialect.name)
        return _read_page(self.engine, statements, limit)

    def summary(
        self, since: float | None = None, flow_rate_ul_min: float | None = None
    ) -> dict[str, Any]:
        """Detections (every stored view) and events (every cell once) since ``since``,
        per class and the uncertain ones beside, with the sample's flow rate the
        concentration. By default since the store
        started, from counts kept as rows are committed, and ``total_stored`` from the
        tallies: no table is counted, whatever its size. An explicit ``since``
        counts the rows created since then (a scan of the rows since then)."""
        if since is None:
            since = self.started
            with self._tally_lock:
                counted = list(self._since_start.items())
        else:
            counted = _count_since(self.engine, since)
        with self.engine.connect() as conn:
            total, total_uncertain = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(tallies.c.n), 0),
                    sa.func.coalesce(sa.func.sum(tallies.c.uncertain), 0),
                ).where(tallies.c.kind == "results")
            ).one()
        elapsed = max(time.time() - since, 1e-9)
        views = [(s, lab, v, u, n) for (kind, s, lab, v, u), n in counted if kind == "results"]
        cells = [(lab, u, n) for (kind, _, lab, _, u), n in counted if kind == "events"]
        counts: dict[str, int] = {}
        sources: dict[str, int] = {}
        for source, label, _, _, n in views:
            counts[label] = counts.get(label, 0) + n
            sources[source] = sources.get(source, 0) + n
        n_since = sum(counts.values())
        event_counts: dict[str, int] = {}
        for label, _, n in cells:
            event_counts[label] = event_counts.get(label, 0) + n
        n_events = sum(event_counts.values())
        event_summary: dict[str, Any] = {
            "total": n_events,
            "counts": event_counts,
            "fractions": {k: v / n_events for k, v in event_counts.items()} if n_events else {},
            "uncertain": sum(n for _, u, n in cells if u),
            "per_second": n_events / elapsed,
        }
        if flow_rate_ul_min:
            # cells per second over microlitres per second
            event_summary["per_ul"] = event_summary["per_second"] / (flow_rate_ul_min / 60)
        return {
            "since": since,
            "seconds": elapsed,
            "total_stored": int(total),
            "total_uncertain": int(total_uncertain),
            "cells": n_since,
            "counts": counts,
            "fractions": {k: v / n_since for k, v in counts.items()} if n_since else {},
            "uncertain": sum(n for *_, u, n in views if u),
            "sources": sources,
            "by_source": _split([(s, lab, u, n) for s, lab, _, u, n in views]),
            "by_model": _split([(v, lab, u, n) for _, lab, v, u, n in views]),
            "cells_per_second": n_since / elapsed,
            "events": event_summary,
        }


def _tally_rows(
    conn: sa.Connection,
    kind: str,
    table: sa.Table,
    where: sa.ColumnElement[bool] | None = None,
) -> collections.Counter[TallyKey]:
    """``table``'s rows (those matching ``where``) counted by (kind, source, label,
    model version, uncertain): the tallies' key (a NULL flag counts as not uncertain)."""
    key = (table.c.source, table.c.label, table.c.model_version, table.c.uncertain)
    query = sa.select(*key, sa.func.count())
    if where is not None:
        query = query.where(where)
    counted: collections.Counter[TallyKey] = collections.Counter()
    for s, lab, v, u, n in conn.execute(query.group_by(*key)):
        counted[(kind, str(s), str(lab), str(v), bool(u))] += int(n)
    return counted


def _count_since(engine: sa.Engine, since: float) -> list[tuple[TallyKey, int]]:
    """Rows created at or after ``since``, by the tallies' key."""
    counted: collections.Counter[TallyKey] = collections.Counter()
    with engine.connect() as conn:
        for kind, table in (("results", results), ("events", events)):
            counted += _tally_rows(conn, kind, table, table.c.created >= since)
    return list(counted.items())


def _split(rows: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """``(group, label, uncertain, count)`` rows as ``{group: {"cells", "counts",
    "fractions", "uncertain"}}``."""
    counts: dict[str, dict[str, int]] = {}
    uncertain: dict[str, int] = {}
    for group, label, flag, n in rows:
        per_label = counts.setdefault(str(group), {})
        per_label[str(label)] = per_label.get(str(label), 0) + int(n)
        uncertain[str(group)] = uncertain.get(str(group), 0) + (int(n) if flag else 0)
    split = {}
    for group, per_label in sorted(counts.items()):
        cells = sum(per_label.values())
        fractions = {k: v / cells for k, v in per_label.items()}
        split[group] = {
            "cells": cells,
            "counts": per_label,
            "fractions": fractions,
            "uncertain": uncertain[group],
        }
    return split


@dataclass(frozen=True)
class _Cursor:
    """Where a page starts and how many rows it holds: ascending after ``after_id``,
    or ``descending`` before ``before_id`` (from the newest when None)."""

    after_id: int
    limit: int
    descending: bool
    before_id: int | None


def _read_page(
    engine: sa.Engine, statements: Iterator[sa.Select[Any]], limit: int
) -> list[dict[str, Any]]:
    """Run ``statements`` in turn until one fills the page (``limit`` rows); the rows
    of that one, or of the last."""
    with engine.connect() as conn:
        for statement in statements:
            rows = conn.execute(statement).mappings().all()
            if len(rows) == limit:
                break
    return [_row_dict(r) for r in rows]


def _page_statements(
    table: sa.Table,
    equal: dict[str, str | bool | None],
    since: float | None,
    cursor: _Cursor,
    dialect: str,
) -> Iterator[sa.Select[Any]]:
    """The statements that read one page of ``table`` (each column of ``equal`` given a
    value equal to it, created at or after ``since``), to run in turn until one fills
    the page (docs/design.md, "The index plan of the listings"); each made when
    asked for.

    Without ``since``, one: the walk from the cursor in id order, of the primary key,
    or with filters of the ``(column, id)`` index of the first of them in
    :data:`DRIVING_ORDER`, the others checked row by row. With ``since``, first the
    same walk cut off after :data:`SINCE_WALK_ROWS_PER_ROW` rows per row asked, its
    rows in the window kept: it fills the page whenever the rows next to the cursor
    are in the window (the newest page of a recent window; the pages after the first
    of a window, oldest first); else the rows of the window from the ``created``
    index, sorted by id, costing as many as the window holds, not the table (the
    first oldest-first page of a recent window; a window without rows). Both give
    exactly the rows of the page."""
    given = {name: value for name, value in equal.items() if value is not None}
    walk = _walk(table, given, cursor, dialect)
    if since is None:
        yield walk.limit(cursor.limit)
        return
    walked = walk.limit(cursor.limit * SINCE_WALK_ROWS_PER_ROW).subquery("walked")
    walked_order = walked.c.id.desc() if cursor.descending else walked.c.id.asc()
    yield (
        sa.select(walked)
        .where(walked.c.created >= since)
        .order_by(walked_order)
        .limit(cursor.limit)
    )
    # The window's rows: neither the id order nor (on SQLite, which keeps no statistics
    # here and would take any index of equality over a range) a filter's index.
    hide = _unary_plus if dialect == "sqlite" else _same
    where = [hide(table.c[name]) == value for name, value in given.items()]
    where += _bound(_unary_plus(table.c.id), cursor)
    order = _unary_plus(table.c.id)
    yield (
        sa.select(table)
        .where(table.c.created >= since, *where)
        .order_by(order.desc() if cursor.descending else order.asc())
        .limit(cursor.limit)
    )


#: The filters of equality in the order they choose the index a page walks: first
#: those whose rows come together in time (a reference, a pipeline, a model version:
#: an old one's rows lie far from the newest), then those spread over the table.
DRIVING_ORDER = ("reference_id", "pipeline_id", "model_version", "uncertain", "source", "label")


def _walk(table: sa.Table, given: dict[str, Any], cursor: _Cursor, dialect: str) -> sa.Select[Any]:
    """``table``'s rows matching ``given`` from the cursor on, in id order: of the
    primary key without filters, else of the driving filter's ``(column, id)`` index
    (the first in :data:`DRIVING_ORDER`), the other filters checked row by row.

    SQLite walks it when the others are hidden from it. PostgreSQL, which drops a
    column equal to a value from the order, may walk the primary key instead,
    checking every row (it does when the value is common, though its rows may lie far
    from the cursor): for it the equality is written as a range of that index, and
    the order as the index's, (column, id)."""
    driver = next((name for name in DRIVING_ORDER if name in given), None)
    if driver is None:
        order = table.c.id.desc() if cursor.descending else table.c.id.asc()
        return sa.select(table).where(*_bound(table.c.id, cursor)).order_by(order)
    column = table.c[driver]
    value = sa.bindparam(None, given[driver], type_=column.type)
    hide = _unary_plus if dialect == "sqlite" else _same
    others = [hide(table.c[name]) == v for name, v in given.items() if name != driver]
    if dialect == "sqlite":
        order = table.c.id.desc() if cursor.descending else table.c.id.asc()
        return (
            sa.select(table)
            .where(column == value, *_bound(table.c.id, cursor), *others)
            .order_by(order)
        )
    pair = sa.tuple_(column, table.c.id)
    if cursor.descending:
        if cursor.before_id is None:
            where = [column >= value, column <= value]
        else:
            where = [column >= value, pair < sa.tuple_(value, cursor.before_id)]
        orders = [column.desc(), table.c.id.desc()]
    else:
        where = [column <= value, pair > sa.tuple_(value, cursor.after_id)]
        orders = [column.asc(), table.c.id.asc()]
    return sa.select(table).where(*where, *others).order_by(*orders)


def _bound(id_column: Any, cursor: _Cursor) -> list[Any]:
    """The cursor's condition on ``id_column``: above ``after_id`` ascending, below
    ``before_id`` (if any) descending."""
    if cursor.descending:
        return [] if cursor.before_id is None else [id_column < cursor.before_id]
    return [id_column > cursor.after_id]


def _same(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    """``column`` as it is: where nothing needs hiding."""
    return column


def _unary_plus(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    """``+column``: the same value, but no index serves it (SQLite's documented way of
    choosing among indexes; PostgreSQL has it for numbers only)."""
    return sa.UnaryExpression(column, operator=sa.sql.operators.custom_op("+"), type_=column.type)


def _insert_pipelines(conn: sa.Connection, rows: list[PipelineRow]) -> None:
    """Insert the pipelines not stored yet (a stored one keeps its first ``created``)."""
    values = list({r.id: dataclasses.asdict(r) for r in reversed(rows)}.values())
    if not values:
        return
    if conn.dialect.name in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
        statement = dialect.insert(pipelines).on_conflict_do_nothing(index_elements=["id"])
        conn.execute(statement, values)
        return
    for value in values:  # pragma: no cover - other databases: read, then write
        if conn.execute(sa.select(pipelines.c.id).where(pipelines.c.id == value["id"])).first():
            continue
        conn.execute(pipelines.insert(), value)


def _insert_results(conn: sa.Connection, values: list[dict[str, Any]]) -> list[int]:
    """Insert result rows; their ids in the order of ``values``."""
    if not values:
        return []
    if conn.dialect.insert_executemany_returning_sort_by_parameter_order:
        # One statement for the whole group, ids in the order of the rows.
        return [int(i) for i in conn.execute(_results_returning(), values).scalars()]
    ids = []  # pragma: no cover - databases without it: one row at a time
    for v in values:  # pragma: no cover
        key = conn.execute(results.insert(), v).inserted_primary_key
        assert key is not None
        ids.append(int(key[0]))
    return ids


@dataclass
class _Pending:
    """Rows waiting for the writer (results, or events), and their future."""

    rows: list[ResultRow] | list[EventRow] | list[PipelineRow]
    future: Future[list[int]]


#: Columns added since the first schema: (table, column, its SQL). Rows stored before
#: a column existed keep NULL there (never tracked, never judged, reference and
#: pipeline not recorded), the tallies' uncertain counts 0 for them.
ADDED_COLUMNS = (
    ("results", "event_id", "INTEGER"),
    ("results", "uncertain", "BOOLEAN"),
    ("events", "uncertain", "BOOLEAN"),
    ("tallies", "uncertain", "BIGINT NOT NULL DEFAULT 0"),
    ("results", "reference_id", "VARCHAR(16)"),
    ("results", "pipeline_id", "VARCHAR(16)"),
    ("events", "reference_id", "VARCHAR(16)"),
    ("events", "pipeline_id", "VARCHAR(16)"),
)


def _migrate(engine: sa.Engine) -> None:
    """Bring a database created by an earlier version up to this schema: tables
    without a column of :data:`ADDED_COLUMNS` gain it, then every index of the
    schema missing is created and those of :data:`SUPERSEDED_INDEXES` dropped;
    tallies are counted once for a database from before them."""
    inspector = sa.inspect(engine)
    present = {t: {c["name"] for c in inspector.get_columns(t)} for t in metadata.tables}
    for name, column, sql in ADDED_COLUMNS:
        if column in present[name]:
            continue
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN {column} {sql}"))
        logger.info("%s table migrated: %s added", name, column)
    for table in metadata.tables.values():
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name in indexes:
                continue
            # One pass over the table: a while for millions of rows, once.
            logger.info("%s table migrated: creating index %s", table.name, index.name)
            with engine.begin() as conn:
                index.create(conn)
        for old in SUPERSEDED_INDEXES:
            if old in indexes:
                with engine.begin() as conn:
                    conn.execute(sa.text(f"DROP INDEX {old}"))
                logger.info("%s table migrated: index %s dropped", table.name, old)
    with engine.begin() as conn:
        if conn.execute(sa.select(tallies.c.n).limit(1)).first() is None:
            # No tallies yet (a new database, or one from before they existed):
            # count the rows once, here, and never again.
            counted: collections.Counter[TallyKey] = collections.Counter()
            for kind, table in (("results", results), ("events", events)):
                counted += _tally_rows(conn, kind, table)
            _add_tallies(conn, counted)
            if counted:
                logger.info("tallies counted from %d stored rows", sum(counted.values()))


@lru_cache(maxsize=4)
def _tally_upsert(dialect_name: str) -> Any:
    """The tallies' upsert for SQLite or PostgreSQL, built once: building it (its
    ``excluded`` alias above all) took a third of a small commit's CPU."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = sqlite if dialect_name == "sqlite" else postgresql
    statement = dialect.insert(tallies)
    return statement.on_conflict_do_update(
        index_elements=["kind", "source", "label", "model_version"],
        set_={
            "n": tallies.c.n + statement.excluded.n,
            "uncertain": tallies.c.uncertain + statement.excluded.uncertain,
        },
    )


@lru_cache(maxsize=1)
def _results_returning() -> Any:
    """The results' insert giving back the ids in the rows' order, built once."""
    return results.insert().returning(results.c.id, sort_by_parameter_order=True)


def _add_tallies(conn: sa.Connection, tally: collections.Counter[TallyKey]) -> None:
    """Add ``tally`` (:data:`TallyKey` -> rows) to the tallies, in the caller's
    transaction (an upsert on SQLite and PostgreSQL)."""
    if not tally:
        return
    summed: dict[tuple[str, str, str, str], list[int]] = {}
    for (k, s, lab, v, flag), n in tally.items():
        both = summed.setdefault((k, s, lab, v), [0, 0])
        both[0] += n
        both[1] += n if flag else 0
    values = [
        {"kind": k, "source": s, "label": lab, "model_version": v, "n": n, "uncertain": u}
        for (k, s, lab, v), (n, u) in summed.items()
    ]
    key = ["kind", "source", "label", "model_version"]
    if conn.dialect.name in ("sqlite", "postgresql"):
        conn.execute(_tally_upsert(conn.dialect.name), values)
        return
    for value in values:  # pragma: no cover - other databases: read, then write
        where = [tallies.c[k] == value[k] for k in key]
        updated = conn.execute(
            tallies.update()
            .where(*where)
            .values(n=tallies.c.n + value["n"], uncertain=tallies.c.uncertain + value["uncertain"])
        ).rowcount
        if not updated:
            conn.execute(tallies.insert(), value)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL with synchronous=NORMAL survives a process kill (not a power loss) without
    # an fsync per commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _values(row: ResultRow | EventRow) -> dict[str, Any]:
    """A row's columns: its fields, JSON for the mappings, the latency from ``started``.
    A shallow copy of the fields (``dataclasses.asdict`` deep-copies the mappings, the
    most of a commit's time)."""
    values = dict(vars(row))
    started = values.pop("started")
    values["latency_s"] = time.monotonic() - started if started is not None else None
    values["probabilities"] = json.dumps(row.probabilities, default=_plain)
    values["qc"] = json.dumps(row.qc, default=_plain)
    return values


def _plain(value: Any) -> Any:
    """A NumPy scalar (a QC flag computed by NumPy, a float32 probability) as the
    Python value JSON takes; anything else is refused as ``json`` refuses it."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _row_dict(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["probabilities"] = json.loads(out["probabilities"])
    out["qc"] = json.loads(out["qc"])
    return out


def _pipeline_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "created": row["created"],
        "description": json.loads(row["description"]),
    }
