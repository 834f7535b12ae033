"""The camera loop as the service runs it: the runner built from the settings, and
its observers (the live view, the crop archive)."""

from __future__ import annotations

import logging

import numpy as np

from acquisition.backend import cpu_count, get_backend
from acquisition.cameras import Camera
from acquisition.cameras.spec import CameraSpec, build_camera

from .archive import ArchiveWriter, CropArchive
from .classification import Classification, is_uncertain
from .export_rtdc import optics_from_settings
from .live import LiveView
from .loop.events import TrackedFrame
from .loop.runner import AcquisitionRunner, LoopStatus, StoredCells
from .loop.states import RunState
from .loop.workers import WorkerConfig
from .metrics import Metrics
from .pipelines import CameraSettings
from .settings import Settings

logger = logging.getLogger(__name__)


class CameraLoop:
    """The camera loop of the service and what watches it.

    Parameters
    ----------
    runner : the loop
    live : shows every tracked frame (in grab order, with the cells' paths) and every
        stored cell
    archive : archives every stored crop, when configured
    min_confidence : the live view marks cells whose largest probability is below it
        uncertain, as the store flags them
    """

    def __init__(
        self,
        runner: AcquisitionRunner,
        live: LiveView,
        archive: ArchiveWriter | None = None,
        min_confidence: float = 0.0,
    ) -> None:
        self.runner = runner
        self.live = live
        self.archive = archive
        self.min_confidence = min_confidence
        runner.on_tracked.append(self._show_frame)
        runner.on_stored.append(self._show_cells)
        if archive is not None:
            runner.on_stored.append(self._archive_cells)

    @classmethod
    def build(
        cls,
        settings: Settings,
        spec: CameraSpec,
        classification: Classification,
        metrics: Metrics,
        live: LiveView,
    ) -> CameraLoop:
        """The loop the settings describe (not started)."""
        workers = settings.pipeline_workers
        get_backend(settings.array_backend)  # logs the backend the workers will use
        config = WorkerConfig(
            settings.reconstruction_config(),
            settings.segmentation_config(),
            backend=settings.array_backend,
            # Each worker is a process of its own: share the cores rather than oversubscribe.
            fft_workers=max(1, cpu_count() // workers),
            processes=settings.worker_processes,
        )
        logger.info(
            "camera loop: %s, %d %s, queue of %d frames",
            spec.name,
            workers,
            "worker processes" if settings.worker_processes else "worker threads",
            settings.frame_queue,
        )

        def camera_factory() -> tuple[Camera, np.ndarray | None]:
            return build_camera(spec)

        runner = AcquisitionRunner(
            spec.name,
            camera_factory,
            config,
            classification,
            metrics,
            workers=workers,
            queue_size=settings.frame_queue,
            reconnect_max_s=settings.reconnect_max_s,
            trigger=settings.trigger,
            tracking=settings.tracker_config(),
            reference_refresh=settings.refresh_config(),
            camera_settings=CameraSettings.of(spec),
        )
        archive = _archive_writer(settings, classification) if settings.crop_archive else None
        return cls(runner, live, archive, settings.min_confidence)

    # -- control ---------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        return self.runner.state

    @property
    def reference(self) -> np.ndarray | None:
        return self.runner.reference

    def status(self) -> LoopStatus:
        return self.runner.status()

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        """Stop the loop; its crops then all lie in complete archive files (a run of one
        sample is ready for ``topgan dataset import --archive``)."""
        self.runner.stop()
        if self.archive is not None:
            self.archive.complete_file()

    def close(self) -> None:
        """Stop the loop (its queued frames are processed), then close the archive."""
        self.runner.stop()
        if self.archive is not None:
            self.archive.close()

    # -- observers ----------------------------------------------------------------------

    def _show_frame(self, tracked: TrackedFrame) -> None:
        frame, processed = tracked.frame, tracked.processed
        segmentation = processed.segmentations[0]
        maps = processed.maps
        (oy, ox), (sy, sx) = maps.origin_px, maps.scale
        paths = [
            (event_id, [((y - oy) / sy, (x - ox) / sx) for y, x in path])
            for event_id, path in tracked.paths
        ]
        self.live.frame(
            frame.index,
            frame.grabbed_at,
            frame.image,
            processed.maps.opd_nm[0],
            segmentation.labels,
            [c.label for c in segmentation.cells],
            frame.bit_depth,
            "camera",
            paths,
            processed.quality(),
        )

    def _show_cells(self, stored: StoredCells) -> None:
        classes = stored.prediction.manifest.classes
        probabilities = [
            dict(zip(classes, map(float, p), strict=True)) for p in stored.prediction.probabilities
        ]
        self.live.results(
            stored.frame.index,
            stored.crops,
            stored.ids,
            stored.labels,
            probabilities,
            stored.event_ids,
            [c.qc for c in stored.cells],
            [is_uncertain(p, self.min_confidence) for p in stored.prediction.probabilities],
        )

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
            event_ids=stored.event_ids,
            positions_px=[c.position_px for c in stored.cells],
        )


def _archive_writer(settings: Settings, classification: Classification) -> ArchiveWriter:
    folder = settings.crop_archive
    assert folder is not None

    def make() -> CropArchive:
        runtime = classification.runtime
        return CropArchive(
            folder,
            max_bytes=settings.crop_archive_max_bytes,
            file_crops=settings.crop_archive_file_crops,
            pixel_size_um=classification.crop_geometry().pixel_size_um,
            wavelength_nm=settings.wavelength_nm,
            class_names=runtime.manifest.classes if runtime else [],
            file_format=settings.crop_archive_format,
            optics=optics_from_settings(settings),
        )

    logger.info(
        "archiving every crop in %s (%s files, at most %d bytes)",
        folder,
        settings.crop_archive_format,
        settings.crop_archive_max_bytes,
    )
    return ArchiveWriter(make)
