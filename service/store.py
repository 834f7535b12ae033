"""The results store: every classification, from the camera loop and from the API.

SQLAlchemy Core over SQLite (a file, WAL journal) by default, PostgreSQL by URL.
Writes go through one writer thread that commits whatever has queued up in a
single transaction (group commit); a caller's future resolves only once its rows
are committed, so a result that was acknowledged is on disk.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

logger = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_S = 1.0

metadata = sa.MetaData()
results = sa.Table(
    "results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.Float, nullable=False, index=True),  # Unix time, seconds
    sa.Column("source", sa.String(16), nullable=False),  # "camera" or "api"
    sa.Column("frame_id", sa.Integer, nullable=True),
    sa.Column("y_px", sa.Float, nullable=True),
    sa.Column("x_px", sa.Float, nullable=True),
    sa.Column("label", sa.String(64), nullable=False, index=True),
    sa.Column("probabilities", sa.Text, nullable=False),  # JSON {class: p}
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("qc", sa.Text, nullable=False),  # JSON
    sa.Column("latency_s", sa.Float, nullable=True),  # grab (or request) to stored
)


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


class ResultStore:
    """Results in a database; thread-safe; :meth:`add` returns a future of the ids."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(
                parents=True, exist_ok=True
            )
        self.engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        self.started = time.time()
        self._queue: queue.Queue[tuple[list[ResultRow], Future[list[int]]] | None] = queue.Queue()
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
        self.on_commit: Any = None  # called with (rows, seconds) after each commit

    # -- writing --------------------------------------------------------------------

    def add(self, rows: Sequence[ResultRow]) -> Future[list[int]]:
        future: Future[list[int]] = Future()
        if not rows:
            future.set_result([])
        else:
            self._queue.put((list(rows), future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then stop the writer and dispose of the engine."""
        self._queue.put(None)
        self._writer.join(timeout)
        self._stop.set()
        self.engine.dispose()

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
            pending = [item]
            stop = False
            while True:  # group commit: take everything that is already waiting
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                pending.append(more)
            self._commit(pending)
            if stop:
                return

    def _commit(self, pending: list[tuple[list[ResultRow], Future[list[int]]]]) -> None:
        start = time.perf_counter()
        sizes = [len(rows) for rows, _ in pending]
        values = [_values(r) for rows, _ in pending for r in rows]
        try:
            with self.engine.begin() as conn:
                if self.engine.dialect.insert_executemany_returning_sort_by_parameter_order:
                    # One statement for the whole group, ids in the order of the rows.
                    statement = results.insert().returning(
                        results.c.id, sort_by_parameter_order=True
                    )
                    ids = [int(i) for i in conn.execute(statement, values).scalars()]
                else:  # pragma: no cover - databases without it: one row at a time
                    ids = []
                    for v in values:
                        key = conn.execute(results.insert(), v).inserted_primary_key
                        assert key is not None
                        ids.append(int(key[0]))
        except Exception as exc:
            logger.exception("storing %d result batches failed", len(pending))
            for _, future in pending:
                future.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        done = time.monotonic()
        if self.on_commit:
            self.on_commit([r for rows, _ in pending for r in rows], seconds, done)
        offset = 0
        for (_, future), size in zip(pending, sizes, strict=True):
            future.set_result(ids[offset : offset + size])
            offset += size

    # -- reading --------------------------------------------------------------------

    def list(self, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        query = (
            sa.select(results).where(results.c.id > after_id).order_by(results.c.id).limit(limit)
        )
        with self.engine.connect() as conn:
            return [_row_dict(r) for r in conn.execute(query).mappings()]

    def summary(self, since: float | None = None) -> dict[str, Any]:
        since = self.started if since is None else since
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(results)).scalar_one()
            per_label = conn.execute(
                sa.select(results.c.label, sa.func.count())
                .where(results.c.created >= since)
                .group_by(results.c.label)
            ).all()
            per_source = conn.execute(
                sa.select(results.c.source, sa.func.count())
                .where(results.c.created >= since)
                .group_by(results.c.source)
            ).all()
        elapsed = max(time.time() - since, 1e-9)
        counts = {str(label): int(n) for label, n in per_label}
        n_since = sum(counts.values())
        return {
            "since": since,
            "seconds": elapsed,
            "total_stored": int(total),
            "cells": n_since,
            "counts": counts,
            "fractions": {k: v / n_since for k, v in counts.items()} if n_since else {},
            "sources": {str(s): int(n) for s, n in per_source},
            "cells_per_second": n_since / elapsed,
        }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL with synchronous=NORMAL survives a process kill (not a power loss) without
    # an fsync per commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _values(row: ResultRow) -> dict[str, Any]:
    latency = time.monotonic() - row.started if row.started is not None else None
    return {
        "created": row.created,
        "source": row.source,
        "frame_id": row.frame_id,
        "y_px": row.y_px,
        "x_px": row.x_px,
        "label": row.label,
        "probabilities": json.dumps(row.probabilities),
        "model_name": row.model_name,
        "model_version": row.model_version,
        "qc": json.dumps(row.qc),
        "latency_s": latency,
    }


def _row_dict(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["probabilities"] = json.loads(out["probabilities"])
    out["qc"] = json.loads(out["qc"])
    return out
