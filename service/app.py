"""The FastAPI application: routers, error handlers, request metrics, lifespan."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import classify, live, results, system
from .settings import Settings
from .state import ServiceState

logger = logging.getLogger(__name__)


class RequestMetrics:
    """Counts requests by route template and status, and times them (pure ASGI: no
    per-request task or body copy)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            state: ServiceState | None = getattr(scope["app"].state, "service", None)
            if state is not None:
                state.metrics.http_requests.labels(path, str(status)).inc()
                state.metrics.http_seconds.labels(path).observe(time.perf_counter() - start)


def _describe(errors: list[Any]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(
            f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", "invalid")
        )
    return "; ".join(parts) or "invalid request"


def create_app(settings: Settings, state: ServiceState | None = None) -> FastAPI:
    """The app; it starts its own :class:`ServiceState` unless one is given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = state is None
        app.state.service = ServiceState.start(settings) if own else state
        # Everything built so far (modules, the model, the app) lives as long as the
        # process: keep it out of the collector's full passes, which would otherwise
        # stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if own:
                logger.info("shutting down: draining the batcher and flushing the store")
                app.state.service.close()

    app = FastAPI(
        title="topgan",
        version="0.1.0",
        summary="Stain-free cancer-cell classification from off-axis holograms",
        lifespan=lifespan,
    )
    if state is not None:
        app.state.service = state

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _describe(list(exc.errors()))}, status_code=422)

    app.include_router(classify.router)
    app.include_router(results.router)
    app.include_router(system.router)
    app.include_router(live.router)
    app.add_middleware(RequestMetrics)
    return app
