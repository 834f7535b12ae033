"""Health, readiness, the model, the acquisition loop and metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.manifest import ModelError

from ..pipeline import AcquisitionRunner
from ..state import ServiceState
from .deps import ApiKey, State
from .schemas import (
    AcquisitionStatus,
    ErrorResponse,
    Health,
    ModelInfo,
    ModelSummary,
    Ready,
    ReloadRequest,
)

router = APIRouter()


@router.get("/health", response_model=Health, tags=["system"])
async def health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}}, tags=["system"])
async def ready(state: State) -> Ready | JSONResponse:
    """Readiness: a model is loaded (and the camera runs, when one is configured).
    503 with the reasons otherwise."""
    reasons = []
    runtime = state.holder.current
    if runtime is None:
        reasons.append(f"no model loaded ({state.holder.last_error or 'none configured'})")
    if state.runner is not None and state.runner.state != "running":
        status = state.runner.status()
        reasons.append(f"camera {status['state']}: {status['detail']}")
    answer = Ready(
        ready=not reasons,
        reasons=reasons,
        model=ModelSummary(**runtime.manifest.summary()) if runtime else None,
        camera=state.settings.camera,
    )
    if reasons:
        return JSONResponse(answer.model_dump(), status_code=503)
    return answer


@router.get(
    "/model", response_model=ModelInfo, responses={404: {"model": ErrorResponse}}, tags=["model"]
)
async def model(state: State) -> ModelInfo:
    """The manifest of the model being served."""
    runtime = state.holder.current
    if runtime is None:
        raise HTTPException(404, "no model is loaded")
    return ModelInfo(
        directory=str(runtime.directory), providers=runtime.providers, manifest=runtime.manifest.raw
    )


@router.post(
    "/model/reload",
    response_model=ModelInfo,
    responses={code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 422)},
    dependencies=[ApiKey],
    tags=["model"],
)
async def reload_model(request: ReloadRequest, state: State) -> ModelInfo:
    """Load another model directory (under the models root) atomically: on any failure
    the current model keeps serving."""
    root = state.settings.models_root.resolve()
    raw = Path(request.path)
    try:
        directory = (raw if raw.is_absolute() else root / raw).resolve()
    except (OSError, ValueError) as exc:
        raise HTTPException(422, f"invalid path {request.path!r}: {exc}") from None
    if not directory.is_relative_to(root):
        raise HTTPException(403, f"{request.path!r} is outside the models root {root}")
    if not directory.is_dir():
        raise HTTPException(404, f"model directory {request.path!r} does not exist under {root}")
    try:
        await run_in_threadpool(state.reload_model, directory)
    except ModelError as exc:
        raise HTTPException(
            422, f"model not loaded, the previous one keeps serving: {exc}"
        ) from None
    return await model(state)


def _status(state: ServiceState) -> AcquisitionStatus:
    if state.runner is None:
        return AcquisitionStatus(
            state="disabled",
            camera=state.settings.camera,
            detail="the service runs without a camera",
        )
    archive = state.archive.status() if state.archive is not None else None
    return AcquisitionStatus(**state.runner.status(), archive=archive)


def _runner(state: ServiceState, action: str) -> AcquisitionRunner:
    if state.runner is None:
        raise HTTPException(409, f"no camera is configured (camera 'none'): nothing to {action}")
    return state.runner


@router.get("/acquisition", response_model=AcquisitionStatus, tags=["acquisition"])
async def acquisition(state: State) -> AcquisitionStatus:
    """The camera loop's state, rates, counts and errors."""
    return _status(state)


@router.post(
    "/acquisition/start",
    response_model=AcquisitionStatus,
    responses={401: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    dependencies=[ApiKey],
    tags=["acquisition"],
)
async def start(state: State) -> AcquisitionStatus:
    """Start the camera loop (the camera opens in the background: watch the state)."""
    runner = _runner(state, "start")
    try:
        runner.start()
    except RuntimeError as exc:
        raise HTTPException(409, f"{exc}; stop it first") from None
    return _status(state)


@router.post(
    "/acquisition/stop",
    response_model=AcquisitionStatus,
    responses={401: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    dependencies=[ApiKey],
    tags=["acquisition"],
)
async def stop(state: State) -> AcquisitionStatus:
    """Stop grabbing; the queued frames are processed and their cells stored first."""
    runner = _runner(state, "stop")
    if runner.state == "idle":
        raise HTTPException(409, "the acquisition is not running")
    await run_in_threadpool(runner.stop)
    return _status(state)


@router.get(
    "/metrics",
    tags=["system"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(state: State) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
