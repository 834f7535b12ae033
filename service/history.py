"""The last minutes, second by second: what the operator's page plots.

Every second :class:`History` reads the service's own Prometheus metrics (the same
counters, gauges and histograms ``/metrics`` serves, so the page and Grafana never
disagree) and keeps what changed in that second: frames grabbed and dropped, views
classified, cells counted once (events) by class, frame errors, the queue depth, the
grab-to-stored latency of that second's camera cells (p50 and p99, interpolated in
the histogram's buckets as Prometheus's ``histogram_quantile`` does), the median
background OPD spread and phase residues of that second's frames, the fringe contrast
and the carrier's drift. A ring of
``seconds`` such records is all it holds: a few hundred kilobytes at most.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .metrics import Metrics, buckets, counter_by, counter_total, gauge_value

#: The series of :meth:`History.series`, in the order the page plots them.
SERIES: tuple[str, ...] = (
    "frames_per_s",
    "dropped_per_s",
    "views_per_s",
    "cells_per_s",
    "errors_per_s",
    "queue_depth",
    "latency_p50_s",
    "latency_p99_s",
    "background_opd_nm",
    "fringe_contrast",
    "carrier_drift_cycles_per_px",
    "unwrap_residues",
)


def bucket_quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of observations given as cumulative bucket counts (upper
    bound -> count), interpolated linearly inside the bucket it falls in, as
    Prometheus's ``histogram_quantile``; the largest finite bound when it falls in the
    ``+Inf`` bucket; None without observations."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


@dataclass(frozen=True)
class _Totals:
    """The metrics' running totals at one instant."""

    at: float
    frames: float
    dropped: float
    views: float
    events: dict[str, float]
    errors: float
    latency: dict[float, float]
    background: dict[float, float]
    residues: dict[float, float]


@dataclass(frozen=True)
class Second:
    """What happened in one interval between two samples (about a second)."""

    t: float  # Unix time at the interval's end
    values: dict[str, float | None]
    cells_by_class: dict[str, int] = field(default_factory=dict)


def _delta(now: Mapping[float, float], before: Mapping[float, float]) -> dict[float, float]:
    return {k: v - before.get(k, 0.0) for k, v in now.items()}


class History:
    """Per-second figures of the last ``seconds`` seconds, sampled from ``metrics``.

    Parameters
    ----------
    metrics : the service's metrics (read, never written)
    seconds : how many per-second records to keep
    clock : Unix time source (tests pass their own)
    """

    def __init__(
        self, metrics: Metrics, seconds: int = 600, clock: Callable[[], float] = time.time
    ) -> None:
        if seconds < 1:
            raise ValueError(f"seconds must be at least 1, got {seconds}")
        self.metrics = metrics
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._records: deque[Second] = deque(maxlen=seconds)
        self._last: _Totals | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _totals(self) -> _Totals:
        m = self.metrics
        return _Totals(
            at=self._clock(),
            frames=counter_total(m.frames_grabbed),
            dropped=counter_total(m.frames_dropped),
            views=counter_total(m.cells, source="camera"),
            events=counter_by(m.events, "label"),
            errors=counter_total(m.frame_errors),
            latency=buckets(m.cell_latency, source="camera"),
            background=buckets(m.background_opd),
            residues=buckets(m.unwrap_residues),
        )

    def sample(self) -> Second | None:
        """Read the metrics and record what changed since the last sample (None the
        first time: there is nothing to compare with yet)."""
        now = self._totals()
        queue = gauge_value(self.metrics.queue_depth)
        contrast = gauge_value(self.metrics.fringe_contrast)
        drift = gauge_value(self.metrics.carrier_drift)
        with self._lock:
            before, self._last = self._last, now
            if before is None:
                return None
            dt = max(now.at - before.at, 1e-6)
            latency = _delta(now.latency, before.latency)
            record = Second(
                t=now.at,
                values={
                    "frames_per_s": (now.frames - before.frames) / dt,
                    "dropped_per_s": (now.dropped - before.dropped) / dt,
                    "views_per_s": (now.views - before.views) / dt,
                    "cells_per_s": (sum(now.events.values()) - sum(before.events.values())) / dt,
                    "errors_per_s": (now.errors - before.errors) / dt,
                    "queue_depth": float(queue),
                    "latency_p50_s": bucket_quantile(0.5, latency),
                    "latency_p99_s": bucket_quantile(0.99, latency),
                    "background_opd_nm": bucket_quantile(
                        0.5, _delta(now.background, before.background)
                    ),
                    "fringe_contrast": contrast if math.isfinite(contrast) else None,
                    "carrier_drift_cycles_per_px": drift if math.isfinite(drift) else None,
                    "unwrap_residues": bucket_quantile(0.5, _delta(now.residues, before.residues)),
                },
                cells_by_class={
                    k: round(v - before.events.get(k, 0.0)) for k, v in now.events.items()
                },
            )
            self._records.append(record)
            return record

    def series(self, seconds: int | None = None) -> dict[str, Any]:
        """The last ``seconds`` records (all kept by default) as columns: ``t`` and one
        list per name of :data:`SERIES` (None where a second had no such figure), and
        ``cells_by_class``, a list per class."""
        with self._lock:
            records = list(self._records)
        if seconds is not None:
            records = records[-seconds:] if seconds > 0 else []
        classes = sorted({k for r in records for k in r.cells_by_class})
        return {
            "t": [r.t for r in records],
            **{name: [_rounded(r.values[name]) for r in records] for name in SERIES},
            "cells_by_class": {k: [r.cells_by_class.get(k, 0) for r in records] for k in classes},
        }

    # -- the sampling thread -----------------------------------------------------------

    def start(self, interval_s: float = 1.0) -> None:
        """Sample every ``interval_s`` seconds in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return

        def run() -> None:
            self.sample()
            while not self._stop.wait(interval_s):
                self.sample()

        self._thread = threading.Thread(target=run, name="history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
