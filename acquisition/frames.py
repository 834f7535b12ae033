"""Hologram -> cells: the one frame processor every caller uses.

The camera loop's workers, the ``/classify/hologram`` route, ``topgan reconstruct``,
``topgan dataset import``, the simulator's datasets and the benchmarks all turn
holograms into OPD maps and single-cell crops the same way, through
:class:`FrameProcessor`: one reconstruction (with the reference hologram, when there
is one) and one segmentation whose crop geometry is set by one rule,
:meth:`SegmentationConfig.for_crop`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import ArrayBackend, BackendName, get_backend
from .reconstruction import OPDMaps, ReconstructionConfig, Reconstructor
from .segmentation import Cell, FrameSegmentation, SegmentationConfig, Segmenter


@dataclass(frozen=True)
class CropGeometry:
    """The crops a model takes: ``size_px`` square, at ``pixel_size_um`` per pixel
    (checked by :meth:`SegmentationConfig.for_crop`)."""

    size_px: int = 128
    pixel_size_um: float = 0.25

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size_px, self.size_px)


@dataclass(frozen=True)
class ProcessedFrames:
    """What one call of :meth:`FrameProcessor.process` found.

    Attributes
    ----------
    maps : the OPD maps, (N, h, w), one per hologram
    segmentations : one per hologram, with its kept cells and rejections
    crop : the geometry the cells were cut at
    reconstruct_s, segment_s : wall time of the two stages, seconds
    """

    maps: OPDMaps
    segmentations: list[FrameSegmentation]
    crop: CropGeometry
    reconstruct_s: float
    segment_s: float

    @property
    def cells(self) -> list[Cell]:
        """Every kept cell, frame by frame (``Cell.frame`` says which)."""
        return [cell for segmentation in self.segmentations for cell in segmentation.cells]

    def quality(self, index: int = 0) -> dict[str, float]:
        """Hologram quality of frame ``index``: the background OPD spread over its
        cell-free pixels (nm), its fringe contrast, how far its carrier has drifted
        from the reference's (cycles per camera pixel) and its phase residues (NaN
        when not measured)."""
        maps, nan = self.maps, float("nan")
        contrast, drift, residues = maps.fringe_contrast, maps.carrier_drift, maps.unwrap_residues
        return {
            "background_opd_nm": self.segmentations[index].background_rms_nm,
            "fringe_contrast": float(contrast[index]) if contrast is not None else nan,
            "carrier_drift_cycles_per_px": (
                float(np.hypot(*drift[index])) if drift is not None else nan
            ),
            "unwrap_residues": float(residues[index]) if residues is not None else nan,
        }

    def crops(self) -> np.ndarray:
        """(n_cells, size, size) float32 OPD crops in nm; (0, size, size) when none."""
        cells = self.cells
        if not cells:
            return np.zeros((0, *self.crop.shape), np.float32)
        return np.stack([cell.crop_nm for cell in cells])


class FrameProcessor:
    """Reconstructs holograms and cuts their cells.

    Parameters
    ----------
    reconstruction : optics and filter of the instrument
    segmentation : thresholds and filters; its crop geometry is the default for
        :meth:`process` and is replaced by the ``crop`` a call asks for
    backend : the array backend (default: ``get_backend("auto")``)
    reference : (H, W) hologram recorded without cells, optional; its phase is
        subtracted from every hologram (one of another shape is refused with
        ``ReferenceMismatchError``); without one a background surface is fitted

    Notes
    -----
    Safe to share between threads.
    """

    def __init__(
        self,
        reconstruction: ReconstructionConfig | None = None,
        segmentation: SegmentationConfig | None = None,
        backend: ArrayBackend | None = None,
        reference: np.ndarray | None = None,
    ) -> None:
        self.reconstructor = Reconstructor(reconstruction, backend, reference)
        self.segmentation = segmentation or SegmentationConfig()
        self._segmenters: dict[CropGeometry, Segmenter] = {}
        self._lock = threading.Lock()

    @classmethod
    def create(
        cls,
        reconstruction: ReconstructionConfig,
        segmentation: SegmentationConfig,
        backend: BackendName = "auto",
        fft_workers: int | None = None,
        reference: np.ndarray | None = None,
    ) -> FrameProcessor:
        """A processor on the named backend (what a worker process builds)."""
        return cls(reconstruction, segmentation, get_backend(backend, fft_workers), reference)

    @property
    def reconstruction(self) -> ReconstructionConfig:
        return self.reconstructor.config

    @property
    def default_crop(self) -> CropGeometry:
        return CropGeometry(self.segmentation.crop_size, self.segmentation.crop_pixel_size_um)

    def set_reference(self, reference: np.ndarray) -> None:
        """Subtract ``reference`` : (H, W) from now on."""
        self.reconstructor.set_reference(reference)

    def segmenter(self, crop: CropGeometry | None = None) -> Segmenter:
        """The segmenter cutting crops of ``crop`` (default: the configuration's)."""
        crop = crop or self.default_crop
        with self._lock:
            segmenter = self._segmenters.get(crop)
            if segmenter is None:
                config = self.segmentation.for_crop(crop.size_px, crop.pixel_size_um)
                segmenter = self._segmenters[crop] = Segmenter(config)
            return segmenter

    def process(self, holograms: Any, crop: CropGeometry | None = None) -> ProcessedFrames:
        """Reconstruct ``holograms`` : (H, W) or (N, H, W) and segment every frame.

        Raises ``ValueError`` (``HologramError`` and friends) when a hologram cannot
        be reconstructed.
        """
        crop = crop or self.default_crop
        segmenter = self.segmenter(crop)
        t0 = time.perf_counter()
        maps = self.reconstructor.reconstruct(holograms)
        t1 = time.perf_counter()
        segmentations = segmenter.segment(maps)
        return ProcessedFrames(maps, segmentations, crop, t1 - t0, time.perf_counter() - t1)
