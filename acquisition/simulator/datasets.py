"""Crop datasets of simulated cells.

The full path sends every cell through the whole instrument: phantom ->
flipping-interferometer hologram -> reconstruction -> segmentation -> crop, so
crops carry real reconstruction artefacts (noise, filtering, background fit,
neighbours masked out). The direct path renders each phantom straight at the
crop pixel size and adds the reconstruction's noise level; it is much faster,
meant for large unlabeled pretraining pools, and is recorded in the file's
``source``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.ndimage as ndi

from ..backend import ArrayBackend, get_backend
from ..cropfile import CropDataset, qc_columns
from ..frames import FrameProcessor
from ..reconstruction import ReconstructionConfig
from ..segmentation import QC_FEATURES, SegmentationConfig
from .phantoms import check_line, render_cell
from .scene import FlowSimulator, SceneConfig

Progress = Callable[[int, int], None]

#: OPD noise of the direct path, nm RMS: the background noise that the full path's
#: reconstruction shows at the default camera settings (measured, ~1.9 nm).
DIRECT_NOISE_NM = 2.0

#: Sperm are not round and carry a thin tail: they need other segmentation limits.
SPERM_SEGMENTATION = SegmentationConfig(
    min_area_um2=8.0,  # a head alone covers about 10 um^2; debris stays below
    min_circularity=0.0,
    touching="flag",
    split_levels=(),
)


def segmentation_for(line: str, crop_size: int, crop_pixel_size_um: float) -> SegmentationConfig:
    base = SPERM_SEGMENTATION if line == "sperm" else SegmentationConfig()
    return base.for_crop(crop_size, crop_pixel_size_um)


def _labels(lines: list[str]) -> tuple[list[str], dict[str, int]]:
    """Class names and label per line; the sperm pool is unlabeled (-1)."""
    labelled = [line for line in lines if line != "sperm"]
    return labelled, {line: labelled.index(line) if line != "sperm" else -1 for line in lines}


def simulate_full(
    lines: list[str],
    count: int,
    seed: int = 0,
    scene: SceneConfig | None = None,
    crop_size: int = 128,
    crop_pixel_size_um: float = 0.25,
    backend: ArrayBackend | None = None,
    progress: Progress | None = None,
    max_frames_per_cell: int = 20,
) -> CropDataset:
    """``count`` crops of each line through the whole instrument."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    lines = [check_line(line) for line in lines]
    scene = scene or SceneConfig()
    simulator = FlowSimulator(scene, lines, seed=seed)
    reconstruction = ReconstructionConfig(
        wavelength_nm=scene.optics.wavelength_nm,
        pixel_size_um=scene.optics.pixel_size_um,
        sample_half=scene.sample_half,
    )
    backend = backend or get_backend("auto")
    class_names, label_of = _labels(lines)
    crops: list[np.ndarray] = []
    labels: list[int] = []
    qc_rows: list[dict[str, float | bool]] = []
    done, total = 0, count * len(lines)
    frame_index = 0
    for line in lines:
        processor = FrameProcessor(
            reconstruction,
            segmentation_for(line, crop_size, crop_pixel_size_um),
            backend,
            simulator.reference,
        )
        found = 0
        budget = max_frames_per_cell * count
        while found < count:
            if budget == 0:
                raise RuntimeError(
                    f"the {line} frames yield too few crops ({found} in "
                    f"{max_frames_per_cell * count} frames): check the segmentation settings"
                )
            budget -= 1
            frame = simulator.frame(frame_index, line=line)
            frame_index += 1
            truths = [o for o in frame.objects if o.kind == "cell"]
            for cell in processor.process(frame.hologram).cells:
                if found == count:
                    break
                nearest = min(
                    truths,
                    key=lambda o: math.dist((o.y_px, o.x_px), cell.position_px),
                    default=None,
                )
                qc = dict(cell.qc)
                qc["true_diameter_um"] = nearest.diameter_um if nearest else math.nan
                qc["true_dry_mass_pg"] = nearest.dry_mass_pg if nearest else math.nan
                qc["frame"] = float(frame_index - 1)
                crops.append(cell.crop_nm)
                labels.append(label_of[line])
                qc_rows.append(qc)
                found += 1
                done += 1
                if progress:
                    progress(done, total)
    optics = scene.optics
    source = (
        f"simulated, full path (phantom -> flipping-interferometer hologram -> reconstruction "
        f"-> segmentation); lines {','.join(lines)}; seed {seed}; frame {scene.shape[0]}x"
        f"{scene.shape[1]}, pixel {optics.pixel_size_um} um, NA {optics.numerical_aperture}, "
        f"carrier {optics.carrier}, {optics.bit_depth}-bit, {scene.cells_per_frame} cells/frame; "
        f"{frame_index} frames"
    )
    names = [*QC_FEATURES, "true_diameter_um", "true_dry_mass_pg", "frame"]
    return CropDataset(
        opd=np.stack(crops),
        label=np.asarray(labels),
        class_names=class_names,
        pixel_size_um=crop_pixel_size_um,
        wavelength_nm=optics.wavelength_nm,
        source=source,
        qc=qc_columns(qc_rows, names),
    )


def simulate_direct(
    lines: list[str],
    count: int,
    seed: int = 0,
    crop_size: int = 128,
    crop_pixel_size_um: float = 0.25,
    wavelength_nm: float = 632.8,
    noise_nm: float = DIRECT_NOISE_NM,
    progress: Progress | None = None,
) -> CropDataset:
    """``count`` crops of each line rendered straight at the crop pixel size."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    lines = [check_line(line) for line in lines]
    class_names, label_of = _labels(lines)
    crops = np.empty((count * len(lines), crop_size, crop_size), dtype=np.float32)
    labels: list[int] = []
    rows: list[dict[str, float | bool]] = []
    for li, line in enumerate(lines):
        for i in range(count):
            rng = np.random.default_rng([seed, li, i])
            phantom = render_cell(line, rng, crop_pixel_size_um, size=crop_size)
            opd = phantom.opd_nm
            # Centre on the OPD centre of mass, as the segmentation does.
            cy, cx = ndi.center_of_mass(np.clip(opd, 0, None))
            c = (crop_size - 1) / 2
            opd = ndi.shift(opd, (c - cy, c - cx), order=1, mode="constant")
            noise = ndi.gaussian_filter(rng.standard_normal(opd.shape), 1.0)
            noise *= noise_nm / max(float(noise.std()), 1e-12)
            crops[li * count + i] = opd + noise
            labels.append(label_of[line])
            rows.append(
                {
                    "true_diameter_um": phantom.params.get("diameter_um", math.nan),
                    "true_dry_mass_pg": phantom.params["dry_mass_pg"],
                    "peak_opd_nm": float(opd.max()),
                }
            )
            if progress:
                progress(li * count + i + 1, count * len(lines))
    source = (
        f"simulated, direct path (phantom rendered at the crop pixel size plus {noise_nm} nm "
        f"RMS correlated noise; no hologram, no reconstruction); lines {','.join(lines)}; "
        f"seed {seed}"
    )
    return CropDataset(
        opd=crops,
        label=np.asarray(labels),
        class_names=class_names,
        pixel_size_um=crop_pixel_size_um,
        wavelength_nm=wavelength_nm,
        source=source,
        qc=qc_columns(rows, ["true_diameter_um", "true_dry_mass_pg", "peak_opd_nm"]),
    )
