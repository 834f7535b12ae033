"""The results store as it grows: summary, /results page and insert latencies.

A flow cytometer runs for hours and stores every view (~1 M rows an hour at 300
cells/s). The live page polls ``/results/summary`` every 0.7 s; it must not get slower
as the table grows. This fills a store (SQLite by default, PostgreSQL with
``--postgres URL``) to each size in ``--sizes`` and prints, side by side in one run:

- ``summary``: the service's summary (figures kept as rows are committed, tallies);
- ``counted``: the peer, the same summary counting the rows (``since=0``), as the
  store did before;
- ``page``: ``/results`` newest first, 100 rows; ``oldest``: the first page after id 0;
- ``insert``: one commit of 64 rows (a camera frame's group commit);

each the median of ``--repeats`` calls, in ms, and the ratio counted / summary.

Usage: ``python bench/store.py [--sizes 100000,1000000] [--postgres URL]``
(``--sizes 100000,1000000,10000000`` for the 10 M rows of issue 15; SQLite fills
about 50-100 k rows a second here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.store import ResultRow, ResultStore  # noqa: E402

LABELS = ("sw480", "sw620")
BATCH = 10_000


def rows(n: int, start: int) -> list[ResultRow]:
    created = time.time()
    return [
        ResultRow(
            "camera",
            LABELS[(start + i) % 2],
            {"sw480": 0.3, "sw620": 0.7},
            "sw480-sw620",
            "1",
            {"area_um2": 100.0, "dry_mass_pg": 50.0},
            frame_id=(start + i) // 4,
            y_px=100.0,
            x_px=200.0,
            created=created,
            event_id=(start + i) // 6,
        )
        for i in range(n)
    ]


def median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL database to fill")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        url = args.postgres or f"sqlite:///{tmp}/bench.sqlite"
        store = ResultStore(url)
        try:
            print(f"store: {store.engine.dialect.name}")
            header = f"{'rows':>10} {'summary':>9} {'counted':>9} {'ratio':>7} {'page':>7} "
            print(header + f"{'oldest':>7} {'insert':>7}   (ms, median of {args.repeats})")
            stored = 0
            for size in sizes:
                began = time.perf_counter()
                while stored < size:
                    n = min(BATCH, size - stored)
                    store.add(rows(n, stored)).result(timeout=600)
                    stored += n
                fill_s = time.perf_counter() - began
                summary = median_ms(store.summary, args.repeats)
                counted = median_ms(lambda: store.summary(since=0), args.repeats)
                page = median_ms(lambda: store.list(limit=100, descending=True), args.repeats)
                oldest = median_ms(lambda: store.list(limit=100), args.repeats)
                insert = median_ms(lambda: store.add(rows(64, 0)).result(timeout=60), args.repeats)
                stored += 64 * args.repeats
                print(
                    f"{size:>10} {summary:9.2f} {counted:9.1f} {counted / summary:6.0f}x "
                    f"{page:7.2f} {oldest:7.2f} {insert:7.2f}   (filled in {fill_s:.0f} s)"
                )
        finally:
            store.close()


if __name__ == "__main__":
    main()
