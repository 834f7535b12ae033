"""POST /classify and POST /classify/hologram."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from models.runtime import ModelNotLoadedError

from ..live import bit_depth_of
from .deps import ApiKey, State
from .payloads import JSON, NPY, TIFF, check_numbers, crops_from, media_type, parse_array, read_body
from .schemas import CellResult, ClassifyResponse, ErrorResponse, ModelSummary

router = APIRouter(tags=["classify"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "missing or wrong X-API-Key"),
        (413, "body or crop count too large"),
        (415, "unsupported media type"),
        (422, "wrong shape, dtype, NaN or Inf, or an unreadable body"),
        (503, "no model is loaded"),
    )
}
BINARY = {"schema": {"type": "string", "format": "binary"}}
CROPS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            NPY: BINARY,
            TIFF: BINARY,
            JSON: {
                "schema": {
                    "type": "object",
                    "required": ["opd"],
                    "properties": {
                        "opd": {
                            "description": "OPD in nm: (128, 128) or (N, 128, 128) nested lists",
                            "type": "array",
                            "items": {},
                        }
                    },
                }
            },
        },
    }
}
HOLOGRAM_BODY = {"requestBody": {"required": True, "content": {NPY: BINARY, TIFF: BINARY}}}
MAX_HOLOGRAM_SIDE = 4096
NO_MODEL = "no model is loaded: POST /model/reload with a model directory"


def _response(
    result: Any,
    qc: list[dict[str, Any]] | None = None,
    positions: list[tuple[float, float]] | None = None,
) -> Response:
    """The answer, serialised once by pydantic (it is a ClassifyResponse by construction)."""
    m = result.manifest
    cells = [
        CellResult(
            index=i,
            id=result.ids[i],
            label=result.labels[i],
            probabilities={
                c: float(p) for c, p in zip(m.classes, result.probabilities[i], strict=True)
            },
            qc=qc[i] if qc else {},
            position_px=list(positions[i]) if positions else None,
        )
        for i in range(len(result.ids))
    ]
    body = ClassifyResponse(model=ModelSummary(**m.summary()), cells=cells)
    return Response(body.model_dump_json(), media_type="application/json")


def _model_shape(state: State) -> tuple[tuple[int, int], float]:
    runtime = state.holder.current
    if runtime is None:
        raise HTTPException(503, NO_MODEL)
    return runtime.crop_shape, runtime.manifest.pixel_size_um


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERRORS,
    openapi_extra=CROPS_BODY,
    dependencies=[ApiKey],
    summary="Classify OPD crops",
)
async def classify(request: Request, state: State) -> Response:
    """Classify single-cell OPD crops (nm): a .npy or TIFF of shape (128, 128) or
    (N, 128, 128), or JSON ``{"opd": nested lists}``. Every result is stored."""
    started = time.monotonic()
    kind = media_type(request, (NPY, TIFF, JSON))
    body = await read_body(request, state.settings.max_body_bytes)
    shape, _ = _model_shape(state)
    crops = crops_from(parse_array(body, kind), shape, state.settings.max_crops_per_request)
    try:
        result = await state.classify(crops, "api", started)
    except ModelNotLoadedError:
        raise HTTPException(503, NO_MODEL) from None
    return _response(result)


@router.post(
    "/classify/hologram",
    response_model=ClassifyResponse,
    responses=ERRORS,
    openapi_extra=HOLOGRAM_BODY,
    dependencies=[ApiKey],
    summary="Classify every cell in a raw hologram",
)
async def classify_hologram(request: Request, state: State) -> Response:
    """Reconstruct one raw off-axis hologram (.npy or TIFF, 2-D), segment its cells and
    classify each; cells carry their position in hologram pixels and their QC."""
    started = time.monotonic()
    kind = media_type(request, (NPY, TIFF))
    body = await read_body(request, state.settings.max_body_bytes)
    shape, pixel_size = _model_shape(state)
    raw = parse_array(body, kind)
    hologram = check_numbers(raw, "hologram")
    if hologram.ndim != 2:
        raise HTTPException(
            422, f"a hologram must be 2-D (H, W), got shape {tuple(hologram.shape)}"
        )
    if max(hologram.shape) > MAX_HOLOGRAM_SIDE:
        raise HTTPException(
            413, f"hologram {hologram.shape} exceeds {MAX_HOLOGRAM_SIDE} pixels a side"
        )

    frame_id, grabbed_at = state.live.api_frame_id(), time.time()

    def reconstruct_and_segment() -> tuple[
        np.ndarray, list[dict[str, Any]], list[tuple[float, float]]
    ]:
        t0 = time.perf_counter()
        maps = state.reconstructor.reconstruct(hologram)
        t1 = time.perf_counter()
        segmentation = state.segmenter(shape, pixel_size).segment(maps)[0]
        cells = segmentation.cells
        state.metrics.stage_seconds.labels("reconstruct").observe(t1 - t0)
        state.metrics.stage_seconds.labels("segment").observe(time.perf_counter() - t1)
        counts = raw if raw.dtype.kind == "u" else hologram  # as the camera gave them
        accepted = [c.label for c in cells]
        opd_nm, labels = maps.opd_nm[0], segmentation.labels
        state.live.frame(
            frame_id, grabbed_at, counts, opd_nm, labels, accepted, bit_depth_of(raw), "api"
        )
        crops = np.stack([c.crop_nm for c in cells]) if cells else np.zeros((0, *shape), np.float32)
        return crops, [dict(c.qc) for c in cells], [c.position_px for c in cells]

    try:
        crops, qc, positions = await run_in_threadpool(reconstruct_and_segment)
    except ValueError as exc:  # HologramError and friends: the hologram is at fault
        raise HTTPException(422, " ".join(str(exc).split())) from None
    if len(crops) == 0:
        runtime = state.holder.current
        assert runtime is not None
        empty = ClassifyResponse(model=ModelSummary(**runtime.manifest.summary()), cells=[])
        return Response(empty.model_dump_json(), media_type="application/json")
    try:
        result = await state.classify(crops, "api", started, qc=qc, positions=positions)
    except ModelNotLoadedError:
        raise HTTPException(503, NO_MODEL) from None
    classes = result.manifest.classes
    probabilities = [dict(zip(classes, p.tolist(), strict=True)) for p in result.probabilities]
    state.live.results(frame_id, crops, result.ids, result.labels, probabilities)
    return _response(result, qc, positions)
