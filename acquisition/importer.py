"""Import a lab's own cells into a crop dataset.

Two kinds of folder, each with a labels CSV (columns ``file`` and ``label``; an
empty label, or ``unlabeled``, marks a cell without class), and dclab's ``.rtdc``
files (:func:`import_rtdc`):

- OPD maps of single cells (.npy, .tif/.tiff, .mat), all of one size, in nm (or
  um, or radians with the wavelength);
- raw holograms, reconstructed and segmented here; every cell cut from a
  hologram takes that hologram's label.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .cropfile import CropDataset, qc_columns
from .errors import UnreadableFileError
from .frames import FrameProcessor
from .io import HOLOGRAM_SUFFIXES, read_hologram
from .segmentation import QC_FEATURES

MAP_SUFFIXES: tuple[str, ...] = (".npy", ".tif", ".tiff", ".mat")
#: The units OPD maps may come in (radians need the wavelength).
OPDUnit = Literal["nm", "um", "rad"]
UNLABELED = ("", "unlabeled", "-1")


class DatasetImportError(ValueError):
    """The folder, the labels or the files cannot be imported as they are."""


def read_labels(path: Path) -> dict[str, str]:
    """file name -> label ('' for unlabeled) from a CSV with columns file, label."""
    if not path.is_file():
        raise DatasetImportError(f"labels file {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "file" not in columns or "label" not in columns:
            raise DatasetImportError(
                f"labels file {path} needs the columns 'file' and 'label', found {columns}"
            )
        labels: dict[str, str] = {}
        for number, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            name = row["file"]
            if not name:
                raise DatasetImportError(f"{path}, line {number}: empty file name")
            if name in labels:
                raise DatasetImportError(f"{path}, line {number}: {name!r} is listed twice")
            label = row["label"]
            labels[name] = "" if label.lower() in UNLABELED else label
    if not labels:
        raise DatasetImportError(f"labels file {path} lists no files")
    return labels


def class_names_for(labels: dict[str, str], classes: list[str] | None) -> list[str]:
    """The dataset's class names: as given (checking every label), else sorted."""
    used = sorted({label for label in labels.values() if label})
    if classes is None:
        return used
    unknown = [label for label in used if label not in classes]
    if unknown:
        raise DatasetImportError(
            f"unknown label {unknown[0]!r} in the labels file; known classes: {', '.join(classes)}"
        )
    return classes


