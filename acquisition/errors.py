"""Exceptions of the acquisition package; each message says what to fix."""

from __future__ import annotations


class HologramError(ValueError):
    """A hologram (or reference) that cannot be reconstructed as given."""


class SidebandNotFoundError(HologramError):
    """No off-axis sideband stands out of the hologram's spectrum."""


class ReferenceMismatchError(HologramError):
    """A reference hologram that does not fit the holograms it should correct."""


class UnreadableFileError(ValueError):
    """A file that is missing, of an unknown format, or holds no usable image."""
