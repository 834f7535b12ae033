"""The operator's live page and what it polls: GET /, /live/state and the live images."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from .deps import HistoryDep, LiveDep, SettingsDep
from .schemas import ErrorResponse

router = APIRouter(tags=["live"])

NO_FRAME = "no frame yet: the live view fills once the camera loop or POST /classify/hologram "
NO_FRAME += "has processed a hologram"


class PNGResponse(Response):
    media_type = "image/png"


class LiveTrack(BaseModel):
    event_id: int | None = Field(
        description="the cell's event (GET /events); null while it has not been classified"
    )
    path: list[list[float]] = Field(
        description="its recent positions, oldest first, as (x, y) fractions of the OPD image"
    )


class LiveFrame(BaseModel):
    frame_id: int = Field(description="camera frame number; negative for holograms posted")
    grabbed_at: float = Field(description="Unix time of the grab, seconds")
    age_s: float = Field(description="seconds since the live view received the frame")
    shape: list[int] = Field(description="(H, W) of the hologram, camera pixels")
    opd_shape: list[int] = Field(description="(h, w) of the OPD map of the sample region")
    source: str = Field(description="camera or api")
    bit_depth: int = Field(description="bits of the camera's counts; 0 for float holograms")
    accepted: int = Field(description="cells kept by segmentation (outlined in colours.accepted)")
    rejected: int = Field(description="other objects found (outlined in colours.rejected)")
    opd_range_nm: list[float] = Field(description="OPD at the colour map's two ends, nm")
    quality: dict[str, float | None] = Field(
        default_factory=dict,
        description="the frame's hologram quality: background_opd_nm (spread over its "
        "cell-free pixels; a fresh reference leaves 1-3 nm), fringe_contrast (0 to 1), "
        "carrier_drift_cycles_per_px (from the reference's), unwrap_residues",
    )
    tracks: list[LiveTrack] = Field(
        default_factory=list, description="the cells followed across frames, in view now"
    )


class LiveCrop(BaseModel):
    result_id: int = Field(description="the stored result's id; image at /live/crops/{id}.png")
    frame_id: int
    label: str
    probabilities: dict[str, float]
    peak_opd_nm: float = Field(
        description="the crop's peak OPD, nm; its image spans 0 nm to this unless the scale "
        "is fixed (crop_opd_range_nm)"
    )
    event_id: int | None = Field(None, description="the cell this view is of (camera crops)")
    uncertain: bool | None = Field(
        None,
        description="its largest probability is below TOPGAN_MIN_CONFIDENCE (null: not judged)",
    )
    qc: dict[str, float | bool | None] = Field(
        default_factory=dict,
        description="the cell's QC features (area_um2, dry_mass_pg, mean_opd_nm, peak_opd_nm, "
        "circularity, solidity, amplitude_std, clipped, touching, out_of_focus); null: not "
        "measurable",
    )


class LiveColours(BaseModel):
    accepted: str = Field(description="outline of accepted cells, CSS colour")
    rejected: str = Field(description="outline of rejected objects, CSS colour")
    opd: list[str] = Field(description="the OPD colour map, low to high, CSS colours")


class LiveState(BaseModel):
    instance: str = Field(description="changes when the service restarts")
    sequence: int = Field(description="the displayed frame; refetch the images when it changes")
    frames_received: int
    frame_rate_hz: float = Field(description="frames received per second, last 2 s")
    frame: LiveFrame | None = Field(description="the displayed frame; null before any")
    crops_sequence: int = Field(description="changes when new crops arrive")
    crops: list[LiveCrop] = Field(description="the latest classified cells, newest first")
    opd_scale: Literal["fixed", "auto"] = Field(
        description="fixed: every map and crop image spans the same OPD range "
        "(TOPGAN_LIVE_OPD_RANGE_NM); auto: each image its own"
    )
    crop_opd_range_nm: list[float] | None = Field(
        description="the crop images' OPD range, nm, when the scale is fixed"
    )
    colours: LiveColours


class LiveThresholds(BaseModel):
    background_opd_nm: float = Field(
        description="background spread above which the reference is stale (TOPGAN_QUALITY_"
        "BACKGROUND_MAX_NM; alert TopganBackgroundDrift)"
    )
    fringe_contrast: float = Field(
        description="fringe contrast below which alignment is lost (TOPGAN_QUALITY_FRINGE_"
        "CONTRAST_MIN; alert TopganFringeContrastLow)"
    )
    carrier_drift_cycles_per_px: float = Field(
        description="carrier drift above which the module is misaligned (TOPGAN_QUALITY_"
        "CARRIER_DRIFT_MAX; alert TopganCarrierDrift)"
    )
    latency_p99_s: float = Field(
        description="p99 grab-to-stored latency above which the loop falls behind "
        "(TOPGAN_LATENCY_P99_MAX_S; alert TopganLatencyHigh)"
    )


class LiveHistory(BaseModel):
    """The last minutes, one entry per second in every list (null: no such figure that
    second), oldest first; sampled from the same metrics /metrics serves."""

    t: list[float] = Field(description="Unix time at the end of each second")
    frames_per_s: list[float | None] = Field(description="camera frames grabbed per second")
    dropped_per_s: list[float | None] = Field(description="frames dropped (queue full) per s")
    views_per_s: list[float | None] = Field(description="camera views classified per second")
    cells_per_s: list[float | None] = Field(description="cells counted once (events) per s")
    errors_per_s: list[float | None] = Field(description="frames that failed per second")
    queue_depth: list[float | None] = Field(description="frames waiting for the workers")
    latency_p50_s: list[float | None] = Field(
        description="median grab-to-stored latency of the second's camera cells"
    )
    latency_p99_s: list[float | None] = Field(description="its 99th percentile")
    background_opd_nm: list[float | None] = Field(
        description="median background OPD spread of the second's frames, nm"
    )
    fringe_contrast: list[float | None] = Field(description="the last frame's fringe contrast")
    carrier_drift_cycles_per_px: list[float | None] = Field(
        description="the last frame's carrier drift from the reference's, cycles/px"
    )
    unwrap_residues: list[float | None] = Field(
        description="median phase residues of the second's frames"
    )
    cells_by_class: dict[str, list[int]] = Field(
        description="cells counted once in each second, by class"
    )
    thresholds: LiveThresholds


PNG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the image",
    },
    404: {"model": ErrorResponse, "description": "nothing to show yet"},
}
FrameSequence = Annotated[
    int | None,
    Query(ge=0, description="the sequence from /live/state: that frame while it is still held"),
]
NO_STORE = {"Cache-Control": "no-store"}


@cache
def _page() -> str:
    return (files("service") / "static" / "live.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, summary="The operator's live page")
async def page() -> HTMLResponse:
    """The live page: latest hologram, OPD map with outlines, crops, counts and rates."""
    return HTMLResponse(_page())


@router.get("/live/state", response_model=LiveState, summary="What the live page shows")
async def live_state(live: LiveDep) -> LiveState:
    """The displayed frame, the latest classified cells, and sequence numbers that tell
    a page when to refetch its images."""
    return LiveState.model_validate(live.snapshot())


@router.get("/live/history", response_model=LiveHistory, summary="The last minutes, per second")
async def live_history(
    history: HistoryDep,
    settings: SettingsDep,
    seconds: Annotated[
        int | None, Query(ge=1, description="only the last this many seconds; default all kept")
    ] = None,
) -> LiveHistory:
    """Rates, latency, class counts and hologram quality second by second, for the
    page's charts (at most ``TOPGAN_LIVE_HISTORY_SECONDS``), with the thresholds the
    alerts use."""
    thresholds = LiveThresholds(
        background_opd_nm=settings.quality_background_max_nm,
        fringe_contrast=settings.quality_fringe_contrast_min,
        carrier_drift_cycles_per_px=settings.quality_carrier_drift_max,
        latency_p99_s=settings.latency_p99_max_s,
    )
    return LiveHistory(**history.series(seconds), thresholds=thresholds)


def _png(png: bytes | None, missing: str) -> Response:
    if png is None:
        raise HTTPException(404, missing)
    return PNGResponse(png, headers=NO_STORE)


@router.get("/live/hologram.png", response_class=Response, responses=PNG_RESPONSES)
async def hologram_png(live: LiveDep, seq: FrameSequence = None) -> Response:
    """The displayed hologram, grey, downscaled to at most 640 pixels a side."""
    return _png(await run_in_threadpool(live.hologram_png, seq), NO_FRAME)


@router.get("/live/opd.png", response_class=Response, responses=PNG_RESPONSES)
async def opd_png(live: LiveDep, seq: FrameSequence = None) -> Response:
    """The displayed OPD map, colour-mapped over ``opd_range_nm``, accepted cells and
    rejected objects outlined."""
    return _png(await run_in_threadpool(live.opd_png, seq), NO_FRAME)


@router.get("/live/crops/{result_id}.png", response_class=Response, responses=PNG_RESPONSES)
async def crop_png(live: LiveDep, result_id: int) -> Response:
    """One of the latest crops, coloured over the fixed OPD scale (crop_opd_range_nm of
    /live/state) or, without one, from 0 nm to its peak OPD."""
    png = await run_in_threadpool(live.crop_png, result_id)
    kept = live.max_crops
    return _png(
        png, f"no crop with result id {result_id} in the live view (it keeps the last {kept})"
    )
