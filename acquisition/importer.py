"""Import a lab's own cells into a crop dataset.

Two kinds of folder, each with a labels CSV (columns ``file`` and ``label``; an
empty label, or ``unlabeled``, marks a cell without class), dclab's ``.rtdc``
files (:func:`import_rtdc`) and the service's crop archive (:func:`import_archive`):

- OPD maps of single cells (.npy, .tif/.tiff, .mat), all of one size, in nm (or
  um, or radians with the wavelength);
- raw holograms, reconstructed and segmented here; every cell cut from a
  hologram takes that hologram's label;
- a crop archive's run of one pure cell line: one label for every cell of it.

:func:`merge_datasets` joins such imports (one per cell line, say) into one
labelled training file.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .archivefiles import complete_files, read_archive_crops, read_archive_file, unfinished_files
from .cropfile import HDF5_ERRORS, CropDataset, qc_columns
from .errors import UnreadableFileError
from .frames import FrameProcessor
from .io import HOLOGRAM_SUFFIXES, read_hologram
from .rtdcfile import dataset_log, opd_nm
from .segmentation import QC_FEATURES, QC_FLAGS

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


def import_rtdc(
    path: Path,
    label: str | None = None,
    labels_csv: Path | None = None,
    classes: list[str] | None = None,
    wavelength_nm: float | None = None,
    unlabeled: bool = False,
) -> CropDataset:
    """A dclab ``.rtdc`` file's phase images (``qpi_pha``, rad) as OPD crops (nm).

    Labels: ``label`` for every cell, else a CSV (``file`` holds the event's index in
    the file, from 0), else ``ml_class`` (the class of the index into the sorted
    ``ml_score_xxx`` names, named as topgan's export log names them, or by
    ``classes``), else none; with ``unlabeled`` none (training's unlabeled pool: an
    ``ml_class`` is a prediction, not ground truth). The wavelength is the file's
    ``[qpi] wavelength`` unless given; the pixel size is its ``[imaging] pixel size``.
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
        phase = ds["qpi_pha"]
        if phase.ndim != 3 or not len(phase):
            raise DatasetImportError(f"{path}: qpi_pha holds no images (shape {phase.shape})")
        opd = np.empty(phase.shape, dtype=np.float32)
        for start in range(0, len(opd), 256):  # not the whole file in float64 at once
            opd[start : start + 256] = opd_nm(phase[start : start + 256], wavelength)
        n = len(opd)
        qc = {
            ours: np.asarray(ds[name], dtype=np.float64)
            for name, ours in RTDC_QC.items()
            if name in ds.features
        }
        qc["event_index"] = np.arange(n, dtype=np.int32)
        if unlabeled:
            names, labels = [], np.full(n, -1, dtype=np.int16)
        elif label is not None:
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
            named = dataset_log(ds).classes
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


@dataclass(frozen=True)
class ArchiveSelection:
    """What :func:`import_archive` took from the archive and what it left out, and why."""

    files: int  # complete archive files that hold crops of the selection
    unfinished: int  # files still being written (.part), never read
    crops: int  # archived crops grabbed in the time window
    flagged: dict[str, int]  # crops in the window with each QC flag (a crop may have several)
    flagged_crops: int  # crops in the window with a QC flag (left out unless kept)
    other_views: int  # crops left out: another view of the same cell was kept
    kept: int


@dataclass
class _ArchiveFile:
    """An archive file's selected rows (increasing) and their results' columns."""

    path: Path
    rows: np.ndarray
    result_id: np.ndarray
    event_id: np.ndarray
    frame_id: np.ndarray

    def keep(self, mask: np.ndarray) -> None:
        self.rows, self.result_id = self.rows[mask], self.result_id[mask]
        self.event_id, self.frame_id = self.event_id[mask], self.frame_id[mask]


