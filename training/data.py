"""Training data: crop datasets from files or folders, augmentation.

The OPD normalisation is :class:`models.manifest.Normalization` (``fit`` and ``apply``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from acquisition.cropfile import CropDataset, read_crop_dataset
from acquisition.importer import DatasetImportError, import_rtdc

#: The crop files a folder of training data may hold: crop datasets, dclab's files.
CROP_SUFFIXES = (".h5", ".rtdc")


@dataclass
class Crops:
    """Crops pooled from one or more dataset files."""

    opd: np.ndarray  # (N, H, W) float32 nm
    label: np.ndarray  # (N,) int, -1 unlabeled
    class_names: list[str]
    pixel_size_um: float
    files: list[Path]
    # The files' common illumination wavelength; None when they differ (defocus
    # augmentation needs it, nothing else does).
    wavelength_nm: float | None = None


def dataset_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders into the crop files they hold (``.h5`` crop datasets and dclab's
    ``.rtdc``: a crop archive of either format), sorted by name; check that files exist."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for suffix in CROP_SUFFIXES for p in path.glob(f"*{suffix}"))
            if not found:
                raise ValueError(f"folder {path} holds no crop files (.h5, .rtdc)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path} does not exist")
    return files


def load_crops(paths: Sequence[str | Path]) -> Crops:
    """The crops of the files and folders given. A ``.rtdc`` file is read by the
    importer (its phase images as OPD) and unlabeled: its ``ml_class`` is a
    prediction (label one with ``topgan dataset import --rtdc`` to train on labels)."""
    files = dataset_files(paths)
    sets: list[CropDataset] = []
    for f in files:
        try:
            if f.suffix == ".rtdc":
                sets.append(import_rtdc(f, unlabeled=True))
            else:
                sets.append(read_crop_dataset(f))
        except DatasetImportError as exc:
            raise ValueError(str(exc)) from None
        except (OSError, KeyError) as exc:
            raise ValueError(f"{f} is not a crop dataset: {exc}") from None
    shapes = {s.opd.shape[1:] for s in sets if len(s)}
    pixels = {round(s.pixel_size_um, 6) for s in sets}
    if len(shapes) > 1 or len(pixels) > 1:
        raise ValueError(
            f"the files mix crop sizes {sorted(shapes)} or pixel sizes {sorted(pixels)}"
        )
    names = sets[0].class_names
    for s, f in zip(sets, files, strict=True):
        if s.class_names != names and (s.label >= 0).any():
            raise ValueError(f"{f} has classes {s.class_names}, {files[0]} has {names}")
    opd = np.concatenate([s.opd for s in sets])
    if len(opd) == 0:
        raise ValueError("the data files hold no crops")
    wavelengths = {round(s.wavelength_nm, 6) for s in sets}
    return Crops(
        opd,
        np.concatenate([s.label for s in sets]),
        names,
        sets[0].pixel_size_um,
        files,
        sets[0].wavelength_nm if len(wavelengths) == 1 else None,
    )


def dihedral(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of (N, C, H, W) under one of the 8 rotations and reflections, at random."""
    choice = torch.randint(0, 8, (batch.shape[0],), generator=generator)
    out = batch.clone()
    for k in range(8):
        idx = (choice == k).nonzero().flatten()
        if len(idx) == 0:
            continue
        x = torch.rot90(batch[idx], k % 4, dims=(2, 3))
        out[idx] = torch.flip(x, dims=(3,)) if k >= 4 else x
    return out
