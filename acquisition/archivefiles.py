"""The crop archive's files read back, in either of its formats (:mod:`service.archive`
writes them): crop datasets in HDF5 (``.h5``, :mod:`acquisition.cropfile`) or dclab's
``.rtdc`` files (:mod:`acquisition.rtdcfile`), each named
``crops-YYYYmmdd-HHMMSS-<seq>.<suffix>`` and ``.part`` while being written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cropfile import (
    Classified,
    CropDataset,
    read_attributes,
    read_classified,
    read_crop_dataset,
    read_qc,
)
from .rtdcfile import read_rtdc_opd, read_rtdc_rows

#: An archive file's name: its sequence number, format and whether it is being written.
FILE_NAME = re.compile(r"crops-\d{8}-\d{6}-(\d+)\.(h5|rtdc)(\.part)?")
#: The suffixes of the archive's complete files.
SUFFIXES = (".h5", ".rtdc")
PART = ".part"


@dataclass
class ArchiveFile:
    """An archive file's classifier results and QC, without its crops."""

    path: Path
    results: Classified
    model: tuple[str, str]  # (name, version)
    class_names: list[str]
    qc: dict[str, np.ndarray]
    pixel_size_um: float
    wavelength_nm: float


def complete_files(folder: Path) -> list[Path]:
    """The files of either format in ``folder`` that are not being written, by name."""
    return sorted(p for suffix in SUFFIXES for p in folder.glob(f"*{suffix}"))


def unfinished_files(folder: Path) -> list[Path]:
    """The archive's files still being written (``.part``)."""
    return sorted(p for suffix in SUFFIXES for p in folder.glob(f"*{suffix}{PART}"))


def read_archive_file(path: Path) -> ArchiveFile | None:
    """``path``'s results and QC; None when it carries no classifier's results (a crop
    dataset, not the archive's). Raises ValueError, KeyError or h5py's errors
    (:data:`~acquisition.cropfile.HDF5_ERRORS`) when it cannot be read as one."""
    if path.suffix == ".rtdc":
        rows = read_rtdc_rows(path)
        if len(rows.models) != 1:
            raise ValueError(f"{path} names {len(rows.models)} models: not an archive file")
        return ArchiveFile(
            path,
            rows.results,
            rows.models[0],
            rows.classes,
            rows.qc,
            rows.pixel_size_um,
            rows.wavelength_nm,
        )
    found = read_classified(path)
    if found is None:
        return None
    class_names, pixel_size_um, wavelength_nm = read_attributes(path)
    return ArchiveFile(
        path, found[0], found[1], class_names, read_qc(path), pixel_size_um, wavelength_nm
    )


def read_archive_crops(path: Path, rows: np.ndarray) -> CropDataset:
    """The crops of ``rows`` (increasing indices, at least one) of an archive file,
    OPD in nm, unlabeled, with their QC."""
    if path.suffix == ".rtdc":
        found = read_rtdc_rows(path)
        return CropDataset(
            opd=read_rtdc_opd(path, rows, found.wavelength_nm),
            label=np.full(len(rows), -1, dtype=np.int16),
            class_names=found.classes,
            pixel_size_um=found.pixel_size_um,
            wavelength_nm=found.wavelength_nm,
            source=f"crop archive file {path.name}",
            qc={name: values[rows] for name, values in found.qc.items()},
        )
    return read_crop_dataset(path, rows)
