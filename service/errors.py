"""Exceptions of the service package."""

from __future__ import annotations


class CommandError(Exception):
    """A command cannot do its work; the message is the one line the user sees."""
