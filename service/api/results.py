"""GET /results, GET /results/summary, GET /events and GET /pipelines."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.concurrency import run_in_threadpool

from .deps import ClassificationDep, SettingsDep, StartedDep
from .schemas import (
    ErrorResponse,
    EventsPage,
    PipelinesPage,
    ResultsPage,
    StoredEvent,
    StoredPipeline,
    StoredResult,
    Summary,
)

router = APIRouter(tags=["results"])

MAX_ID = 2**62

Order = Annotated[
    Literal["asc", "desc"],
    Query(
        description="asc: oldest first, paged with after_id (the default); desc: newest "
        "first, paged with before_id. The other order's cursor is refused (422)"
    ),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many")]
Label = Annotated[str | None, Query(min_length=1, max_length=64, description="only this class")]
ModelVersion = Annotated[
    str | None,
    Query(min_length=1, max_length=64, description="only those of this model version"),
]
Since = Annotated[
    float | None,
    Query(ge=0, le=1e11, description="only those created at or after this Unix time, seconds"),
]
Uncertain = Annotated[
    bool | None,
    Query(description="true: only those flagged uncertain; false: only those not flagged"),
]
ID_PATTERN = "^[0-9a-f]{16}$"
ReferenceId = Annotated[
    str | None,
    Query(pattern=ID_PATTERN, description="only those reconstructed against this reference"),
]
PipelineId = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="only those of this pipeline")
]


def _cursor(order: str, after_id: int, before_id: int | None) -> None:
    """Refuse a cursor of the other order: it would be silently meaningless."""
    if order == "asc" and before_id is not None:
        raise HTTPException(422, "before_id pages order=desc; with order=asc use after_id")
    if order == "desc" and after_id:
        raise HTTPException(422, "after_id pages order=asc; with order=desc use before_id")


@router.get("/results", response_model=ResultsPage, responses={422: {"model": ErrorResponse}})
async def list_results(
    classification: ClassificationDep,
    after_id: Annotated[
        int,
        Query(ge=0, le=MAX_ID, description="only results with a larger id (order=asc only)"),
    ] = 0,
    limit: Limit = 100,
    order: Order = "asc",
    before_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="only results with a smaller id (order=desc only)"),
    ] = None,
    source: Annotated[
        Literal["camera", "api"] | None,
        Query(description="only the camera loop's views (camera) or posted crops (api)"),
    ] = None,
    label: Label = None,
    model_version: ModelVersion = None,
    since: Since = None,
    uncertain: Uncertain = None,
    reference_id: ReferenceId = None,
    pipeline_id: PipelineId = None,
) -> ResultsPage:
    """Stored results of the camera loop and of /classify, oldest first (or newest
    first with order=desc), optionally filtered."""
    _cursor(order, after_id, before_id)
    rows = await run_in_threadpool(
        lambda: classification.store.list(
            after_id,
            limit,
            descending=order == "desc",
            before_id=before_id,
            source=source,
            label=label,
            model_version=model_version,
            since=since,
            uncertain=uncertain,
            reference_id=reference_id,
            pipeline_id=pipeline_id,
        )
    )
    return ResultsPage(results=[StoredResult(**r) for r in rows], **_next(rows, order, after_id))


@router.get("/events", response_model=EventsPage, responses={422: {"model": ErrorResponse}})
async def list_events(
    classification: ClassificationDep,
    after_id: Annotated[
        int, Query(ge=0, le=MAX_ID, description="only events with a larger id (order=asc only)")
    ] = 0,
    limit: Limit = 100,
    order: Order = "asc",
    before_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="only events with a smaller id (order=desc only)"),
    ] = None,
    label: Label = None,
    model_version: ModelVersion = None,
    since: Since = None,
    uncertain: Uncertain = None,
    reference_id: ReferenceId = None,
    pipeline_id: PipelineId = None,
) -> EventsPage:
    """The camera loop's cells, one row each (all its views combined), oldest first
    (or newest first with order=desc), optionally filtered."""
    _cursor(order, after_id, before_id)
    rows = await run_in_threadpool(
        lambda: classification.store.list_events(
            after_id,
            limit,
            descending=order == "desc",
            before_id=before_id,
            label=label,
            model_version=model_version,
            since=since,
            uncertain=uncertain,
            reference_id=reference_id,
            pipeline_id=pipeline_id,
        )
    )
    return EventsPage(events=[StoredEvent(**r) for r in rows], **_next(rows, order, after_id))


def _next(rows: list[dict[str, Any]], order: str, after_id: int) -> dict[str, int | None]:
    """The page's cursors: ascending, the largest id (or ``after_id`` when empty);
    descending, the smallest id (None when empty: nothing older) and the largest."""
    ids = [int(r["id"]) for r in rows]
    if order == "asc":
        return {"next_after_id": ids[-1] if ids else after_id, "next_before_id": None}
    return {"next_after_id": max(ids, default=after_id), "next_before_id": min(ids, default=None)}


@router.get("/results/summary", response_model=Summary)
async def summary(
    classification: ClassificationDep, started: StartedDep, settings: SettingsDep
) -> Summary:
    """Counts per class, class fractions, the uncertain ones and rates since the
    service started: of every stored view (also by source and by model version), and
    of the cells (events), each counted once."""
    counted = await run_in_threadpool(classification.store.summary, None, settings.flow_rate_ul_min)
    return Summary(**counted, min_confidence=classification.min_confidence)


@router.get("/pipelines", response_model=PipelinesPage)
async def list_pipelines(classification: ClassificationDep) -> PipelinesPage:
    """Every configuration results were stored with, the oldest first."""
    rows = await run_in_threadpool(classification.store.list_pipelines)
    return PipelinesPage(pipelines=[StoredPipeline(**r) for r in rows])


@router.get(
    "/pipelines/{pipeline_id}",
    response_model=StoredPipeline,
    responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def pipeline(
    classification: ClassificationDep,
    pipeline_id: Annotated[
        str, Path(pattern=ID_PATTERN, description="a pipeline_id of /results or /acquisition")
    ],
) -> StoredPipeline:
    """The configuration a pipeline id stands for: the JSON its id is the hash of."""
    row = await run_in_threadpool(classification.store.pipeline, pipeline_id)
    if row is None:
        raise HTTPException(404, f"no pipeline {pipeline_id} is stored")
    return StoredPipeline(**row)
