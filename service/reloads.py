"""Which model the service serves: where ``POST /model/reload`` may load from, and the
reloaded model remembered across restarts.

A reload is an operator's decision, so a restart keeps it: the model a reload loaded
is written to a small JSON file (``served_model_file``), and the next start serves
it again, as long as ``model_dir`` still names what it named at the reload. Once the
configuration names another model, the configuration wins (the operator changed it
after the reload, so it is the newer decision). A remembered model that no longer
loads (deleted, changed on disk) gives way to the configured one, with an error in
the log.

Reloads load directories under the models root (``models_root``, where trained
models go, by default ``data/models`` beside the results) or among the models
bundled with the package (``models/`` of the repository).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.manifest import Manifest

from .settings import BUNDLED_MODELS, Settings

logger = logging.getLogger(__name__)


class ModelPathError(ValueError):
    """A reload's path is not a model directory the service may load.

    ``status``: 422 an unusable path, 403 outside the roots, 404 no such directory.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def model_roots(settings: Settings) -> list[Path]:
    """The folders reloads load from: the models root, then the bundled models."""
    roots = [settings.models_root.resolve(), BUNDLED_MODELS.resolve()]
    return list(dict.fromkeys(roots))


def resolve_model_path(path: str, roots: Sequence[Path]) -> Path:
    """The model directory a reload names: absolute, or relative to the first root
    where it exists (else to the first); it must lie inside one of ``roots``."""
    raw = Path(path)
    try:
        candidates = [(raw if raw.is_absolute() else root / raw).resolve() for root in roots]
    except (OSError, ValueError) as exc:
        raise ModelPathError(422, f"invalid path {path!r}: {exc}") from None
    directory = next((c for c in candidates if c.is_dir()), candidates[0])
    where = " or ".join(str(r) for r in roots)
    if not any(directory.is_relative_to(root) for root in roots):
        raise ModelPathError(403, f"{path!r} is outside the models root {where}")
    if not directory.is_dir():
        raise ModelPathError(404, f"model directory {path!r} does not exist under {where}")
    return directory


@dataclass(frozen=True)
class ServedModelFile:
    """The file that remembers a reloaded model, and the configured model it overrides.

    path : the JSON file (``served_model_file``)
    configured : ``model_dir``, the model the configuration names (None: none)
    """

    path: Path
    configured: Path | None

    @classmethod
    def of(cls, settings: Settings) -> ServedModelFile:
        return cls(settings.served_model_file, settings.model_dir)

    def _configured(self) -> str | None:
        return None if self.configured is None else str(self.configured.resolve())

    def recall(self) -> Path | None:
        """The model to serve instead of the configured one, None for the configured."""
        try:
            remembered: dict[str, Any] = json.loads(self.path.read_text())
            directory = Path(remembered["directory"])
            configured = remembered["model_dir"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("%s is unreadable, serving the configured model: %s", self.path, exc)
            return None
        if configured != self._configured():
            logger.info(
                "model_dir is now %s, %s when %s was reloaded: serving the configured model",
                self._configured(),
                configured,
                directory,
            )
            return None
        if not directory.is_dir():
            logger.error(
                "the reloaded model %s is gone: serving the configured %s",
                directory,
                self.configured,
            )
            return None
        logger.info(
            "serving %s, loaded by POST /model/reload at %s (model_dir %s unchanged since)",
            directory,
            remembered.get("loaded_at", "?"),
            self._configured(),
        )
        return directory

    def remember(self, directory: Path, manifest: Manifest) -> None:
        """Record a reloaded model (written whole, then renamed: never half a file). A
        file that cannot be written costs the memory, not the reload: logged."""
        record = {
            "directory": str(directory.resolve()),
            "name": manifest.name,
            "version": manifest.version,
            "onnx_sha256": manifest.onnx_sha256,
            "loaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_dir": self._configured(),
        }
        partial = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(partial, self.path)
        except OSError as exc:
            logger.warning(
                "the reloaded model is served, but a restart will not serve it: "
                "cannot write %s: %s",
                self.path,
                exc,
            )
