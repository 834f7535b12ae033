"""The results store as it grows: summary, /results pages and insert latencies.

A flow cytometer runs for hours and stores every view (~1 M rows an hour at 300
cells/s). The live page polls ``/results/summary`` every 0.7 s and a user pages
``/results``, filtered or not; neither may get slower as the table grows. This fills
a store to each size in ``--sizes`` (SQLite, and beside it PostgreSQL with
``--postgres``) and prints, for each backend and size side by side, each the median
of ``--repeats`` calls in ms:

- ``summary``: the service's summary (figures kept as rows are committed, tallies);
- ``counted``: its peer counting the rows (``since=0``), as the store did before;
- ``page ...``: a page of 100 of ``/results`` through ``ResultStore.list``: newest
  first, oldest first, newest first of a common label, of the rare posted crops
  (``source=api``, 1 %), of the uncertain ones (5 %), of the oldest reference (its
  rows ever further from the newest), of the newest pipeline and a label, and of the
  last 10 000 rows' time window, newest first (the window's rows next to the
  cursor) and oldest first (the window read from its index: docs/design.md, "The
  index plan of the listings");
- ``insert``: one commit of 64 rows (a camera frame's group commit);

with each backend's ratio of its largest size to its smallest: flat is 1x.

Usage: ``python bench/store.py [--sizes 100000,1000000] [--repeats 7] [--postgres
auto|URL] [--no-sqlite]`` (``--no-sqlite``: PostgreSQL alone). ``auto`` starts a
throw-away PostgreSQL server (Debian's, as the tests
do: ``tests/postgres.py``) and deletes it at the end, also on Ctrl+C, a kill (SIGTERM)
or an error;
without one installed it says so and measures SQLite alone. A URL names an empty
database to fill. ``--sizes 100000,1000000,10000000`` for the 10 M rows of issue 15
(on a shared, busy 2-core machine SQLite filled 5-6 k rows a second through the
store, PostgreSQL 2-3 k: over half an hour for 10 M rows on SQLite alone).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.store import ResultRow, ResultStore  # noqa: E402
from tests.postgres import MISSING, server_bin_dir, throwaway_server  # noqa: E402

LABELS = ("sw480", "sw620")
BATCH = 10_000
PAGE = 100
CELLS_PER_S = 300.0
#: A reference hologram per this many rows, a pipeline per this many.
REFERENCE_ROWS = 100_000
PIPELINE_ROWS = 1_000_000
WINDOW_ROWS = 10_000


def reference_id(i: int) -> str:
    return f"{i // REFERENCE_ROWS:016x}"


def pipeline_id(i: int) -> str:
    return f"{0xABC0 + i // PIPELINE_ROWS:016x}"


def created(i: int, t0: float) -> float:
    """Row ``i``'s time: the camera at ``CELLS_PER_S`` from ``t0``."""
    return t0 + i / CELLS_PER_S


def rows(n: int, start: int, t0: float) -> list[ResultRow]:
    """Rows ``start`` to ``start + n``: the camera's but for every 100th (a posted
    crop, without reference or pipeline); every 20th uncertain."""
    out = []
    for i in range(start, start + n):
        api = i % 100 == 0
        out.append(
            ResultRow(
                "api" if api else "camera",
                LABELS[i % 2],
                {"sw480": 0.3, "sw620": 0.7},
                "sw480-sw620",
                "1",
                {"area_um2": 100.0, "dry_mass_pg": 50.0},
                frame_id=None if api else i // 4,
                y_px=100.0,
                x_px=200.0,
                created=created(i, t0),
                event_id=None if api else i // 6,
                uncertain=i % 20 == 0,
                reference_id=None if api else reference_id(i),
                pipeline_id=None if api else pipeline_id(i),
            )
        )
    return out


def median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def pages(store: ResultStore, stored: int, t0: float) -> dict[str, Callable[[], object]]:
    """The /results pages measured, on a store of ``stored`` rows."""
    since = created(stored - WINDOW_ROWS, t0)
    newest = stored - 1
    return {
        "page newest": lambda: store.list(limit=PAGE, descending=True),
        "page oldest": lambda: store.list(limit=PAGE),
        "page label": lambda: store.list(limit=PAGE, descending=True, label="sw620"),
        "page source=api": lambda: store.list(limit=PAGE, descending=True, source="api"),
        "page uncertain": lambda: store.list(limit=PAGE, descending=True, uncertain=True),
        "page old reference": lambda: store.list(
            limit=PAGE, descending=True, reference_id=reference_id(0)
        ),
        "page pipeline+label": lambda: store.list(
            limit=PAGE, descending=True, pipeline_id=pipeline_id(newest), label="sw480"
        ),
        "page window newest": lambda: store.list(limit=PAGE, descending=True, since=since),
        "page window oldest": lambda: store.list(limit=PAGE, since=since),
    }


