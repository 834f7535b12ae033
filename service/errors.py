"""Exceptions of the service package."""

from __future__ import annotations

import os
from pathlib import Path


class ArchiveError(OSError):
    """The crop archive cannot write, rename or delete ``path``; the message says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"crop archive: {path}: {reason}")
        self.path = Path(path)
