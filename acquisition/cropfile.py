"""Crop datasets in HDF5 (DESIGN, "Files"): one file per set of single-cell OPD crops.

- ``opd``: float32 (N, H, W), nanometres; ``label``: int16 (N,), -1 for unlabeled
- attributes ``class_names``, ``pixel_size_um``, ``wavelength_nm``, ``source``
- optional ``qc/<feature>`` datasets of length N
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class CropDataset:
    """A crop dataset in memory."""

    opd: np.ndarray
    label: np.ndarray
    class_names: list[str]
    pixel_size_um: float
    wavelength_nm: float
    source: str
    qc: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.opd = np.asarray(self.opd, dtype=np.float32)
        self.label = np.asarray(self.label, dtype=np.int16)
        if self.opd.ndim != 3:
            raise ValueError(f"opd must be (N, H, W), got shape {self.opd.shape}")
        n = self.opd.shape[0]
        if self.label.shape != (n,):
            raise ValueError(f"label must have shape ({n},), got {self.label.shape}")
        if self.label.size and (self.label.min() < -1 or self.label.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must be -1 (unlabeled) or index class_names {self.class_names}, "
                f"got values from {self.label.min()} to {self.label.max()}"
            )
        for name, values in self.qc.items():
            if len(values) != n:
                raise ValueError(f"qc/{name} has {len(values)} values for {n} crops")

    def __len__(self) -> int:
        return int(self.opd.shape[0])


def write_crop_dataset(path: str | Path, data: CropDataset) -> None:
    """Write ``data`` to ``path`` (replaced if it exists)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        h5.create_dataset(
            "opd",
            data=data.opd,
            chunks=(1, *data.opd.shape[1:]) if len(data) else None,
            compression="gzip",
            compression_opts=4,
            shuffle=True,
        )
        h5.create_dataset("label", data=data.label)
        h5.attrs["class_names"] = list(data.class_names)
        h5.attrs["pixel_size_um"] = float(data.pixel_size_um)
        h5.attrs["wavelength_nm"] = float(data.wavelength_nm)
        h5.attrs["source"] = data.source
        for name, values in data.qc.items():
            h5.create_dataset(f"qc/{name}", data=np.asarray(values))


def read_crop_dataset(path: str | Path) -> CropDataset:
    """Read a crop dataset written by :func:`write_crop_dataset` (or by a lab)."""
    import h5py

    with h5py.File(path, "r") as h5:
        qc = {name: h5["qc"][name][()] for name in h5["qc"]} if "qc" in h5 else {}
        names = h5.attrs.get("class_names", [])
        return CropDataset(
            opd=h5["opd"][()],
            label=h5["label"][()],
            class_names=[n.decode() if isinstance(n, bytes) else str(n) for n in names],
            pixel_size_um=float(h5.attrs["pixel_size_um"]),
            wavelength_nm=float(h5.attrs["wavelength_nm"]),
            source=str(h5.attrs.get("source", "")),
            qc=qc,
        )


def qc_columns(
    rows: Sequence[Mapping[str, float | bool]], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-cell QC dictionaries -> one array per feature (booleans as uint8)."""
    columns: dict[str, np.ndarray] = {}
    for name in names:
        values = [row[name] for row in rows]
        is_flag = bool(values) and all(isinstance(v, bool | np.bool_) for v in values)
        columns[name] = np.asarray(values, dtype=np.uint8 if is_flag else np.float32)
    return columns
