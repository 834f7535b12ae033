"""The FastAPI application: routers, error handlers, request metrics, lifespan."""

from __future__ import annotations

import gc
import importlib.util
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import camera_loop, classify, health, live, model, ready, results
from .api import metrics as metrics_route
from .services import Services
from .settings import Settings

logger = logging.getLogger(__name__)

#: Where /docs and /redoc load Swagger UI and ReDoc from: the files the
#: fastapi-offline package ships (only its assets are used), served by the service
#: itself, so the documentation works on a PC without internet.
DOCS_ASSETS_URL = "/docs-assets"


def _docs_assets() -> Path:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("fastapi-offline is not installed: it ships /docs' scripts")
    return Path(spec.origin).parent / "static"


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
        docs_url=None,  # served below from local files, not from a CDN
        redoc_url=None,
    )
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=_docs_assets()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
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
