"""POST /classify and POST /classify/hologram."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from acquisition.frames import CropGeometry
from acquisition.reconstruction import ReconstructionConfig
from models.runtime import ModelNotLoadedError

from ..holograms import PostedHologram
from .deps import ApiKey, ClassificationDep, HologramsDep, LiveDep, SettingsDep
from .payloads import JSON, NPY, TIFF, check_numbers, crops_from, media_type, parse_array, read_body
from .schemas import (
    CellResult,
    ClassifyResponse,
    ErrorResponse,
    HologramClassifyResponse,
    ModelSummary,
    Optics,
)

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
    qc: list[dict[str, Any] | None] | None = None,
    positions: list[tuple[float, float]] | None = None,
    rejected: dict[str, int] | None = None,
    optics: Optics | None = None,
    reasons: list[str | None] | None = None,
    reference_id: str | None = None,
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
            qc=_plain_qc(qc[i] or {}) if qc else {},
            rejected=reasons[i] if reasons else None,
            position_px=list(positions[i]) if positions else None,
            uncertain=result.uncertain[i],
        )
        for i in range(len(result.ids))
    ]
    model = ModelSummary(**m.summary())
    body = (
        ClassifyResponse(model=model, cells=cells)
        if rejected is None
        else HologramClassifyResponse(
            model=model,
            cells=cells,
            rejected=rejected,
            optics=optics,
            reference_id=reference_id,
            pipeline_id=result.pipeline_id,
        )
    )
    return Response(body.model_dump_json(), media_type="application/json")


def _plain_qc(qc: dict[str, Any]) -> dict[str, Any]:
    """QC values as JSON takes them: NaN (not measured) as null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in qc.items()}


def _crop_geometry(classification: ClassificationDep) -> CropGeometry:
    if classification.runtime is None:
        raise HTTPException(503, NO_MODEL)
    return classification.crop_geometry()


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERRORS,
    openapi_extra=CROPS_BODY,
    dependencies=[ApiKey],
    summary="Classify OPD crops",
)
async def classify(
    request: Request,
    classification: ClassificationDep,
    settings: SettingsDep,
    qc: Annotated[
        bool,
        Query(
            description="check each crop as the camera's cells are checked (default); "
            "false: every crop is taken as a cell"
        ),
    ] = True,
) -> Response:
    """Classify single-cell OPD crops (nm): a .npy or TIFF of shape (128, 128) or
    (N, 128, 128), or JSON ``{"opd": nested lists}``. Each crop is segmented by the
    camera's rules (its ``qc``) while the model classifies it; one that holds no cell
    (``rejected``: empty, too small, cut by the crop's edge, ...) is classified but
    neither stored nor counted. Every other result is stored."""
    started = time.monotonic()
    kind = media_type(request, (NPY, TIFF, JSON))
    body = await read_body(request, settings.max_body_bytes)
    crop = _crop_geometry(classification)
    crops = crops_from(parse_array(body, kind), crop.shape, settings.max_crops_per_request)
    try:
        if not qc:
            return _response(await classification.classify(crops, "api", started))
        config = settings.segmentation_config().for_crop(crop.size_px, crop.pixel_size_um)
        result, checks = await classification.classify_checked(crops, "api", started, config)
    except ModelNotLoadedError:
        raise HTTPException(503, NO_MODEL) from None
    return _response(result, checks.qc, reasons=checks.rejected)


