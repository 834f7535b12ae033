"""One module per ``topgan`` command, imported only when the command runs."""

from __future__ import annotations

from acquisition.backend import ArrayBackend, BackendUnavailableError, get_backend

from ..errors import CommandError


def backend_or_error(name: str) -> ArrayBackend:
    """The array backend ``name``, or a one-line error saying why it cannot run."""
    try:
        return get_backend(name)  # type: ignore[arg-type]
    except BackendUnavailableError as exc:
        raise CommandError(f"--backend {name}: {exc}") from None
