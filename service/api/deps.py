"""Dependencies of the routes: one per capability of the service, and the API key.

Each is ``async``: FastAPI runs plain functions in a worker thread, a hand-off that
cost more than the whole check on every request. Tests replace any of them with
``app.dependency_overrides``.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from ..camera import CameraLoop
from ..classification import Classification
from ..history import History
from ..holograms import HologramPath
from ..live import LiveView
from ..metrics import Metrics
from ..services import Services
from ..settings import Settings


def services_of(request: Request) -> Services:
    """The service the app runs (set by its lifespan)."""
    services: Services = request.app.state.services
    return services


async def get_settings(request: Request) -> Settings:
    return services_of(request).settings


async def get_metrics(request: Request) -> Metrics:
    return services_of(request).metrics


async def get_classification(request: Request) -> Classification:
    return services_of(request).classification


async def get_live(request: Request) -> LiveView:
    return services_of(request).live


async def get_camera(request: Request) -> CameraLoop | None:
    return services_of(request).camera


async def get_holograms(request: Request) -> HologramPath:
    return services_of(request).holograms


async def get_history(request: Request) -> History:
    return services_of(request).history


async def get_started(request: Request) -> float:
    return services_of(request).started


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ClassificationDep = Annotated[Classification, Depends(get_classification)]
LiveDep = Annotated[LiveView, Depends(get_live)]
CameraDep = Annotated[CameraLoop | None, Depends(get_camera)]
HologramsDep = Annotated[HologramPath, Depends(get_holograms)]
HistoryDep = Annotated[History, Depends(get_history)]
StartedDep = Annotated[float, Depends(get_started)]


async def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[
        str | None, Header(description="required when TOPGAN_API_KEY is set")
    ] = None,
) -> None:
    expected = settings.api_key
    if expected and not (x_api_key and secrets.compare_digest(x_api_key, expected)):
        raise HTTPException(401, "missing or wrong X-API-Key header")


ApiKey = Depends(require_api_key)
