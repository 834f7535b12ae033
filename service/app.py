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

from .api import camera_loop, classify, health, live, model, ready, results
from .api import metrics as metrics_route
from .services import Services
from .settings import Settings

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
            services: Services | None = getattr(scope["app"].state, "services", None)
            if services is not None:
                services.metrics.http_requests.labels(path, str(status)).inc()
                services.metrics.http_seconds.labels(path).observe(time.perf_counter() - start)


def _describe(errors: list[Any]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(
            f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", "invalid")
        )
    return "; ".join(parts) or "invalid request"


def create_app(settings: Settings) -> FastAPI:
    """The app; its lifespan starts the :class:`Services` of ``settings`` and closes
    them at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = Services.start(settings)
        # Everything built so far (modules, the model, the app) lives as long as the
        # process: keep it out of the collector's full passes, which would otherwise
        # stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            logger.info("shutting down: draining the batcher and flushing the store")
            app.state.services.close()

    app = FastAPI(
        title="topgan",
        version="0.1.0",
        summary="Stain-free cancer-cell classification from off-axis holograms",
        lifespan=lifespan,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _describe(list(exc.errors()))}, status_code=422)

    for api in (classify, results, health, ready, model, camera_loop, metrics_route, live):
        app.include_router(api.router)
    app.add_middleware(RequestMetrics)
    return app
