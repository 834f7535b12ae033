"""The live page's per-second history, sampled from the service's real metrics."""

from __future__ import annotations

import math
import time

import pytest

from service.history import SERIES, History, bucket_quantile
from service.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_quantile_interpolates_inside_the_bucket_as_prometheus_does():
    # 10 observations: 4 at most 0.01 s, 6 more at most 0.05 s, none beyond.
    cumulative = {0.01: 4.0, 0.05: 10.0, math.inf: 10.0}
    assert bucket_quantile(0.5, cumulative) == pytest.approx(0.01 + 0.04 * (1 / 6))
    assert bucket_quantile(0.2, cumulative) == pytest.approx(0.005)  # 2 of the first 4
    assert bucket_quantile(0.99, {0.1: 1.0, math.inf: 3.0}) == 0.1, "+Inf: the last bound"
    assert bucket_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert bucket_quantile(0.5, {}) is None


def test_each_second_records_what_changed_in_it():
    metrics, clock = Metrics(), Clock()
    history = History(metrics, seconds=3, clock=clock)
    assert history.sample() is None, "the first sample has nothing to compare with"

    clock.now += 2.0
    metrics.frames_grabbed.inc(40)
    metrics.frames_dropped.inc(2)
    metrics.cells.labels("sw480", "camera").inc(30)
    metrics.cells.labels("sw620", "api").inc(5)  # posted crops are not the camera's views
    metrics.events.labels("sw480").inc(6)
    metrics.events.labels("sw620").inc(2)
    metrics.queue_depth.set(7)
    metrics.fringe_contrast.set(0.6)
    for seconds in (0.004, 0.004, 0.02, 0.02):
        metrics.cell_latency.labels("camera").observe(seconds)
    metrics.cell_latency.labels("api").observe(3.0)  # not the camera's latency
    for nm in (1.5, 1.5, 1.5):
        metrics.background_opd.observe(nm)
    second = history.sample()
    assert second is not None
    v = second.values
    assert v["frames_per_s"] == 20
    assert v["dropped_per_s"] == 1
    assert v["views_per_s"] == 15
    assert v["cells_per_s"] == 4
    assert v["errors_per_s"] == 0
    assert v["queue_depth"] == 7
    assert v["fringe_contrast"] == 0.6
    p50, p99, background = v["latency_p50_s"], v["latency_p99_s"], v["background_opd_nm"]
    assert p50 is not None
    assert p99 is not None
    assert background is not None
    assert 0.0025 < p50 <= 0.01
    assert 0.01 < p99 <= 0.025
    assert 1 < background <= 2
    assert second.cells_by_class == {"sw480": 6, "sw620": 2}

    # A quiet second: rates fall to zero, the latency and background have no figure.
    clock.now += 1.0
    quiet = history.sample()
    assert quiet is not None
    assert quiet.values["frames_per_s"] == 0
    assert quiet.values["cells_per_s"] == 0
    assert quiet.values["latency_p99_s"] is None
    assert quiet.values["background_opd_nm"] is None
    assert quiet.cells_by_class == {"sw480": 0, "sw620": 0}

    series = history.series()
    assert set(series) == {"t", "cells_by_class", *SERIES}
    assert series["t"] == [1002.0, 1003.0]
    assert series["frames_per_s"] == [20.0, 0.0]
    assert series["cells_by_class"] == {"sw480": [6, 0], "sw620": [2, 0]}
    assert history.series(1)["t"] == [1003.0]

    for _ in range(3):  # the ring keeps the last `seconds` records
        clock.now += 1.0
        history.sample()
    assert history.series()["t"] == [1004.0, 1005.0, 1006.0]


def test_a_nan_contrast_has_no_figure_and_bad_sizes_are_refused():
    metrics, clock = Metrics(), Clock()
    history = History(metrics, clock=clock)
    metrics.fringe_contrast.set(float("nan"))
    history.sample()
    clock.now += 1
    second = history.sample()
    assert second is not None
    assert second.values["fringe_contrast"] is None
    with pytest.raises(ValueError, match="seconds must be at least 1, got 0"):
        History(metrics, seconds=0)


def test_the_sampling_thread_samples_until_stopped():
    history = History(Metrics())
    history.start(interval_s=0.01)
    try:
        deadline = time.monotonic() + 10
        while not history.series()["t"] and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        history.stop()
    assert history.series()["t"], "it sampled"