def import_archive(
    folder: Path,
    label: str,
    since: float | None = None,
    until: float | None = None,
    all_views: bool = False,
    keep_flagged: bool = False,
) -> tuple[CropDataset, ArchiveSelection]:
    """The crops of a crop archive grabbed in [``since``, ``until``) (Unix s), all
    labelled ``label``: a run of one pure cell line.

    Only complete files (``*.h5``, ``*.rtdc``: the archive's two formats) are read; one
    still being written (``.part``) is left out, and counted. Crops with a QC flag
    (:data:`QC_FLAGS`: clipped, touching, out of focus) are left out unless
    ``keep_flagged``. A cell in flow is archived once per frame it was classified in
    (its views share an ``event_id``): one view per cell is kept, the middle one by
    frame (the lower middle for an even count), unless ``all_views``; views of one
    cell are nearly the same image, and a training set that holds several of them
    counts one cell several times and lets them straddle the validation split. Crops
    without an event (-1: archives from before events were recorded) are each kept.
    """
    if not label.strip():
        raise DatasetImportError("--label must name the run's cell line")
    if not folder.is_dir():
        raise DatasetImportError(f"--archive {folder}: no such folder")
    if since is not None and until is not None and until <= since:
        raise DatasetImportError(f"--until ({until:.0f}) must come after --since ({since:.0f})")
    files = complete_files(folder)
    unfinished = len(unfinished_files(folder))
    if not files:
        still = f"; {unfinished} still being written (.part)" if unfinished else ""
        raise DatasetImportError(f"{folder} holds no complete archive files (*.h5, *.rtdc){still}")
    chosen: list[_ArchiveFile] = []
    crops = 0
    flagged = dict.fromkeys(QC_FLAGS, 0)
    flagged_crops = 0
    for path in files:
        try:
            found = read_archive_file(path)
        except (*HDF5_ERRORS, KeyError, TypeError, ValueError) as exc:
            raise DatasetImportError(f"{path} is not a crop archive file: {exc}") from None
        if found is None:
            raise DatasetImportError(
                f"{path} is not a crop archive file (it carries no result_id); a labelled "
                "crop dataset joins others with 'topgan dataset merge'"
            )
        results, qc = found.results, found.qc
        keep = np.ones(len(results), dtype=bool)
        if since is not None:
            keep &= results.grabbed_at >= since
        if until is not None:
            keep &= results.grabbed_at < until
        crops += int(keep.sum())
        bad = np.zeros_like(keep)
        for flag in QC_FLAGS:
            if flag in qc:
                hit = keep & (np.asarray(qc[flag]) != 0)
                flagged[flag] += int(hit.sum())
                bad |= hit
        flagged_crops += int(bad.sum())
        if not keep_flagged:
            keep &= ~bad
        rows = np.flatnonzero(keep)
        if len(rows):
            chosen.append(
                _ArchiveFile(
                    path,
                    rows,
                    results.result_id[rows],
                    results.event_id[rows],
                    results.frame_id[rows],
                )
            )
    other_views = 0
    if not all_views:
        other_views = _one_view_per_event(chosen)
    chosen = [f for f in chosen if len(f.rows)]
    kept = sum(len(f.rows) for f in chosen)
    selection = ArchiveSelection(
        len(chosen), unfinished, crops, flagged, flagged_crops, other_views, kept
    )
    if not kept:
        window = _window(since, until)
        raise DatasetImportError(
            f"no crops to import from {folder}{window}: {crops} archived"
            + (f", {flagged_crops} of them QC-flagged (--keep-flagged keeps them)" if crops else "")
        )
    sets = [read_archive_crops(f.path, f.rows) for f in chosen]
    _check_alike([(f.path, d) for f, d in zip(chosen, sets, strict=True)])
    names = set.intersection(*(set(d.qc) for d in sets))
    qc_out = {name: np.concatenate([d.qc[name] for d in sets]) for name in sorted(names)}
    for name in ("result_id", "event_id", "frame_id"):
        qc_out[name] = np.concatenate([getattr(f, name) for f in chosen])
    opd = np.concatenate([d.opd for d in sets])
    how = [
        "all views" if all_views else "one view per cell",
        "QC-flagged crops kept" if keep_flagged else "QC-flagged crops left out",
    ]
    return (
        CropDataset(
            opd=opd,
            label=np.zeros(len(opd), dtype=np.int16),
            class_names=[label],
            pixel_size_um=sets[0].pixel_size_um,
            wavelength_nm=sets[0].wavelength_nm,
            source=f"crop archive {folder}{_window(since, until)}, labelled {label}: "
            f"{kept} of {crops} crops from {len(chosen)} file(s), {', '.join(how)}",
            qc=qc_out,
        ),
        selection,
    )


