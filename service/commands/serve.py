"""``topgan serve``: the camera loop and the API on one port."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from acquisition.commandline import CommandError

logger = logging.getLogger(__name__)


def run_serve(config: Path | None, overrides: dict[str, Any]) -> None:
    import uvicorn

    from ..app import create_app
    from ..settings import load_settings

    try:
        settings = load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CommandError(f"setting {where}: {first['msg']}") from None
    if settings.camera == "emulator":
        from acquisition.cameras.basler import enable_emulator

        enable_emulator()  # before pylon first enumerates its transport layers
    logger.info(
        "serving on http://%s:%d (camera: %s)", settings.host, settings.port, settings.camera
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
