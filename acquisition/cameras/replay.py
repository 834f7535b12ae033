"""Frames recorded earlier, replayed as a camera: a folder of images or one file.

A folder is read one file at a time, in name order (``reference.*`` is skipped: it
is the cell-free hologram, not a frame; so is ``ground_truth.*``, the truth that
``topgan simulate holograms`` writes beside its frames); one file (multi-page TIFF, NPY, HDF5...)
is read whole. Frames come at a set rate or as fast as the consumer takes them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..io import HOLOGRAM_SUFFIXES, read_hologram
from .base import CameraError, EndOfStream, GrabbedFrame, Pacer


def _bit_depth(image: np.ndarray) -> int:
    if image.dtype == np.uint8:
        return 8
    return 16 if image.dtype.kind in "ui" and image.max(initial=0) > 4095 else 12


#: Files of a replay folder that are not frames: the cell-free reference, and the
#: ground truth ``topgan simulate holograms`` writes beside its frames.
NOT_FRAMES = ("reference", "ground_truth")


class ReplayCamera:
    """Replays recorded holograms (``kind="replay"``).

    Parameters
    ----------
    path : a folder of hologram files or one file of frames
    rate_hz : frames per second; None: as fast as ``grab`` is called
    loop : start again after the last frame (else :class:`EndOfStream`)
    """

    kind = "replay"

    def __init__(self, path: str | Path, rate_hz: float | None = None, loop: bool = True) -> None:
        self.path = Path(path)
        self.rate_hz = rate_hz
        self.loop = loop
        self._files: list[Path] = []
        self._frames: np.ndarray | None = None
        self._position = 0
        self._count = 0
        self._pacer = Pacer(rate_hz)
        self._open = False

    @property
    def length(self) -> int:
        if self._files:
            return len(self._files)
        return 0 if self._frames is None else len(self._frames)

    def open(self) -> None:
        path = self.path
        if path.is_dir():
            self._files = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in HOLOGRAM_SUFFIXES and p.stem.lower() not in NOT_FRAMES
            )
            if not self._files:
                raise CameraError(f"replay folder {path} holds no hologram files")
        elif path.is_file():
            try:
                self._frames = read_hologram(path).frames
            except ValueError as exc:
                raise CameraError(str(exc)) from None
        else:
            raise CameraError(f"replay source {path} does not exist")
        self._pacer = Pacer(self.rate_hz)
        self._open = True

    def grab(self) -> GrabbedFrame:
        if not self._open:
            raise CameraError("the replay camera is not open")
        if self._position >= self.length:
            if not self.loop:
                raise EndOfStream(f"replay of {self.path} finished after {self._count} frames")
            self._position = 0
        if self._files:
            try:
                image = read_hologram(self._files[self._position]).frames[0]
            except ValueError as exc:
                self._position += 1
                raise CameraError(str(exc)) from None
        else:
            assert self._frames is not None
            image = self._frames[self._position]
        self._position += 1
        self._pacer.wait()
        self._count += 1
        return GrabbedFrame(image, self._count, _bit_depth(image), time.time(), time.monotonic())

    def close(self) -> None:
        self._open = False
        self._frames = None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "frames": self.length,
            "rate_hz": self.rate_hz,
            "loop": self.loop,
        }
