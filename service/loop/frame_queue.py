"""The bounded frame queue between the grab thread and the workers."""

from __future__ import annotations

import collections
import threading

from acquisition.cameras import GrabbedFrame


class FrameQueue:
    """A bounded FIFO whose ``put`` never blocks: when full it drops the oldest."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"the frame queue needs room for at least 1 frame, got {maxsize}")
        self.maxsize = maxsize
        self._items: collections.deque[GrabbedFrame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: GrabbedFrame) -> int:
        """Queue ``item``; returns how many frames were dropped to make room (0 or 1)."""
        with self._cond:
            dropped = 0
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                dropped = 1
            self._items.append(item)
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> GrabbedFrame | None:
        """The oldest frame; None once the queue is closed and empty (or on timeout)."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        """No more frames will come: ``get`` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)
