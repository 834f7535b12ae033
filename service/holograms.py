"""Holograms posted to the API: the same frame processor, reference and crop
geometry as the camera loop."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

import numpy as np

from acquisition.backend import get_backend
from acquisition.frames import CropGeometry, FrameProcessor, ProcessedFrames
from acquisition.io import read_hologram
from acquisition.reconstruction import ReconstructionConfig

from .camera import CameraLoop
from .live import LiveView, bit_depth_of
from .loop.reference import reference_id
from .metrics import Metrics
from .pipelines import Stages
from .settings import Settings

#: Processors kept for optics a request asked for (the oldest goes beyond).
MAX_REQUEST_OPTICS = 8


@dataclass(frozen=True)
class PostedHologram:
    """One posted hologram after reconstruction and segmentation: its live frame id,
    what was found, the processor that found it, the id of the reference it was
    reconstructed against (None: none) and the stages of its pipeline."""

    frame_id: int
    processed: ProcessedFrames
    processor: FrameProcessor
    reference_id: str | None
    stages: Stages


class HologramPath:
    """Reconstructs and segments one posted hologram at a time.

    The reference is the camera loop's (its source's, or the configured one) while
    the loop has one, else the configured ``reference`` setting: a hologram posted
    under ``make serve`` is reconstructed exactly as the camera's frames are. A
    hologram of another shape than the reference (another instrument's) is
    reconstructed without it, with a fitted background. A request may bring optics
    of its own (another instrument's hologram): it is reconstructed with them and
    without a reference.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        live: LiveView,
        camera: CameraLoop | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.live = live
        self.camera = camera
        self._processor: FrameProcessor | None = None
        self._unreferenced: FrameProcessor | None = None
        self._reference: np.ndarray | None = None
        self._reference_id: str | None = None
        self._by_optics: collections.OrderedDict[ReconstructionConfig, FrameProcessor] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def _configured_reference(self) -> np.ndarray | None:
        path = self.settings.reference
        return read_hologram(path).frames[0] if path else None

    def _new_processor(
        self, reference: np.ndarray | None, optics: ReconstructionConfig | None = None
    ) -> FrameProcessor:
        s = self.settings
        return FrameProcessor(
            optics or s.reconstruction_config(),
            s.segmentation_config(),
            get_backend(s.array_backend),
            reference,
        )

    def optics_processor(self, optics: ReconstructionConfig) -> FrameProcessor:
        """The frame processor for a request's own ``optics`` (no reference)."""
        with self._lock:
            processor = self._by_optics.pop(optics, None) or self._new_processor(None, optics)
            self._by_optics[optics] = processor
            while len(self._by_optics) > MAX_REQUEST_OPTICS:
                self._by_optics.popitem(last=False)
            return processor

    def processor(self, shape: tuple[int, int]) -> tuple[FrameProcessor, str | None]:
        """The frame processor for a hologram of ``shape``, with the reference in
        force now when it has that shape, and that reference's id (None: none)."""
        with self._lock:
            if self._processor is None:
                self._reference = self._configured_reference()
                self._reference_id = reference_id(self._reference)
                self._processor = self._new_processor(self._reference)
            loop_reference = self.camera.reference if self.camera is not None else None
            if loop_reference is not None and loop_reference is not self._reference:
                self._processor.set_reference(loop_reference)
                self._reference = loop_reference
                self._reference_id = reference_id(loop_reference)
            if self._reference is None or self._reference.shape == shape:
                return self._processor, self._reference_id
            if self._unreferenced is None:
                self._unreferenced = self._new_processor(None)
            return self._unreferenced, None

    def process(
        self,
        raw: np.ndarray,
        hologram: np.ndarray,
        crop: CropGeometry,
        optics: ReconstructionConfig | None = None,
    ) -> PostedHologram:
        """Reconstruct and segment ``hologram`` : (H, W) (with the request's ``optics``
        when given, else the service's), time the stages and show it in the live view
        (``raw``: the counts as posted). Raises ``ValueError`` when the hologram
        cannot be reconstructed."""
        frame_id, grabbed_at = self.live.api_frame_id(), time.time()
        if optics is not None:
            processor, used = self.optics_processor(optics), None
        else:
            processor, used = self.processor(hologram.shape)
        processed = processor.process(hologram, crop)
        self.metrics.stage_seconds.labels("reconstruct").observe(processed.reconstruct_s)
        self.metrics.stage_seconds.labels("segment").observe(processed.segment_s)
        segmentation = processed.segmentations[0]
        counts = raw if raw.dtype.kind == "u" else hologram  # as the camera gave them
        self.live.frame(
            frame_id,
            grabbed_at,
            counts,
            processed.maps.opd_nm[0],
            segmentation.labels,
            [c.label for c in segmentation.cells],
            bit_depth_of(raw),
            "api",
            quality=processed.quality(),
        )
        stages = Stages(processor.reconstruction, processor.segmentation)
        return PostedHologram(frame_id, processed, processor, used, stages)
