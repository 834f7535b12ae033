"""GET /model and POST /model/reload."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from models.manifest import ModelError

from ..classification import Classification
from ..reloads import ModelPathError, model_roots, resolve_model_path
from .deps import ApiKey, ClassificationDep, SettingsDep
from .schemas import ErrorResponse, ModelInfo, ReloadRequest

router = APIRouter(tags=["model"])


def _info(classification: Classification) -> ModelInfo:
    runtime = classification.runtime
    if runtime is None:
        raise HTTPException(404, "no model is loaded")
    return ModelInfo(
        directory=str(runtime.directory), providers=runtime.providers, manifest=runtime.manifest.raw
    )


@router.get("/model", response_model=ModelInfo, responses={404: {"model": ErrorResponse}})
async def model(classification: ClassificationDep) -> ModelInfo:
    """The manifest of the model being served."""
    return _info(classification)


@router.post(
    "/model/reload",
    response_model=ModelInfo,
    responses={code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 422)},
    dependencies=[ApiKey],
)
async def reload_model(
    request: ReloadRequest, classification: ClassificationDep, settings: SettingsDep
) -> ModelInfo:
    """Load another model directory (under the models root, or a bundled model)
    atomically: on any failure the current model keeps serving. A restart serves it
    again (:mod:`service.reloads`)."""
    try:
        directory = resolve_model_path(request.path, model_roots(settings))
    except ModelPathError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    try:
        await run_in_threadpool(classification.reload_model, directory)
    except ModelError as exc:
        raise HTTPException(
            422, f"model not loaded, the previous one keeps serving: {exc}"
        ) from None
    return _info(classification)
