"""The automatic reference refresh: a new reference hologram when the old one has
gone stale (``TOPGAN_REFERENCE_REFRESH``, off by default).

A reference hologram cancels the optics' stationary aberrations; when they drift
(temperature, a touched mount) the background of every OPD map grows a tilt or a
ring. :class:`ReferenceRefresher` watches each frame's background spread (the
``background_opd_nm`` of :meth:`ProcessedFrames.quality`) of the frames
reconstructed against the current reference; when the median of the last
``window_frames`` exceeds ``threshold_nm`` it records the next ``record_frames``
frames in which segmentation kept no cell, and their per-pixel median becomes the
new reference (what it rejected in them, a cell clipped by the border or out of
focus, lies elsewhere in each frame, and the median leaves it out; a stale
reference's own bumps are rejected objects too, which is why frames with rejected
objects must count), handed to the runner whole (the runner swaps it under
its lock; each worker takes it for its next frame, so a frame is reconstructed
against the old reference or the new, never anything in between).
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from acquisition.frames import ProcessedFrames

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshConfig:
    """When a reference is stale, and how its successor is recorded.

    threshold_nm : the median background spread above which the reference is stale
    window_frames : how many of the latest frames that median is taken over
    record_frames : frames without a cell whose per-pixel median is the new reference
    """

    threshold_nm: float
    window_frames: int = 25
    record_frames: int = 9

    def __post_init__(self) -> None:
        if not self.threshold_nm > 0:
            raise ValueError(f"threshold_nm must be positive, got {self.threshold_nm}")
        if self.window_frames < 1 or self.record_frames < 1:
            raise ValueError(
                f"window_frames and record_frames must be at least 1, got "
                f"{self.window_frames} and {self.record_frames}"
            )


def reference_id(reference: np.ndarray | None) -> str | None:
    """A reference hologram's identity: the first 16 hex digits of the SHA-256 of its
    shape, dtype and counts (None without one)."""
    if reference is None:
        return None
    import hashlib

    digest = hashlib.sha256(f"{reference.shape}{reference.dtype}".encode())
    digest.update(np.ascontiguousarray(reference).tobytes())
    return digest.hexdigest()[:16]


class ReferenceRefresher:
    """Watches processed frames (from any worker thread) and installs a fresh
    reference when the current one has gone stale.

    Parameters
    ----------
    config : the threshold and the frame counts
    current : the id of the reference now in use (``reference_id``)
    install : takes the new (H, W) reference; returns its id
    """

    def __init__(
        self,
        config: RefreshConfig,
        current: Callable[[], str | None],
        install: Callable[[np.ndarray], str],
    ) -> None:
        self.config = config
        self._current = current
        self._install = install
        self._lock = threading.Lock()
        self._spreads: deque[float] = deque(maxlen=config.window_frames)
        self._recording: list[np.ndarray] | None = None
        self._judged: str | None = None  # the reference the spreads were measured against

    @property
    def recording(self) -> bool:
        return self._recording is not None

    def observe(self, image: np.ndarray, processed: ProcessedFrames, used: str | None) -> None:
        """One processed frame: its raw ``image`` and the id of the reference it was
        reconstructed against (``used``)."""
        spread = processed.quality()["background_opd_nm"]
        empty = not processed.cells
        with self._lock:
            current = self._current()
            if used != current:
                return  # reconstructed against a reference that has since been replaced
            if self._judged != current:
                self._judged, self._recording = current, None
                self._spreads.clear()
            if self._recording is None:
                if np.isfinite(spread):
                    self._spreads.append(spread)
                if len(self._spreads) == self._spreads.maxlen:
                    median = statistics.median(self._spreads)
                    if median > self.config.threshold_nm:
                        logger.warning(
                            "the reference is stale: median background spread %.1f nm over "
                            "the last %d frames (threshold %.1f nm); recording a new one "
                            "from the next %d frames without a cell",
                            median,
                            len(self._spreads),
                            self.config.threshold_nm,
                            self.config.record_frames,
                        )
                        self._recording = []
                return
            if not empty:
                return
            self._recording.append(np.array(image, copy=True))
            if len(self._recording) < self.config.record_frames:
                return
            stack = np.stack(self._recording)
            self._recording = None
            self._spreads.clear()
            new = np.median(stack, axis=0)
            if np.issubdtype(image.dtype, np.integer):
                new = np.rint(new).astype(image.dtype)
            installed = self._install(new)
            self._judged = installed
        logger.warning(
            "reference refreshed: the median of %d frames without a cell (id %s)",
            len(stack),
            installed,
        )
