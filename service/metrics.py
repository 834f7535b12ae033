"""Prometheus metrics (prefix ``topgan_``, base units, ``_total`` counters, histograms
for times), in a registry of the service's own so that tests can start several."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.metrics import MetricWrapperBase

from .loop.states import Count, ErrorReason

# The *_created series double every counter's output and nothing here reads them.
disable_created_metrics()

#: Seconds: from a fraction of a millisecond (one crop through ONNX Runtime) to a
#: few seconds (a stalled camera).
TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STAGES = ("reconstruct", "segment", "track", "classify", "store")
#: Views per event: one frame to a slow cell's crossing.
VIEW_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
#: Background OPD spread, nm: a fresh reference leaves 1-3 nm, a stale one tens.
BACKGROUND_BUCKETS = (0.5, 1, 2, 3, 5, 8, 12, 20, 35, 60, 100)
#: Phase residues per frame's sample region.
RESIDUE_BUCKETS = (0, 1, 3, 10, 30, 100, 300, 1000, 3000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_grabbed = Counter(
            "topgan_frames_grabbed_total", "Frames grabbed from the camera", registry=r
        )
        self.frames_dropped = Counter(
            "topgan_frames_dropped_total", "Frames dropped because the queue was full", registry=r
        )
        self.frame_errors = Counter(
            "topgan_frame_errors_total", "Frames that failed, by reason", ["reason"], registry=r
        )
        self.frames_processed = Counter(
            "topgan_frames_processed_total",
            "Camera frames reconstructed and segmented",
            registry=r,
        )
        self.frames_without_cells = Counter(
            "topgan_frames_without_cells_total",
            "Camera frames processed in which no cell was kept",
            registry=r,
        )
        self.background_opd = Histogram(
            "topgan_background_opd_nm",
            "OPD spread over each frame's cell-free pixels, nm (stale reference, drift)",
            buckets=BACKGROUND_BUCKETS,
            registry=r,
        )
        self.fringe_contrast = Gauge(
            "topgan_fringe_contrast",
            "Fringe modulation depth of the last frame's sample region (0 to 1)",
            registry=r,
        )
        self.carrier_drift = Gauge(
            "topgan_carrier_drift_cycles_per_px",
            "How far the last frame's fringe carrier has moved from the reference's, "
            "cycles per camera pixel (a misaligned module; a stale reference)",
            registry=r,
        )
        self.unwrap_residues = Histogram(
            "topgan_unwrap_residues",
            "Phase residues in each frame's wrapped sample region (noise, dark speckles, "
            "undersampled edges that no unwrapping makes consistent)",
            buckets=RESIDUE_BUCKETS,
            registry=r,
        )
        self.reference_age = Gauge(
            "topgan_reference_age_seconds",
            "Seconds since the camera loop's reference hologram was taken into use "
            "(NaN without one)",
            registry=r,
        )
        self.reference_age.set(float("nan"))
        self.cells_cut = Counter(
            "topgan_cells_cut_total", "Cells cut from camera frames", registry=r
        )
        self.cells_lost = Counter(
            "topgan_cells_lost_total",
            "Cells cut from camera frames that could not be classified or stored",
            registry=r,
        )
        self.reference_refreshes = Counter(
            "topgan_reference_refreshes_total",
            "Reference holograms recorded anew because the background had grown "
            "(TOPGAN_REFERENCE_REFRESH)",
            registry=r,
        )
        self.camera_reconnects = Counter(
            "topgan_camera_reconnects_total", "Times a lost camera was opened again", registry=r
        )
        self.cells = Counter(
            "topgan_cells_total",
            "Cells classified, by label and source",
            ["label", "source"],
            registry=r,
        )
        self.events = Counter(
            "topgan_events_total",
            "Cells of the camera loop counted once (each tracked across its frames), by label",
            ["label"],
            registry=r,
        )
        self.uncertain = Counter(
            "topgan_uncertain_total",
            "Stored results flagged uncertain (largest probability below min_confidence): "
            "views and posted crops (kind=view), cells counted once (kind=event)",
            ["kind"],
            registry=r,
        )
        self.event_views = Histogram(
            "topgan_event_views",
            "Classified views per event (frames a cell was classified in)",
            buckets=VIEW_BUCKETS,
            registry=r,
        )
        self.event_latency = Histogram(
            "topgan_event_latency_seconds",
            "Grab of an event's last view to the stored event",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.events_lost = Counter(
            "topgan_events_lost_total",
            "Events whose views were stored but the event could not be",
            registry=r,
        )
        self.edge_only_tracks = Counter(
            "topgan_edge_only_tracks_total",
            "Tracks only ever seen clipped by the field's border (never classified)",
            registry=r,
        )
        self.stage_seconds = Histogram(
            "topgan_stage_seconds",
            "Time per pipeline stage",
            ["stage"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.cell_latency = Histogram(
            "topgan_cell_latency_seconds",
            "Grab (or request) to stored result, per cell",
            ["source"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "topgan_queue_depth", "Frames waiting for reconstruction", registry=r
        )
        self.batch_size = Histogram(
            "topgan_inference_batch_size",
            "Crops per ONNX Runtime call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.http_requests = Counter(
            "topgan_http_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "topgan_http_request_seconds",
            "HTTP request time by route",
            ["route"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.model_info = Info("topgan_model", "The model being served", registry=r)
        self.model_loaded = Gauge("topgan_model_loaded", "1 when a model is loaded", registry=r)
        self.camera_up = Gauge("topgan_camera_up", "1 while the camera loop runs", registry=r)
        self.camera_enabled = Gauge(
            "topgan_camera_enabled", "1 when a camera is configured (not 'none')", registry=r
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for kind in ("view", "event"):
            self.uncertain.labels(kind)
        for reason in ErrorReason:
            self.frame_errors.labels(reason.value)
        # The camera loop's counts live here only: GET /acquisition reads them back.
        self._loop: dict[Count, Counter] = {
            Count.FRAMES_GRABBED: self.frames_grabbed,
            Count.FRAMES_DROPPED: self.frames_dropped,
            Count.FRAMES_PROCESSED: self.frames_processed,
            Count.FRAMES_WITHOUT_CELLS: self.frames_without_cells,
            Count.CELLS_CUT: self.cells_cut,
            Count.CELLS_LOST: self.cells_lost,
            Count.EVENTS_LOST: self.events_lost,
            Count.EDGE_ONLY_TRACKS: self.edge_only_tracks,
            Count.RECONNECTS: self.camera_reconnects,
            Count.REFERENCE_REFRESHES: self.reference_refreshes,
        }

    def count(self, what: Count, n: int = 1) -> None:
        """Count ``n`` of ``what`` in the camera loop (stored cells and events are
        counted by the store's commits, as ``topgan_cells_total{source="camera"}``
        and ``topgan_events_total``)."""
        self._loop[what].inc(n)

    def error(self, reason: ErrorReason) -> None:
        self.frame_errors.labels(reason.value).inc()

    def loop_counts(self) -> dict[Count, int]:
        """Every count of the camera loop, as ``/metrics`` shows it."""
        counts = {what: int(counter_total(counter)) for what, counter in self._loop.items()}
        counts[Count.CELLS_STORED] = int(counter_total(self.cells, source="camera"))
        counts[Count.EVENTS_STORED] = int(counter_total(self.events))
        return {what: counts[what] for what in Count}

    def error_counts(self) -> dict[ErrorReason, int]:
        """Errors of the camera loop by reason (the reasons that occurred)."""
        by_reason = counter_by(self.frame_errors, "reason")
        counts = {reason: int(by_reason.get(reason.value, 0)) for reason in ErrorReason}
        return {reason: n for reason, n in counts.items() if n}

    def set_model(self, name: str, version: str, method: str, providers: str) -> None:
        self.model_info.info(
            {"name": name, "version": version, "method": method, "providers": providers}
        )
        self.model_loaded.set(1)


def _samples(metric: MetricWrapperBase, suffix: str) -> Iterable[tuple[Mapping[str, str], float]]:
    """The labels and value of each of ``metric``'s samples whose name ends in ``suffix``
    (the readers below: what ``/metrics`` shows, read back without parsing it)."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample.labels, sample.value


def counter_total(metric: MetricWrapperBase, **labels: str) -> float:
    """A counter's value summed over its label sets that match ``labels``."""
    return sum(
        value
        for got, value in _samples(metric, "_total")
        if all(got.get(k) == v for k, v in labels.items())
    )


def counter_by(metric: MetricWrapperBase, label: str) -> dict[str, float]:
    """A counter's values summed by one of its labels."""
    by: dict[str, float] = {}
    for got, value in _samples(metric, "_total"):
        by[got[label]] = by.get(got[label], 0.0) + value
    return by


def gauge_value(metric: MetricWrapperBase) -> float:
    """An unlabelled gauge's value."""
    return next((value for _, value in _samples(metric, "")), math.nan)


def buckets(metric: MetricWrapperBase, **labels: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts by upper bound (``+Inf`` included),
    summed over its label sets that match ``labels``."""
    counts: dict[float, float] = {}
    for got, value in _samples(metric, "_bucket"):
        if all(got.get(k) == v for k, v in labels.items()):
            bound = float(got["le"])
            counts[bound] = counts.get(bound, 0.0) + value
    return counts
