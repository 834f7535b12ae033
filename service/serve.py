"""``topgan serve``: the camera loop and the API on one port."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pydantic import ValidationError

from acquisition.commandline import Command, CommandError, add_common_options

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_options(p)
    p.add_argument("--camera", help="emulator, basler, replay:PATH, simulator or none (API only)")
    p.add_argument("--model", metavar="DIR", help="model directory (default: models/sw480-sw620)")
    p.add_argument(
        "--db", metavar="URL", help="database URL (default: sqlite:///data/results.sqlite)"
    )
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8000)")
    p.add_argument("--config", metavar="FILE.toml", help="settings file")


def run(args: argparse.Namespace) -> None:
    import uvicorn

    from .app import create_app
    from .settings import load_settings

    overrides = {
        "camera": args.camera,
        "model_dir": args.model,
        "database_url": args.db,
        "host": args.host,
        "port": args.port,
    }
    try:
        settings = load_settings(
            Path(args.config) if args.config else None,
            **{k: v for k, v in overrides.items() if v is not None},
        )
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


COMMAND = Command(
    name="serve",
    help="the service: REST API and metrics (and the camera loop)",
    description="Start the service. Every option is also a setting (TOPGAN_ environment "
    "variables, or a TOML file with --config).",
    add_arguments=add_arguments,
    run=run,
    order=10,
)