def _one_view_per_event(files: Sequence[_ArchiveFile]) -> int:
    """Keep one view of each event (the middle one by frame, then result id) across
    ``files``, in place; crops without an event (-1) are all kept. Returns how many
    views were left out."""
    if not files:
        return 0
    owner = np.concatenate([np.full(len(f.rows), i) for i, f in enumerate(files)])
    event = np.concatenate([f.event_id for f in files])
    frame = np.concatenate([f.frame_id for f in files])
    result = np.concatenate([f.result_id for f in files])
    keep = event < 0
    order = np.lexsort((result, frame, event))  # by event, then frame, then result id
    grouped = event[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    middle = order[starts + (counts - 1) // 2]
    keep[middle[event[middle] >= 0]] = True
    for i, f in enumerate(files):
        f.keep(keep[owner == i])
    return int((~keep).sum())


def _window(since: float | None, until: float | None) -> str:
    """The time window in words, for messages."""
    from datetime import UTC, datetime

    def when(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")

    parts = ([f"from {when(since)}"] if since is not None else []) + (
        [f"until {when(until)}"] if until is not None else []
    )
    return f" ({' '.join(parts)})" if parts else ""


def _check_alike(parts: Sequence[tuple[Path, CropDataset]]) -> None:
    """One crop size, pixel size and wavelength for every part, else a one-line error."""
    first, ref = parts[0]
    for path, data in parts[1:]:
        if data.opd.shape[1:] != ref.opd.shape[1:]:
            (h, w), (h0, w0) = data.opd.shape[1:], ref.opd.shape[1:]
            raise DatasetImportError(
                f"{path} holds crops of {h}x{w} px, {first} of {h0}x{w0} px: "
                "every file must have one crop size"
            )
        if not math.isclose(data.pixel_size_um, ref.pixel_size_um, rel_tol=1e-6):
            raise DatasetImportError(
                f"{path} has crops at {data.pixel_size_um:g} um per pixel, {first} at "
                f"{ref.pixel_size_um:g} um: every file must have one pixel size"
            )
        if not math.isclose(data.wavelength_nm, ref.wavelength_nm, rel_tol=1e-6):
            raise DatasetImportError(
                f"{path} was recorded at {data.wavelength_nm:g} nm, {first} at "
                f"{ref.wavelength_nm:g} nm: every file must have one wavelength"
            )


def merge_datasets(
    parts: Sequence[tuple[Path, CropDataset]], classes: list[str] | None = None
) -> tuple[CropDataset, list[str]]:
    """Join crop datasets (one import per pure cell line, say) into one labelled set.

    Every part must have the same crop size, pixel size and wavelength. The classes
    are those the parts' crops are labelled with, sorted by name (so the order does
    not depend on the order of the files), or ``classes`` (which must hold every
    label used); a class that two parts share is one class. Unlabeled crops stay
    unlabeled. Only the ``qc`` columns that every part has are kept; returns the set
    and the names of the columns left out.
    """
    if not parts:
        raise DatasetImportError("nothing to merge: name at least one crop dataset")
    _check_alike(parts)
    used = {
        data.class_names[i]: path
        for path, data in parts
        for i in np.unique(data.label[data.label >= 0])
    }
    if classes is None:
        names = sorted(used)
    else:
        names = list(classes)
        unknown = sorted(set(used) - set(names))
        if unknown:
            raise DatasetImportError(
                f"{used[unknown[0]]} has crops labelled {unknown[0]!r}, which --classes "
                f"({', '.join(names)}) does not name"
            )
    labels = []
    for _path, data in parts:
        mapping = np.asarray([names.index(n) if n in used else -1 for n in data.class_names])
        labels.append(
            np.where(data.label >= 0, mapping[np.maximum(data.label, 0)], -1)
            if len(mapping)
            else np.full(len(data), -1)
        )
    common = set.intersection(*(set(data.qc) for _, data in parts))
    left_out = sorted(set().union(*(set(data.qc) for _, data in parts)) - common)
    counts = []
    for path, data in parts:
        named = [data.class_names[i] for i in data.label[data.label >= 0]]
        tally = ", ".join(f"{n} {named.count(n)}" for n in sorted(set(named))) or "unlabeled"
        counts.append(f"{path} ({len(data)} crops: {tally})")
    merged = CropDataset(
        opd=np.concatenate([data.opd for _, data in parts]),
        label=np.concatenate(labels),
        class_names=names,
        pixel_size_um=parts[0][1].pixel_size_um,
        wavelength_nm=parts[0][1].wavelength_nm,
        source="merged from " + "; ".join(counts),
        qc={name: np.concatenate([data.qc[name] for _, data in parts]) for name in sorted(common)},
    )
    return merged, left_out
