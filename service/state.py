"""What the running service holds: settings, the model, the batcher, the store, metrics.

Classification is one path for every caller: crops -> the shared micro-batcher ->
the results store; a result is returned only once it is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.cameras import GrabbedFrame
from acquisition.reconstruction import Reconstructor
from acquisition.segmentation import Cell, Segmenter
from models.manifest import Manifest, ModelError
from models.runtime import MicroBatcher, ModelHolder, Prediction

from .archive import ArchiveWriter, CropArchive
from .live import LiveView
from .metrics import Metrics
from .pipeline import AcquisitionRunner, FrameResult, StoredCells
from .settings import Settings
from .store import ResultRow, ResultStore

logger = logging.getLogger(__name__)


@dataclass
class Classified:
    manifest: Manifest
    probabilities: np.ndarray
    ids: list[int]
    labels: list[str]


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    holder: ModelHolder
    batcher: MicroBatcher
    store: ResultStore
    started: float = field(default_factory=time.time)
    live: LiveView = field(default_factory=LiveView)
    runner: AcquisitionRunner | None = None
    archive: ArchiveWriter | None = None
    _reconstructor: Reconstructor | None = None

    @classmethod
    def start(cls, settings: Settings) -> ServiceState:
        metrics = Metrics()
        metrics.camera_enabled.set(settings.camera != "none")
        holder = ModelHolder(settings.execution_provider, settings.inference_threads)
        if settings.model_dir is not None:
            try:
                runtime = holder.load(settings.model_dir)
                metrics.set_model(
                    runtime.manifest.name,
                    runtime.manifest.version,
                    runtime.manifest.method,
                    ",".join(runtime.providers),
                )
            except ModelError as exc:
                logger.error("no model loaded: %s", exc)
        else:
            logger.warning(
                "no model directory configured: /classify answers 503 until one is loaded"
            )

        def on_batch(n: int, seconds: float) -> None:
            metrics.batch_size.observe(n)
            metrics.stage_seconds.labels("classify").observe(seconds)

        batcher = MicroBatcher(holder, settings.batch_size, settings.batch_wait_ms / 1000, on_batch)
        store = ResultStore(settings.database_url)

        def on_commit(rows: list[ResultRow], seconds: float, done: float) -> None:
            metrics.stage_seconds.labels("store").observe(seconds)
            for row in rows:
                metrics.cells.labels(row.label, row.source).inc()
                if row.started is not None:
                    metrics.cell_latency.labels(row.source).observe(done - row.started)

        store.on_commit = on_commit
        logger.info("results stored in %s", _safe_url(settings.database_url))
        state = cls(settings, metrics, holder, batcher, store)
        if settings.camera != "none":
            from .acquisition import build_runner

            state.runner = build_runner(state)
            state.runner.on_frame.append(state._show_frame)
            state.runner.on_stored.append(state._show_cells)
            if settings.crop_archive is not None:
                state.archive = state._archive_writer()
                state.runner.on_stored.append(state._archive_cells)
            state.runner.start()
        return state

    # -- observers of the camera loop ------------------------------------------------

    def _show_frame(self, result: FrameResult) -> None:
        frame = result.frame
        self.live.frame(
            frame.index,
            frame.grabbed_at,
            frame.image,
            result.maps.opd_nm[0],
            result.segmentation.labels,
            [c.label for c in result.segmentation.cells],
            frame.bit_depth,
            "camera",
        )

    def _show_cells(self, stored: StoredCells) -> None:
        classes = stored.prediction.manifest.classes
        probabilities = [
            dict(zip(classes, map(float, p), strict=True)) for p in stored.prediction.probabilities
        ]
        self.live.results(
            stored.frame.index, stored.crops, stored.ids, stored.labels, probabilities
        )

    def _archive_writer(self) -> ArchiveWriter:
        s = self.settings
        folder = s.crop_archive
        assert folder is not None

        def make() -> CropArchive:
            geometry = self.crop_geometry()
            runtime = self.holder.current
            return CropArchive(
                folder,
                max_bytes=s.crop_archive_max_bytes,
                file_crops=s.crop_archive_file_crops,
                pixel_size_um=geometry[1],
                wavelength_nm=s.wavelength_nm,
                class_names=runtime.manifest.classes if runtime else [],
            )

        logger.info(
            "archiving every crop in %s (at most %d bytes)",
            s.crop_archive,
            s.crop_archive_max_bytes,
        )
        return ArchiveWriter(make)

    def _archive_cells(self, stored: StoredCells) -> None:
        assert self.archive is not None
        manifest = stored.prediction.manifest
        self.archive.submit(
            stored.crops,
            stored.ids,
            stored.labels,
            stored.prediction.probabilities,
            [c.qc for c in stored.cells],
            stored.frame.index,
            stored.frame.grabbed_at,
            manifest.name,
            manifest.version,
            class_names=manifest.classes,
        )

    def close(self) -> None:
        """Stop the camera loop (its queued frames are processed), drain the batcher,
        then commit every queued result."""
        if self.runner is not None:
            self.runner.stop()
        if self.archive is not None:
            self.archive.close()
        self.batcher.close()
        self.store.close()

    def reload_model(self, directory: Path) -> Manifest:
        runtime = self.holder.load(directory)
        m = runtime.manifest
        self.metrics.set_model(m.name, m.version, m.method, ",".join(runtime.providers))
        return m

    # -- classification -------------------------------------------------------------

    async def classify(
        self,
        crops: np.ndarray,
        source: str,
        started: float,
        qc: list[dict[str, Any]] | None = None,
        positions: list[tuple[float, float]] | None = None,
        frame_id: int | None = None,
    ) -> Classified:
        prediction = await asyncio.wrap_future(self.batcher.submit(crops))
        rows, labels = self.rows(prediction, source, started, qc, positions, frame_id)
        ids = await asyncio.wrap_future(self.store.add(rows))
        return Classified(prediction.manifest, prediction.probabilities, ids, labels)

    @staticmethod
    def rows(
        prediction: Prediction,
        source: str,
        started: float,
        qc: list[dict[str, Any]] | None = None,
        positions: list[tuple[float, float]] | None = None,
        frame_id: int | None = None,
        created: float | None = None,
    ) -> tuple[list[ResultRow], list[str]]:
        """One result row per crop of ``prediction``, and the predicted labels."""
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
                **extra,
            )
            for i in range(len(prediction.probabilities))
        ]
        return rows, labels

    # -- the camera loop's side (service.pipeline.Classifier) -------------------------

    def crop_geometry(self) -> tuple[tuple[int, int], float]:
        """(crop shape, crop pixel size in um) of the model being served."""
        runtime = self.holder.current
        if runtime is None:
            size = 128
            return (size, size), self.settings.crop_pixel_size_um
        return runtime.crop_shape, runtime.manifest.pixel_size_um

    def submit(self, crops: np.ndarray) -> Future[Prediction]:
        return self.batcher.submit(crops)

    def store_cells(
        self, prediction: Prediction, frame: GrabbedFrame, cells: list[Cell]
    ) -> tuple[list[str], Future[list[int]]]:
        rows, labels = self.rows(
            prediction,
            "camera",
            frame.monotonic,
            [dict(c.qc) for c in cells],
            [c.position_px for c in cells],
            frame.index,
            created=frame.grabbed_at,
        )
        return labels, self.store.add(rows)

    # -- holograms ------------------------------------------------------------------

    @property
    def reconstructor(self) -> Reconstructor:
        if self._reconstructor is None:
            from acquisition.backend import get_backend
            from acquisition.io import read_hologram

            s = self.settings
            config = s.reconstruction_config()
            reference = read_hologram(s.reference).frames[0] if s.reference else None
            self._reconstructor = Reconstructor(config, get_backend(s.array_backend), reference)
        return self._reconstructor

    def segmenter(self, crop_shape: tuple[int, int], pixel_size_um: float) -> Segmenter:
        return Segmenter(self.settings.segmentation_config(crop_shape[0], pixel_size_um))


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
