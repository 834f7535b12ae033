"""Classification: the served model, the shared micro-batcher and the results store.

One path for every caller: crops -> the micro-batcher -> the results store; a
result is returned only once it is committed. ``/classify``, ``/classify/hologram``
and the camera loop (:class:`service.loop.Classifier`) all go through it.

Every result, and every event's combined probabilities, is flagged ``uncertain`` when
its largest probability is below ``min_confidence`` (:func:`is_uncertain`): the
models' probabilities are calibrated (a temperature inside the ONNX graph), so the
flag marks the cells whose label is right less often than that. An uncertain cell is
still stored, with its label, and counted in its class.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.cameras import GrabbedFrame
from acquisition.frames import CropGeometry
from acquisition.segmentation import Cell, SegmentationConfig
from models.manifest import Manifest, ModelError
from models.runtime import MicroBatcher, ModelHolder, ModelRuntime, Prediction

from .crop_checks import CropChecker, CropChecks
from .metrics import Metrics
from .pipelines import Pipeline, Pipelines, Stages
from .reloads import ServedModelFile
from .settings import Settings
from .store import EventRow, ResultRow, ResultStore

logger = logging.getLogger(__name__)

#: Crop side cut while no model is loaded (the design's 128x128 crops).
DEFAULT_CROP_PX = 128


def is_uncertain(probabilities: Iterable[float], min_confidence: float) -> bool:
    """The rule of the ``uncertain`` flag: the largest probability below ``min_confidence``
    (0 flags nothing)."""
    return bool(float(max(probabilities)) < min_confidence)


@dataclass
class Classified:
    manifest: Manifest
    probabilities: np.ndarray
    ids: list[int | None]  # None: not stored (a posted crop that failed its QC)
    labels: list[str]
    uncertain: list[bool]
    pipeline_id: str | None = None


class Classification:
    """The model, the batcher in front of it and the store behind it (and the checks
    of posted crops beside the batcher).

    Parameters
    ----------
    holder : the model being served (atomically replaceable)
    batcher : the micro-batcher every caller shares
    store : where every result is committed
    metrics : the model info metric and the per-label cell counts
    crop_pixel_size_um : the crop pixel size while no model is loaded
    served : where a reloaded model is remembered for the next start (None: nowhere)
    min_confidence : results (and events) whose largest probability is below it are
        flagged uncertain
    """

    def __init__(
        self,
        holder: ModelHolder,
        batcher: MicroBatcher,
        store: ResultStore,
        metrics: Metrics,
        crop_pixel_size_um: float = 0.25,
        served: ServedModelFile | None = None,
        min_confidence: float = 0.0,
        qc_process: bool = True,
    ) -> None:
        self.holder = holder
        self.batcher = batcher
        self.store = store
        self.metrics = metrics
        self.crop_pixel_size_um = crop_pixel_size_um
        self.served = served
        self.min_confidence = min_confidence
        self.pipelines = Pipelines(store, min_confidence)
        self.checker = CropChecker(processes=qc_process)

    @classmethod
    def start(cls, settings: Settings, metrics: Metrics) -> Classification:
        """Load the model (the one a reload left, else the configured one,
        :mod:`service.reloads`) and start the batcher and the store."""
        holder = ModelHolder(settings.execution_provider, settings.inference_threads)
        served = ServedModelFile.of(settings)
        remembered = served.recall()
        if remembered is not None:
            try:
                _show_model(metrics, holder.load(remembered))
            except ModelError as exc:
                logger.error(
                    "the reloaded model %s does not load, serving the configured one: %s",
                    remembered,
                    exc,
                )
        if holder.current is None and settings.model_dir is not None:
            try:
                _show_model(metrics, holder.load(settings.model_dir))
            except ModelError as exc:
                logger.error("no model loaded: %s", exc)
        elif holder.current is None:
            logger.warning(
                "no model directory configured: /classify answers 503 until one is loaded"
            )

        def on_batch(n: int, seconds: float) -> None:
            metrics.batch_size.observe(n)
            metrics.stage_seconds.labels("classify").observe(seconds)

        batcher = MicroBatcher(holder, settings.batch_size, settings.batch_wait_ms / 1000, on_batch)
        retention = settings.results_retention_days
        store = ResultStore(
            settings.database_url,
            retention_s=retention * 86400 if retention is not None else None,
            max_rows=settings.results_max_rows,
        )

        def on_commit(rows: list[ResultRow], seconds: float, done: float) -> None:
            metrics.stage_seconds.labels("store").observe(seconds)
            for row in rows:
                metrics.cells.labels(row.label, row.source).inc()
                if row.uncertain:
                    metrics.uncertain.labels("view").inc()
                if row.started is not None:
                    metrics.cell_latency.labels(row.source).observe(done - row.started)

        def on_events(events: list[EventRow], done: float) -> None:
            for event in events:
                metrics.events.labels(event.label).inc()
                if event.uncertain:
                    metrics.uncertain.labels("event").inc()
                metrics.event_views.observe(event.views)
                if event.started is not None:
                    metrics.event_latency.observe(done - event.started)

        store.on_commit = on_commit
        store.on_events = on_events
        logger.info("results stored in %s", _safe_url(settings.database_url))
        return cls(
            holder,
            batcher,
            store,
            metrics,
            settings.crop_pixel_size_um,
            served,
            settings.min_confidence,
            qc_process=settings.worker_processes,
        )

    @property
    def runtime(self) -> ModelRuntime | None:
        """The model being served, None when none is loaded."""
        return self.holder.current

    def reload_model(self, directory: Path) -> Manifest:
        """Load ``directory`` atomically (on failure the current model keeps serving),
        and remember it for the next start."""
        runtime = self.holder.load(directory)
        _show_model(self.metrics, runtime)
        if self.served is not None:
            self.served.remember(directory, runtime.manifest)
        return runtime.manifest

    def crop_geometry(self) -> CropGeometry:
        """The crops the served model takes."""
        runtime = self.holder.current
        if runtime is None:
            return CropGeometry(DEFAULT_CROP_PX, self.crop_pixel_size_um)
        return CropGeometry(runtime.crop_shape[0], runtime.manifest.pixel_size_um)

    async def classify(
        self,
        crops: np.ndarray,
        source: str,
        started: float,
        qc: list[dict[str, Any]] | None = None,
        positions: list[tuple[float, float]] | None = None,
        frame_id: int | None = None,
        stages: Stages | None = None,
        reference_id: str | None = None,
    ) -> Classified:
        """Classify ``crops`` and commit one result row each (from the event loop);
        cut from a hologram by ``stages`` (against the reference ``reference_id``),
        the rows record them (posted crops: no stages, no pipeline)."""
        prediction = await asyncio.wrap_future(self.batcher.submit(crops))
        return await self._commit(
            prediction, source, started, qc, positions, frame_id, None, stages, reference_id
        )

    async def classify_checked(
        self, crops: np.ndarray, source: str, started: float, config: SegmentationConfig
    ) -> tuple[Classified, CropChecks]:
        """Classify crops posted as cells, each checked by the camera's rules
        (:mod:`service.crop_checks`, with ``config``) while the model runs on them, and
        commit the results of those that hold a cell (the others' ids are None).

        The checks run on their own thread, the model on the batcher's: a request
        waits for the slower of the two, not for both one after the other."""
        predicted = self.batcher.submit(crops)  # the batch forms and runs meanwhile
        checks = await asyncio.wrap_future(self.checker.submit(crops, config))
        prediction = await asyncio.wrap_future(predicted)
        qc = [q or {} for q in checks.qc]
        keep = [r is None for r in checks.rejected]
        return await self._commit(prediction, source, started, qc, keep=keep), checks

    async def _commit(
        self,
        prediction: Prediction,
        source: str,
        started: float,
        qc: list[dict[str, Any]] | None = None,
        positions: list[tuple[float, float]] | None = None,
        frame_id: int | None = None,
        keep: list[bool] | None = None,
        stages: Stages | None = None,
        reference_id: str | None = None,
    ) -> Classified:
        """Commit one result row per crop of ``prediction``; with ``keep``, only of the
        crops it marks."""
        pipeline = self.pipelines.of(stages, prediction.manifest) if stages else None
        rows, labels = result_rows(
            prediction,
            source,
            started,
            qc,
            positions,
            frame_id,
            min_confidence=self.min_confidence,
            reference_id=reference_id,
            pipeline_id=pipeline.id if pipeline else None,
        )
        kept = [r for i, r in enumerate(rows) if keep is None or keep[i]]
        stored_ids: list[int] = await asyncio.wrap_future(self.store.add(kept)) if kept else []
        stored = iter(stored_ids)
        ids = [next(stored) if keep is None or keep[i] else None for i in range(len(rows))]
        uncertain = [bool(r.uncertain) for r in rows]
        return Classified(
            prediction.manifest,
            prediction.probabilities,
            ids,
            labels,
            uncertain,
            pipeline.id if pipeline else None,
        )

    def pipeline(self, stages: Stages, model: Manifest | None = None) -> Pipeline | None:
        """The pipeline of ``stages`` with ``model`` (default: the served model; None
        while none is loaded)."""
        if model is None:
            runtime = self.holder.current
            if runtime is None:
                return None
            model = runtime.manifest
        return self.pipelines.of(stages, model)

    # -- the camera loop's side (service.loop.Classifier) ---------------------------

    def submit(self, crops: np.ndarray) -> Future[Prediction]:
        """A camera frame's crops, classified without waiting for company (they are
        a batch already; :meth:`MicroBatcher.submit`)."""
        return self.batcher.submit(crops, wait=False)

    def store_cells(
        self,
        prediction: Prediction,
        frame: GrabbedFrame,
        cells: list[Cell],
        event_ids: list[int] | None = None,
        reference_id: str | None = None,
        pipeline_id: str | None = None,
    ) -> tuple[list[str], Future[list[int]]]:
        rows, labels = result_rows(
            prediction,
            "camera",
            frame.monotonic,
            [dict(c.qc) for c in cells],
            [c.position_px for c in cells],
            frame.index,
            created=frame.grabbed_at,
            event_ids=event_ids,
            min_confidence=self.min_confidence,
            reference_id=reference_id,
            pipeline_id=pipeline_id,
        )
        return labels, self.store.add(rows)

    def new_event_id(self) -> int:
        return self.store.new_event_id()

    def store_event(self, event: EventRow) -> Future[list[int]]:
        """Store ``event``, flagged uncertain by its combined probabilities."""
        flag = is_uncertain(event.probabilities.values(), self.min_confidence)
        return self.store.add_event(dataclasses.replace(event, uncertain=flag))

    def close(self) -> None:
        """Finish the crops' checks, drain the batcher, then commit every queued result."""
        self.checker.close()
        self.batcher.close()
        self.store.close()


