"""Pipeline ids: which configuration every stored result ran with (docs/design.md,
"Data flow and threads", "Provenance").

A pipeline is everything besides the hologram and its reference that decides what a
result says: the reconstruction and segmentation settings (the segmentation with the
served model's crop geometry, as the frames are cut), the camera settings that shape
the frames (:class:`CameraSettings`), the tracking that gathers views into events,
the ``min_confidence`` of the uncertain flag and the model (its ``onnx_sha256`` and
the manifest's ``input``: the normalisation applied outside the graph). Its
:func:`describe` is a JSON object; its id is the first 16 hex digits of the SHA-256
of that object's :func:`canonical_json`, so equal configurations share an id across
restarts and services. Every pipeline that stored a result is kept in the store's
``pipelines`` table (``GET /pipelines/{id}`` reads it back).

Left out, because they do not change a result: the array backend (NumPy and CuPy
agree within float precision), the worker count, queue and driver buffers, the
camera's serial, timeouts and where a replay or the emulator reads its frames (the
reference id and the data say which), and the reference refresh's thresholds (each
result records the reference it was reconstructed against).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from acquisition.cameras.spec import CameraSpec
from acquisition.reconstruction import ReconstructionConfig
from acquisition.segmentation import SegmentationConfig
from acquisition.tracking import TrackerConfig
from models.manifest import Manifest

from .store import PipelineRow, ResultStore

logger = logging.getLogger(__name__)

#: Pipelines remembered per process (a request's own optics make new ones); one
#: forgotten is only registered again (a no-op for the store).
MAX_CACHED = 64


@dataclass(frozen=True)
class CameraSettings:
    """The camera settings that shape the frames: the kind of source, the pixel
    format (bit depth of the counts), the ROI (the field and the frame's shape), the
    exposure (fringe contrast, motion blur), and the frame rate and trigger (how
    often a cell is seen: its event's views and speed). As configured: a replay
    plays frames recorded with whatever the recording had."""

    kind: str
    pixel_format: str
    roi: tuple[int, int, int, int] | None
    exposure_us: float
    frame_rate_hz: float | None
    trigger: str

    @classmethod
    def of(cls, spec: CameraSpec) -> CameraSettings:
        c = spec.config
        return cls(spec.kind, c.pixel_format, c.roi, c.exposure_us, c.frame_rate_hz, c.trigger)


@dataclass(frozen=True)
class Stages:
    """A pipeline without its model: how frames are reconstructed and segmented, and,
    for the camera loop, its camera settings and tracking (None for a posted
    hologram, and for tracking off)."""

    reconstruction: ReconstructionConfig
    segmentation: SegmentationConfig
    camera: CameraSettings | None = None
    tracking: TrackerConfig | None = None


@dataclass(frozen=True)
class Pipeline:
    id: str
    description: dict[str, Any]


def describe(stages: Stages, model: Manifest, min_confidence: float) -> dict[str, Any]:
    """The pipeline of ``stages`` with ``model``, as the JSON object its id hashes."""
    height, width = model.input_shape[1:]
    if height != width:
        raise ValueError(f"the model's crops must be square, got {height}x{width}")
    segmentation = stages.segmentation.for_crop(height, model.pixel_size_um)

    def plain(config: Any) -> Any:
        return None if config is None else dataclasses.asdict(config)

    return {
        "reconstruction": plain(stages.reconstruction),
        "segmentation": plain(segmentation),
        "camera": plain(stages.camera),
        "tracking": plain(stages.tracking),
        "min_confidence": min_confidence,
        "model": {
            "name": model.name,
            "version": model.version,
            "method": model.method,
            "onnx_sha256": model.onnx_sha256,
            "input": model.to_dict()["input"],
        },
    }


def canonical_json(description: dict[str, Any]) -> str:
    """The one serialisation a pipeline's id is taken of: keys sorted, no spaces."""
    return json.dumps(description, sort_keys=True, separators=(",", ":"), allow_nan=False)


def pipeline_id(description: dict[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of ``description``'s canonical JSON."""
    return hashlib.sha256(canonical_json(description).encode()).hexdigest()[:16]


class Pipelines:
    """The pipelines of one service: each computed once per configuration (stages and
    model object), and queued for the store's ``pipelines`` table ahead of the
    results that name it (the store's single writer commits them in order).

    Parameters
    ----------
    store : where the pipelines are kept
    min_confidence : the service's uncertain threshold (part of every pipeline)
    """

    def __init__(self, store: ResultStore, min_confidence: float) -> None:
        self.store = store
        self.min_confidence = min_confidence
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[int, Stages], tuple[Manifest, Pipeline]] = (
            collections.OrderedDict()
        )

    def of(self, stages: Stages, model: Manifest) -> Pipeline:
        """The pipeline of ``stages`` with ``model`` (registered with its first use)."""
        key = (id(model), stages)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] is model:
                self._cache.move_to_end(key)
                return cached[1]
        description = describe(stages, model, self.min_confidence)
        pipeline = Pipeline(pipeline_id(description), description)
        with self._lock:
            if key in self._cache and self._cache[key][0] is model:
                return self._cache[key][1]  # another thread registered it meanwhile
            self._cache[key] = (model, pipeline)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        future = self.store.add_pipeline(PipelineRow(pipeline.id, canonical_json(description)))
        future.add_done_callback(lambda f: self._registered(f, key, pipeline))
        return pipeline

    def _registered(self, future: Future[list[int]], key: tuple[int, Stages], p: Pipeline) -> None:
        if future.exception() is None:
            logger.info("pipeline %s: %s", p.id, canonical_json(p.description))
            return
        with self._lock:  # not stored: the next use registers it again
            if key in self._cache and self._cache[key][1] is p:
                del self._cache[key]
        logger.error("pipeline %s could not be stored: %s", p.id, future.exception())
