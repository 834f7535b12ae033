"""Dependencies of the routes: the service state and the API key check.

Both are ``async``: FastAPI runs plain functions in a worker thread, a hand-off that
cost more than the whole check on every request.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from ..state import ServiceState


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


async def require_api_key(
    state: State,
    x_api_key: Annotated[
        str | None, Header(description="required when TOPGAN_API_KEY is set")
    ] = None,
) -> None:
    expected = state.settings.api_key
    if expected and not (x_api_key and secrets.compare_digest(x_api_key, expected)):
        raise HTTPException(401, "missing or wrong X-API-Key header")


ApiKey = Depends(require_api_key)
