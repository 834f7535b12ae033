"""GET /results, GET /results/summary and GET /events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from .deps import ClassificationDep, SettingsDep, StartedDep
from .schemas import ErrorResponse, EventsPage, ResultsPage, StoredEvent, StoredResult, Summary

router = APIRouter(tags=["results"])


@router.get("/results", response_model=ResultsPage, responses={422: {"model": ErrorResponse}})
async def list_results(
    classification: ClassificationDep,
    after_id: Annotated[
        int, Query(ge=0, le=2**62, description="only results with a larger id")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 100,
) -> ResultsPage:
    """Stored results of the camera loop and of /classify, oldest first."""
    rows = await run_in_threadpool(classification.store.list, after_id, limit)
    return ResultsPage(
        results=[StoredResult(**r) for r in rows],
        next_after_id=rows[-1]["id"] if rows else after_id,
    )


@router.get("/events", response_model=EventsPage, responses={422: {"model": ErrorResponse}})
async def list_events(
    classification: ClassificationDep,
    after_id: Annotated[int, Query(ge=0, le=2**62, description="only events with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 100,
) -> EventsPage:
    """The camera loop's cells, one row each (all its views combined), oldest first."""
    rows = await run_in_threadpool(classification.store.list_events, after_id, limit)
    return EventsPage(
        events=[StoredEvent(**r) for r in rows],
        next_after_id=rows[-1]["id"] if rows else after_id,
    )


@router.get("/results/summary", response_model=Summary)
async def summary(
    classification: ClassificationDep, started: StartedDep, settings: SettingsDep
) -> Summary:
    """Counts per class, class fractions and rates since the service started: of
    every stored view, and of the cells (events), each counted once."""
    return Summary(
        **await run_in_threadpool(classification.store.summary, started, settings.flow_rate_ul_min)
    )