def settle(store: ResultStore) -> None:
    """Do now what the database would do in the background after a fill, so that it
    does not while the figures are measured: a running service's steady state, not
    the backlog a bulk fill leaves (PostgreSQL: autovacuum's VACUUM ANALYZE, and a
    checkpoint; SQLite: the WAL checkpointed)."""
    autocommit = store.engine.execution_options(isolation_level="AUTOCOMMIT")
    with autocommit.connect() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("VACUUM ANALYZE")
            conn.exec_driver_sql("CHECKPOINT")
        else:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def measure(
    url: str, sizes: list[int], repeats: int, say: Callable[[str], None]
) -> Iterator[dict[str, float]]:
    """Fill the store at ``url`` to each size in turn; each size's figures."""
    store = ResultStore(url)
    t0 = time.time() - sizes[-1] / CELLS_PER_S
    try:
        stored = 0
        for size in sizes:
            began, before = time.perf_counter(), stored
            while stored < size:
                n = min(BATCH, size - stored)
                store.add(rows(n, stored, t0)).result(timeout=600)
                stored += n
            fill_s = time.perf_counter() - began
            settle(store)
            figures = {
                "summary": median_ms(store.summary, repeats),
                "counted": median_ms(lambda: store.summary(since=0), repeats),
            }
            for figure, call in pages(store, stored, t0).items():
                figures[figure] = median_ms(call, repeats)

            def insert() -> None:
                nonlocal stored
                store.add(rows(64, stored, t0)).result(timeout=60)
                stored += 64

            figures["insert 64 rows"] = median_ms(insert, repeats)
            rate_k = (size - before) / max(fill_s, 1e-9) / 1e3
            say(f"{store.engine.dialect.name}: {size} rows ({rate_k:.0f} k rows/s filling)")
            yield figures
    finally:
        store.close()


def table(measured: dict[str, list[dict[str, float]]], sizes: list[int], repeats: int) -> str:
    """Figures as rows; per backend a column per size and the ratio of the largest
    size's to the smallest's."""

    def size_name(n: int) -> str:
        return f"{n / 1e6:g}M"

    head, sub = [f"{'':22}"], [f"{'ms, median of ' + str(repeats):22}"]
    for backend in measured:
        width = 9 * len(sizes) + 8
        head.append(f"{backend:>{width}}")
        sub.append("".join(f"{size_name(n):>9}" for n in sizes) + f"{'ratio':>8}")
    lines = [" |".join(head), " |".join(sub)]
    for figure in next(iter(measured.values()))[0]:
        cells = [f"{figure:22}"]
        for runs in measured.values():
            values = [run[figure] for run in runs]
            text = "".join(f"{v:9.2f}" for v in values) + " " * 9 * (len(sizes) - len(values))
            ratio = f"{values[-1] / values[0]:7.1f}x" if len(values) > 1 else f"{'':8}"
            cells.append(text + ratio)
        lines.append(" |".join(cells))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--postgres",
        metavar="auto|URL",
        help="also PostgreSQL: auto, a throw-away server; or an empty database's URL",
    )
    parser.add_argument(
        "--sqlite",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure SQLite (--no-sqlite: PostgreSQL alone, with --postgres)",
    )
    args = parser.parse_args()
    if not args.sqlite and not args.postgres:
        parser.error("--no-sqlite needs --postgres")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if sizes[0] <= WINDOW_ROWS:
        parser.error(f"--sizes: each above {WINDOW_ROWS} rows (the time window's)")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # a kill, as Ctrl+C: the server is stopped and deleted

    signal.signal(signal.SIGTERM, stop)

    measured: dict[str, list[dict[str, float]]] = {}
    try:
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            urls = {"sqlite": f"sqlite:///{tmp}/bench.sqlite"} if args.sqlite else {}
            if args.postgres == "auto":
                if server_bin_dir() is None:
                    if not urls:
                        say(f"--postgres auto: {MISSING}")
                        return 2
                    say(f"--postgres auto: {MISSING}; SQLite only")
                else:
                    urls["postgresql"] = stack.enter_context(throwaway_server())
            elif args.postgres:
                urls["postgresql"] = args.postgres
            for backend, url in urls.items():
                measured[backend] = []
                for figures in measure(url, sizes, args.repeats, say):
                    measured[backend].append(figures)
    except KeyboardInterrupt:
        say("interrupted: the figures measured so far")
        measured = {k: v for k, v in measured.items() if v}
        if measured:
            print(table(measured, sizes, args.repeats))
        return 130
    print(table(measured, sizes, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
