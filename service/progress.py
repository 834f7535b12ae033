"""Progress lines on stderr for long commands."""

from __future__ import annotations

import sys
import time


class ProgressPrinter:
    """Call with (done, total): a live line on a terminal, else one line per 10 %."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.start = time.monotonic()
        self.last_decile = -1
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        line = f"{self.label}: {done}/{total} ({rate:.1f}/s)"
        if self.tty:
            end = "\n" if done >= total else ""
            print(f"\r{line}", end=end, file=sys.stderr, flush=True)
            return
        decile = done * 10 // max(total, 1)
        if decile != self.last_decile:
            self.last_decile = decile
            print(line, file=sys.stderr, flush=True)