def _files(folder: Path, labels: dict[str, str], suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        raise DatasetImportError(f"{folder} is not a folder")
    present = {p.name: p for p in folder.iterdir() if p.suffix.lower() in suffixes}
    missing = [name for name in labels if name not in present]
    if missing:
        raise DatasetImportError(
            f"{len(missing)} file(s) of the labels file are not in {folder} (first: {missing[0]!r})"
        )
    unlisted = sorted(set(present) - set(labels))
    if unlisted:
        raise DatasetImportError(
            f"{len(unlisted)} file(s) in {folder} have no row in the labels file "
            f"(first: {unlisted[0]!r}); label them (an empty label marks unlabeled) or move them"
        )
    return [present[name] for name in labels]


def read_opd_map(path: Path) -> np.ndarray:
    """A 2-D OPD map from .npy, .tif or .mat (v5 or v7.3)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            array = _read_mat(path)
    except (DatasetImportError, UnreadableFileError):
        raise
    except Exception as exc:
        raise UnreadableFileError(
            f"cannot read OPD map {path}: {type(exc).__name__}: {exc}"
        ) from exc
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype.kind not in "uif":
        raise DatasetImportError(
            f"{path} must hold one 2-D numeric OPD map, got shape {array.shape} dtype {array.dtype}"
        )
    if not np.isfinite(array).all():
        raise DatasetImportError(f"{path} contains NaN or Inf")
    return array


def _read_mat(path: Path) -> np.ndarray:
    import h5py
    import scipy.io

    if h5py.is_hdf5(path):  # MATLAB v7.3 files are HDF5, arrays stored transposed
        with h5py.File(path, "r") as h5:
            content = {k: np.asarray(v).T for k, v in h5.items() if isinstance(v, h5py.Dataset)}
    else:
        content = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    arrays = {k: v for k, v in content.items() if isinstance(v, np.ndarray) and v.ndim == 2}
    for preferred in ("opd", "opd_nm", "phase", "data"):
        if preferred in arrays:
            return arrays[preferred]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise DatasetImportError(
        f"{path} holds {len(arrays)} 2-D arrays {sorted(arrays)}; name the OPD map 'opd'"
    )


def import_opd_maps(
    folder: Path,
    labels_csv: Path,
    pixel_size_um: float,
    wavelength_nm: float,
    unit: OPDUnit = "nm",
    classes: list[str] | None = None,
) -> CropDataset:
    """Single-cell OPD maps of one size, one file each, into a crop dataset."""
    labels = read_labels(labels_csv)
    names = class_names_for(labels, classes)
    paths = _files(folder, labels, MAP_SUFFIXES)
    maps = [read_opd_map(p) for p in paths]
    shapes = sorted({m.shape for m in maps})
    if len(shapes) > 1:
        first = {
            s: next(p.name for p, m in zip(paths, maps, strict=True) if m.shape == s)
            for s in shapes
        }
        raise DatasetImportError(
            "the OPD maps have mixed sizes: "
            + ", ".join(f"{s[0]}x{s[1]} (e.g. {first[s]})" for s in shapes)
            + "; crop or resample them to one size first"
        )
    scale = {"nm": 1.0, "um": 1000.0, "rad": wavelength_nm / (2 * math.pi)}[unit]
    opd = np.stack(maps).astype(np.float32) * np.float32(scale)
    label = [names.index(labels[p.name]) if labels[p.name] else -1 for p in paths]
    return CropDataset(
        opd=opd,
        label=np.asarray(label),
        class_names=names,
        pixel_size_um=pixel_size_um,
        wavelength_nm=wavelength_nm,
        source=f"imported OPD maps from {folder} (unit {unit}) with labels {labels_csv}",
        qc={"file_index": np.arange(len(paths), dtype=np.int32)},
    )


def import_holograms(
    folder: Path,
    labels_csv: Path,
    processor: FrameProcessor,
    classes: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CropDataset:
    """Raw holograms: reconstruct, segment, and label each cell by its hologram's row."""
    labels = read_labels(labels_csv)
    names = class_names_for(labels, classes)
    paths = _files(folder, labels, HOLOGRAM_SUFFIXES)
    crops: list[np.ndarray] = []
    label: list[int] = []
    rows: list[dict[str, float | bool]] = []
    for number, path in enumerate(paths):
        holo = read_hologram(path)
        try:
            processed = processor.process(holo.frames)
        except ValueError as exc:
            raise DatasetImportError(f"{path}: {exc}") from exc
        for cell in processed.cells:
            crops.append(cell.crop_nm)
            label.append(names.index(labels[path.name]) if labels[path.name] else -1)
            rows.append({**cell.qc, "file_index": float(number), "frame": float(cell.frame)})
        if progress:
            progress(number + 1, len(paths))
    crop = processor.default_crop
    reconstruction = processor.reconstruction
    return CropDataset(
        opd=np.stack(crops) if crops else np.zeros((0, *crop.shape), np.float32),
        label=np.asarray(label, dtype=np.int16),
        class_names=names,
        pixel_size_um=crop.pixel_size_um,
        wavelength_nm=reconstruction.wavelength_nm,
        source=f"imported holograms from {folder} with labels {labels_csv}, reconstructed "
        f"(pixel {reconstruction.pixel_size_um} um, sample half "
        f"{reconstruction.sample_half}) and segmented",
        qc=qc_columns(rows, [*QC_FEATURES, "file_index", "frame"]),
    )


#: dclab's scalar features kept as QC columns, under the crop datasets' names.
RTDC_QC = {"area_um": "area_um2", "qpi_dm": "dry_mass_pg"}
#: The line of topgan's export log that names a score's class.
_SCORE_LINE = re.compile(r"^ml_score_([a-z0-9]{3}): (.+)$")


def import_rtdc(
    path: Path,
    label: str | None = None,
    labels_csv: Path | None = None,
    classes: list[str] | None = None,
    wavelength_nm: float | None = None,
) -> CropDataset:
    """A dclab ``.rtdc`` file's phase images (``qpi_pha``, rad) as OPD crops (nm).

    Labels: ``label`` for every cell, else a CSV (``file`` holds the event's index in
    the file, from 0), else ``ml_class`` (the class of the index into the sorted
    ``ml_score_xxx`` names, named as topgan's export log names them, or by
    ``classes``), else none. The wavelength is the file's ``[qpi] wavelength`` unless
    given; the pixel size is its ``[imaging] pixel size``.
    """
    import dclab

    if not path.is_file():
        raise DatasetImportError(f"{path} does not exist")
    try:
        dataset = dclab.new_dataset(path)
    except Exception as exc:  # dclab raises its own, and h5py's, on a bad file
        raise DatasetImportError(f"{path} is not a readable .rtdc file: {exc}") from None
    with dataset as ds:
        if "qpi_pha" not in ds.features:
            raise DatasetImportError(
                f"{path} carries no qpi_pha (phase images): nothing to import as OPD crops"
            )
        wavelength = wavelength_nm or float(ds.config["qpi"].get("wavelength", 0) or 0)
        if not wavelength > 0:
            raise DatasetImportError(
                f"{path} does not say its wavelength ([qpi] wavelength): give --wavelength-nm"
            )
        pixel = float(ds.config["imaging"].get("pixel size", 0) or 0)
        if not pixel > 0:
            raise DatasetImportError(f"{path} does not say its pixel size ([imaging] pixel size)")
        phase = np.asarray(ds["qpi_pha"][:], dtype=np.float64)
        if phase.ndim != 3 or not len(phase):
            raise DatasetImportError(f"{path}: qpi_pha holds no images (shape {phase.shape})")
        opd = (phase * (wavelength / (2 * math.pi))).astype(np.float32)
        n = len(opd)
        qc = {
            ours: np.asarray(ds[name], dtype=np.float64)
            for name, ours in RTDC_QC.items()
            if name in ds.features
        }
        qc["event_index"] = np.arange(n, dtype=np.int32)
        if label is not None:
            names, labels = [label], np.zeros(n, dtype=np.int16)
        elif labels_csv is not None:
            by_index = read_labels(labels_csv)
            names = class_names_for(by_index, classes)
            labels = np.full(n, -1, dtype=np.int16)
            for key, value in by_index.items():
                if not key.isdigit() or int(key) >= n:
                    raise DatasetImportError(
                        f"labels file {labels_csv}: {key!r} is not an event index of {path} "
                        f"(0 to {n - 1})"
                    )
                labels[int(key)] = names.index(value) if value else -1
        elif "ml_class" in ds.features:
            codes = sorted(
                f.removeprefix("ml_score_") for f in ds.features if f.startswith("ml_score_")
            )
            named = _score_classes(ds.logs)
            names = classes or [named.get(code, code) for code in codes]
            if len(names) != len(codes):
                raise DatasetImportError(
                    f"{path} scores {len(codes)} classes ({', '.join(codes)}); --classes names "
                    f"{len(names)}"
                )
            labels = np.asarray(ds["ml_class"], dtype=np.int16)
        else:
            names, labels = [], np.full(n, -1, dtype=np.int16)
        source = f"imported from {path.name} (qpi_pha at {wavelength:g} nm)"
    return CropDataset(
        opd=opd,
        label=labels,
        class_names=names,
        pixel_size_um=pixel,
        wavelength_nm=wavelength,
        source=source,
        qc=qc,
    )


def _score_classes(logs: Any) -> dict[str, str]:
    """score code -> class name, from topgan's export log (when the file has it)."""
    named: dict[str, str] = {}
    lines = logs["topgan-export"] if logs is not None and "topgan-export" in logs else []
    for line in lines:
        match = _SCORE_LINE.match(str(line).strip())
        if match:
            named[match.group(1)] = match.group(2).strip()
    return named
