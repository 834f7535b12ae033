"""Group work: what a worker thread takes from its queue in one go."""

from __future__ import annotations

import queue
from typing import TypeVar

T = TypeVar("T")


def with_waiting(source: queue.Queue[T | None], first: T) -> tuple[list[T], bool]:
    """``first`` and every item already waiting in ``source`` (never waiting for more),
    and whether the stop mark (None) came among them: the group a commit or a check
    takes at once."""
    group = [first]
    while True:
        try:
            item = source.get_nowait()
        except queue.Empty:
            return group, False
        if item is None:
            return group, True
        group.append(item)