def result_rows(
    prediction: Prediction,
    source: str,
    started: float,
    qc: list[dict[str, Any]] | None = None,
    positions: list[tuple[float, float]] | None = None,
    frame_id: int | None = None,
    created: float | None = None,
    event_ids: list[int] | None = None,
    min_confidence: float = 0.0,
    reference_id: str | None = None,
    pipeline_id: str | None = None,
) -> tuple[list[ResultRow], list[str]]:
    """One result row per crop of ``prediction`` (flagged uncertain below
    ``min_confidence``; with the reference and pipeline they came from), and the
    predicted labels."""
    manifest = prediction.manifest
    classes = manifest.classes
    labels = [classes[i] for i in prediction.probabilities.argmax(axis=1)]
    extra = {} if created is None else {"created": created}
    rows = [
        ResultRow(
            source=source,
            label=labels[i],
            probabilities={
                c: float(p) for c, p in zip(classes, prediction.probabilities[i], strict=True)
            },
            model_name=manifest.name,
            model_version=manifest.version,
            qc=qc[i] if qc else {},
            frame_id=frame_id,
            y_px=positions[i][0] if positions else None,
            x_px=positions[i][1] if positions else None,
            started=started,
            event_id=event_ids[i] if event_ids else None,
            uncertain=is_uncertain(prediction.probabilities[i], min_confidence),
            reference_id=reference_id,
            pipeline_id=pipeline_id,
            **extra,
        )
        for i in range(len(prediction.probabilities))
    ]
    return rows, labels


def _show_model(metrics: Metrics, runtime: ModelRuntime) -> None:
    m = runtime.manifest
    metrics.set_model(m.name, m.version, m.method, ",".join(runtime.providers))
    for label in m.classes:  # every class's cell count exists, at 0, before its first cell
        metrics.events.labels(label)


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
