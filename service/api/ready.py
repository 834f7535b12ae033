"""GET /ready: readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..loop.states import RunState
from .deps import CameraDep, ClassificationDep, SettingsDep
from .schemas import ModelSummary, Ready

router = APIRouter(tags=["system"])


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(
    classification: ClassificationDep, camera: CameraDep, settings: SettingsDep
) -> Ready | JSONResponse:
    """Readiness: a model is loaded (and the camera runs, when one is configured).
    503 with the reasons otherwise."""
    reasons = []
    runtime = classification.runtime
    if runtime is None:
        last = classification.holder.last_error or "none configured"
        reasons.append(f"no model loaded ({last})")
    if camera is not None and camera.state != RunState.RUNNING:
        status = camera.status()
        reasons.append(f"camera {status.state}: {status.detail}")
    answer = Ready(
        ready=not reasons,
        reasons=reasons,
        model=ModelSummary(**runtime.manifest.summary()) if runtime else None,
        camera=settings.camera,
    )
    if reasons:
        return JSONResponse(answer.model_dump(), status_code=503)
    return answer
