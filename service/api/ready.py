"""GET /ready: readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..loop.states import RunState
from .deps import CameraDep, ClassificationDep, SettingsDep
from .schemas import ModelSummary, Ready

router = APIRouter(tags=["system"])

#: States of the camera loop in which the service is not ready: the camera is being
#: opened (at start-up, or after an operator's start) or has failed. A loop that was
#: stopped deliberately (idle, stopping) leaves the service ready: /classify serves.
NOT_READY = (RunState.STARTING, RunState.FAILED)


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(
    classification: ClassificationDep, camera: CameraDep, settings: SettingsDep
) -> Ready | JSONResponse:
    """Readiness: a model is loaded and the camera loop, when there is one, is neither
    opening its camera nor failed (a deliberately stopped loop is ready, with
    ``acquiring`` false). 503 with the reasons otherwise."""
    reasons = []
    runtime = classification.runtime
    if runtime is None:
        last = classification.holder.last_error or "none configured"
        reasons.append(f"no model loaded ({last})")
    state = camera.state if camera is not None else None
    if camera is not None and state in NOT_READY:
        status = camera.status()
        reasons.append(f"camera {status.state}: {status.detail}")
    answer = Ready(
        ready=not reasons,
        reasons=reasons,
        model=ModelSummary(**runtime.manifest.summary()) if runtime else None,
        camera=settings.camera,
        serving=runtime is not None,
        acquiring=state == RunState.RUNNING,
        acquisition=state if state is not None else "disabled",
    )
    if reasons:
        return JSONResponse(answer.model_dump(mode="json"), status_code=503)
    return answer
