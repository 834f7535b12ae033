"""GET /acquisition, POST /acquisition/start and /acquisition/stop."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from ..camera import CameraLoop
from ..loop.states import RunState
from ..settings import Settings
from .deps import ApiKey, CameraDep, SettingsDep
from .schemas import AcquisitionStatus, ErrorResponse

router = APIRouter(tags=["acquisition"])
CONTROL_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
}


def _status(camera: CameraLoop | None, settings: Settings) -> AcquisitionStatus:
    if camera is None:
        return AcquisitionStatus(
            state="disabled", camera=settings.camera, detail="the service runs without a camera"
        )
    archive = camera.archive.status() if camera.archive is not None else None
    return AcquisitionStatus(**asdict(camera.status()), archive=archive)


def _camera(camera: CameraLoop | None, action: str) -> CameraLoop:
    if camera is None:
        raise HTTPException(409, f"no camera is configured (camera 'none'): nothing to {action}")
    return camera


@router.get("/acquisition", response_model=AcquisitionStatus)
async def acquisition(camera: CameraDep, settings: SettingsDep) -> AcquisitionStatus:
    """The camera loop's state, rates, counts and errors."""
    return _status(camera, settings)


@router.post(
    "/acquisition/start",
    response_model=AcquisitionStatus,
    responses=CONTROL_ERRORS,
    dependencies=[ApiKey],
)
async def start(camera: CameraDep, settings: SettingsDep) -> AcquisitionStatus:
    """Start the camera loop (the camera opens in the background: watch the state)."""
    try:
        _camera(camera, "start").start()
    except RuntimeError as exc:
        raise HTTPException(409, f"{exc}; stop it first") from None
    return _status(camera, settings)


@router.post(
    "/acquisition/stop",
    response_model=AcquisitionStatus,
    responses=CONTROL_ERRORS,
    dependencies=[ApiKey],
)
async def stop(camera: CameraDep, settings: SettingsDep) -> AcquisitionStatus:
    """Stop grabbing; the queued frames are processed and their cells stored first."""
    loop = _camera(camera, "stop")
    if loop.state == RunState.IDLE:
        raise HTTPException(409, "the acquisition is not running")
    await run_in_threadpool(loop.stop)
    return _status(camera, settings)