@router.post(
    "/classify/hologram",
    response_model=HologramClassifyResponse,
    responses=ERRORS,
    openapi_extra=HOLOGRAM_BODY,
    dependencies=[ApiKey],
    summary="Classify every cell in a raw hologram",
)
async def classify_hologram(
    request: Request,
    classification: ClassificationDep,
    holograms: HologramsDep,
    live: LiveDep,
    settings: SettingsDep,
    sample_half: Annotated[
        Literal["left", "right", "top", "bottom", "full"] | None,
        Query(description="the part of the frame that holds the cells (default: the service's)"),
    ] = None,
    pixel_size_um: Annotated[
        float | None, Query(gt=0, le=100, description="camera pixel in the sample plane, um")
    ] = None,
    wavelength_nm: Annotated[
        float | None, Query(gt=0, le=10000, description="illumination wavelength, nm")
    ] = None,
    carrier: Annotated[
        str | None,
        Query(description="ky,kx of the +1 sideband in cycles per pixel (default: found)"),
    ] = None,
) -> Response:
    """Reconstruct one raw off-axis hologram (.npy or TIFF, 2-D), segment its cells and
    classify each; cells carry their position in hologram pixels and their QC,
    ``optics`` says how it was reconstructed and ``rejected`` counts the objects that
    were not classified, by reason. A hologram of another instrument may bring its
    optics as query parameters (then no reference hologram is subtracted)."""
    started = time.monotonic()
    optics = _request_optics(settings, sample_half, pixel_size_um, wavelength_nm, carrier)
    kind = media_type(request, (NPY, TIFF))
    body = await read_body(request, settings.max_body_bytes)
    crop = _crop_geometry(classification)
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
    try:
        posted = await run_in_threadpool(holograms.process, raw, hologram, crop, optics)
    except ValueError as exc:  # HologramError and friends: the hologram is at fault
        raise HTTPException(422, " ".join(str(exc).split())) from None
    processed = posted.processed
    cells = processed.cells
    rejected = dict(processed.segmentations[0].rejected)
    used = _optics_used(posted)
    if not cells:
        runtime = classification.runtime
        if runtime is None:
            raise HTTPException(503, NO_MODEL)
        pipeline = classification.pipeline(posted.stages, runtime.manifest)
        empty = HologramClassifyResponse(
            model=ModelSummary(**runtime.manifest.summary()),
            cells=[],
            rejected=rejected,
            optics=used,
            reference_id=posted.reference_id,
            pipeline_id=pipeline.id if pipeline else None,
        )
        return Response(empty.model_dump_json(), media_type="application/json")
    crops = processed.crops()
    qc = [dict(c.qc) for c in cells]
    positions = [c.position_px for c in cells]
    try:
        result = await classification.classify(
            crops,
            "api",
            started,
            qc=qc,
            positions=positions,
            stages=posted.stages,
            reference_id=posted.reference_id,
        )
    except ModelNotLoadedError:
        raise HTTPException(503, NO_MODEL) from None
    classes = result.manifest.classes
    probabilities = [dict(zip(classes, p.tolist(), strict=True)) for p in result.probabilities]
    ids = [i for i in result.ids if i is not None]  # every cell of a hologram is stored
    live.results(
        posted.frame_id, crops, ids, result.labels, probabilities, qc=qc, uncertain=result.uncertain
    )
    return _response(result, list(qc), positions, rejected, used, reference_id=posted.reference_id)


def _request_optics(
    settings: SettingsDep,
    sample_half: str | None,
    pixel_size_um: float | None,
    wavelength_nm: float | None,
    carrier: str | None,
) -> ReconstructionConfig | None:
    """The optics a request asked for (the service's for what it left out), or None."""
    if sample_half is None and pixel_size_um is None and wavelength_nm is None and not carrier:
        return None
    base = settings.reconstruction_config()
    sideband = base.carrier
    if carrier:
        try:
            ky, kx = (float(v) for v in carrier.split(","))
        except ValueError:
            raise HTTPException(
                422, f"carrier must be ky,kx in cycles per pixel, got {carrier!r}"
            ) from None
        if not (abs(ky) < 0.5 and abs(kx) < 0.5 and (ky or kx)):
            raise HTTPException(
                422, f"carrier ky,kx must lie within (-0.5, 0.5) and not be 0,0, got {carrier!r}"
            )
        sideband = (ky, kx)
    try:
        return dataclasses.replace(
            base,
            wavelength_nm=wavelength_nm or base.wavelength_nm,
            pixel_size_um=pixel_size_um or base.pixel_size_um,
            carrier=sideband,
            sample_half=sample_half or base.sample_half,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _optics_used(posted: PostedHologram) -> Optics:
    config = posted.processor.reconstruction
    return Optics(
        sample_half=config.sample_half,
        pixel_size_um=config.pixel_size_um,
        wavelength_nm=config.wavelength_nm,
        carrier=[float(v) for v in posted.processed.maps.carrier],
        reference=posted.processor.reconstructor.has_reference,
    )
