"""GET /health: liveness."""

from __future__ import annotations

from fastapi import APIRouter

from .schemas import Health

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")
