"""Crop datasets in HDF5: one file per set of single-cell OPD crops (docs/design.md,
"Files (contract)").

- ``opd``: float32 (N, H, W), nanometres; ``label``: int16 (N,), -1 for unlabeled
- attributes ``class_names``, ``pixel_size_um``, ``wavelength_nm``, ``source``
- optional ``qc/<feature>`` datasets of length N

A file may also carry a classifier's results (:class:`Classified`; the crop archive's
files, :mod:`service.archive`): one value per crop of ``result_id``, ``predicted``,
``probability``, ``frame_id``, ``grabbed_at`` and ``event_id``, and the attributes
``model_name`` and ``model_version`` (:func:`read_classified` reads them back).

This module is the one place that lays the format out in HDF5. :class:`CropWriter`
writes a file row by row (:func:`write_crop_dataset` writes a whole set through it)
and :func:`salvage_crop_file` makes a file cut short mid-write readable. Every
dataset is resizable and ``label`` is written last, so its length is the number of
rows written completely. Each crop is one HDF5 chunk, shuffled and deflated here
(gzip level 1 with zlib's run-length strategy: on OPD crops 2.4 times faster than
HDF5's own level-1 filter, and as small) and written with ``write_direct_chunk``. The
file declares HDF5's standard shuffle and gzip filters, so any HDF5 reader decodes it.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import h5py

GZIP_LEVEL = 1
#: Rows per chunk of the small per-crop datasets (``label``, ``qc/*``, ``result_id``...).
ROWS_PER_CHUNK = 1024
#: Crops checked at a time when :func:`salvage_crop_file` reads a file back.
VERIFY_BLOCK = 64
#: What h5py raises when HDF5 fails: OSError, or RuntimeError for the errors that h5py
#: does not map to OSError.
HDF5_ERRORS = (OSError, RuntimeError)


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


@dataclass
class Classified:
    """A classifier's results for rows of a crop file, one value per crop."""

    result_id: np.ndarray  # int64: the results store's id
    predicted: np.ndarray  # int16: index into the file's ``class_names``
    probability: np.ndarray  # float32 (N, n_classes), in the order of ``class_names``
    frame_id: np.ndarray  # int64: the camera frame
    grabbed_at: np.ndarray  # float64: the frame's grab time, Unix seconds
    # int64: the cell (event) the crop is a view of; -1: none. Empty: -1 for every crop
    # (and for files written before the column existed, see read_classified).
    event_id: np.ndarray = field(default_factory=lambda: np.empty(0, "<i8"))

    def __post_init__(self) -> None:
        self.result_id = np.asarray(self.result_id, dtype="<i8")
        self.predicted = np.asarray(self.predicted, dtype="<i2")
        self.probability = np.asarray(self.probability, dtype="<f4")
        self.frame_id = np.asarray(self.frame_id, dtype="<i8")
        self.grabbed_at = np.asarray(self.grabbed_at, dtype="<f8")
        n = len(self.result_id)
        self.event_id = np.asarray(self.event_id, dtype="<i8")
        if not len(self.event_id):
            self.event_id = np.full(n, -1, dtype="<i8")
        for name, values in self.columns().items():
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} values, result_id {n}")
        if self.probability.ndim != 2:
            raise ValueError(f"probability must be (N, n_classes), got {self.probability.shape}")

    def __len__(self) -> int:
        return len(self.result_id)

    def __getitem__(self, rows: slice) -> Classified:
        if rows.indices(len(self)) == (0, len(self), 1):
            return self  # (a frame's crops all go into one file, mostly)
        return Classified(**{name: values[rows] for name, values in self.columns().items()})

    def columns(self) -> dict[str, np.ndarray]:
        """The datasets' names and values, in the order they are written."""
        return {name: getattr(self, name) for name in _CLASSIFIED}


_CLASSIFIED = tuple(f.name for f in fields(Classified))


class CropWriter:
    """A crop dataset written row by row into a new file.

    The datasets are laid out by the first :meth:`append` (the ``qc`` columns and
    their types are those of its rows), or by :meth:`close` if nothing was appended.
    What was appended before the last :meth:`flush` survives a crash of the process:
    :func:`salvage_crop_file` then makes the file readable.

    Parameters
    ----------
    path : the new file
    crop_shape : (H, W) of every crop
    class_names, pixel_size_um, wavelength_nm, source : the file's attributes
    model : (name, version) of the classifier whose results the rows carry
        (:class:`Classified`, given to every ``append``); None: no results
    expected_rows : about how many rows the file will hold (sizes the chunks of the
        small per-crop datasets)
    replace : replace ``path`` if it exists; default: refuse to (FileExistsError)

    Raises what h5py raises (:data:`HDF5_ERRORS`) when the file cannot be created.
    """

    def __init__(
        self,
        path: str | Path,
        crop_shape: Sequence[int],
        *,
        class_names: Sequence[str],
        pixel_size_um: float,
        wavelength_nm: float,
        source: str,
        model: tuple[str, str] | None = None,
        expected_rows: int = ROWS_PER_CHUNK,
        replace: bool = False,
    ) -> None:
        import h5py

        self.path = Path(path)
        self.crop_shape = tuple(int(n) for n in crop_shape)
        if len(self.crop_shape) != 2:
            raise ValueError(f"crop_shape must be (H, W), got {self.crop_shape}")
        self.class_names = list(class_names)
        self.attrs: dict[str, Any] = {
            "class_names": self.class_names,
            "pixel_size_um": float(pixel_size_um),
            "wavelength_nm": float(wavelength_nm),
            "source": source,
        }
        self.model = model
        if model is not None:
            self.attrs["model_name"], self.attrs["model_version"] = model
        self._chunk_rows = max(1, min(int(expected_rows), ROWS_PER_CHUNK))
        #: Rows written completely.
        self.count = 0
        self._datasets: dict[str, h5py.Dataset] = {}
        self._h5 = h5py.File(self.path, "w" if replace else "w-")

    def append(
        self,
        opd: np.ndarray,
        label: np.ndarray | None = None,
        qc: Mapping[str, np.ndarray] | None = None,
        classified: Classified | None = None,
    ) -> None:
        """Write rows at the end of the file.

        Parameters
        ----------
        opd : (N, H, W) crops, nm
        label : (N,) index into ``class_names``, -1 for unlabeled; default: all -1
        qc : one array of N values per QC feature, the same features every time
        classified : the classifier's results, when the file carries them

        Raises ValueError on inconsistent rows (nothing is written) and what h5py
        raises (:data:`HDF5_ERRORS`) when writing fails: then call :meth:`abort`.
        """
        opd = np.ascontiguousarray(opd, dtype="<f4")
        if opd.ndim != 3 or opd.shape[1:] != self.crop_shape:
            raise ValueError(f"opd must be (N, *{self.crop_shape}), got shape {opd.shape}")
        n = len(opd)
        if label is None:
            label = np.full(n, -1, dtype="<i2")
        else:
            label = np.asarray(label, "<i2")
            if label.shape != (n,):
                raise ValueError(f"label must have shape ({n},), got {label.shape}")
            if n and (label.min() < -1 or label.max() >= len(self.class_names)):
                raise ValueError(
                    f"labels must be -1 (unlabeled) or index class_names {self.class_names}, "
                    f"got values from {label.min()} to {label.max()}"
                )
        if (classified is None) != (self.model is None):
            raise ValueError(
                "this file carries a classifier's results: append them"
                if classified is None
                else "this file carries no classifier's results (no model)"
            )
        columns = {} if classified is None else classified.columns()
        if classified is not None and classified.probability.shape[1] != len(self.class_names):
            raise ValueError(
                f"probability has {classified.probability.shape[1]} classes, "
                f"class_names {len(self.class_names)}"
            )
        columns.update({f"qc/{name}": np.asarray(values) for name, values in (qc or {}).items()})
        columns["label"] = label  # last: its length is the number of complete rows
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for {n} crops")
        if not self._datasets:
            self._lay_out(columns)
        elif columns.keys() != (laid_out := self._datasets.keys() - {"opd"}):
            raise ValueError(f"the rows have {sorted(columns)}, the file {sorted(laid_out)}")
        self._write_rows(opd, columns)
        self.count += n

    def flush(self) -> None:
        """Hand HDF5's buffers to the operating system."""
        self._h5.flush()

    def close(self) -> None:
        """Complete the file (laid out if nothing was appended) and close it."""
        if not self._datasets:
            self._lay_out(
                {
                    **({} if self.model is None else self._no_results()),
                    "label": np.zeros(0, dtype="<i2"),
                }
            )
        self._h5.close()

    def abort(self) -> None:
        """Close the file after a failed write, without completing it: its complete
        rows stay on disk for :func:`salvage_crop_file`.

        HDF5 cannot close a file whose writes fail, and h5py crashes the process when
        it frees such a file's objects (h5py #914): then they are kept from being
        freed and the error is raised; the file is lost.
        """
        try:
            self._h5.close()
        except HDF5_ERRORS:
            for h5_object in (self._h5, *self._datasets.values()):
                h5_object.id.locked = True
            raise

    def __enter__(self) -> CropWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(*HDF5_ERRORS):
                self.abort()

    def _write_rows(self, opd: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Write rows from ``count`` on: the crops' chunks, then the columns in order."""
        from h5py import h5s

        start, n = self.count, len(opd)
        dataset = self._datasets["opd"]
        dataset.id.set_extent((start + n, *self.crop_shape))
        for i, crop in enumerate(opd):
            dataset.id.write_direct_chunk((start + i, 0, 0), _shuffle_deflate(crop))
        if not n:
            return
        # h5py's low-level calls: a fifth of the time of ``dataset[a:b] = values``
        for name, values in columns.items():
            dataset = self._datasets[name]
            dataset.id.set_extent((start + n, *values.shape[1:]))
            space = dataset.id.get_space()
            space.select_hyperslab((start,) + (0,) * (values.ndim - 1), values.shape)
            dataset.id.write(h5s.create_simple(values.shape), space, np.ascontiguousarray(values))

    def _no_results(self) -> dict[str, np.ndarray]:
        n_classes = len(self.class_names)
        none = np.zeros(0)
        return Classified(none, none, np.zeros((0, n_classes)), none, none).columns()

    def _lay_out(self, columns: Mapping[str, np.ndarray]) -> None:
        """Create the datasets (``opd`` and one per entry of ``columns``) and attributes."""
        h5 = self._h5
        self._datasets["opd"] = h5.create_dataset(
            "opd",
            shape=(0, *self.crop_shape),
            maxshape=(None, *self.crop_shape),
            chunks=(1, *self.crop_shape),
            dtype="<f4",
            compression="gzip",
            compression_opts=GZIP_LEVEL,
            shuffle=True,
            track_times=False,  # h5py's default, relied on: the same crops, the same bytes
        )
        for name, values in columns.items():
            self._datasets[name] = h5.create_dataset(
                name,
                shape=(0, *values.shape[1:]),
                maxshape=(None, *values.shape[1:]),
                chunks=(self._chunk_rows, *values.shape[1:]),
                dtype=values.dtype,
                fillvalue=-1 if name == "label" else None,
                track_times=False,
            )
        h5.attrs.update(self.attrs)


def write_crop_dataset(path: str | Path, data: CropDataset) -> None:
    """Write ``data`` to ``path`` (replaced if it exists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with CropWriter(
        path,
        data.opd.shape[1:],
        class_names=data.class_names,
        pixel_size_um=data.pixel_size_um,
        wavelength_nm=data.wavelength_nm,
        source=data.source,
        expected_rows=len(data),
        replace=True,
    ) as writer:
        writer.append(data.opd, data.label, data.qc)


def read_crop_dataset(path: str | Path, rows: np.ndarray | None = None) -> CropDataset:
    """Read a crop dataset written by :func:`write_crop_dataset` (or by a lab); only
    the ``rows`` given (increasing indices, at least one) when given."""
    import h5py

    pick: Any = () if rows is None else np.asarray(rows, dtype=np.int64)
    with h5py.File(path, "r") as h5:
        qc = {name: h5["qc"][name][pick] for name in h5["qc"]} if "qc" in h5 else {}
        names = h5.attrs.get("class_names", [])
        return CropDataset(
            opd=h5["opd"][pick],
            label=h5["label"][pick],
            class_names=[n.decode() if isinstance(n, bytes) else str(n) for n in names],
            pixel_size_um=float(h5.attrs["pixel_size_um"]),
            wavelength_nm=float(h5.attrs["wavelength_nm"]),
            source=str(h5.attrs.get("source", "")),
            qc=qc,
        )


def read_attributes(path: str | Path) -> tuple[list[str], float, float]:
    """A crop file's ``class_names``, ``pixel_size_um`` and ``wavelength_nm`` alone."""
    import h5py

    with h5py.File(path, "r") as h5:
        names = h5.attrs.get("class_names", [])
        return (
            [n.decode() if isinstance(n, bytes) else str(n) for n in names],
            float(h5.attrs["pixel_size_um"]),
            float(h5.attrs["wavelength_nm"]),
        )


def read_qc(path: str | Path) -> dict[str, np.ndarray]:
    """A crop file's ``qc/*`` columns alone (without reading its crops)."""
    import h5py

    with h5py.File(path, "r") as h5:
        return {name: h5["qc"][name][()] for name in h5["qc"]} if "qc" in h5 else {}


def read_classified(path: str | Path) -> tuple[Classified, tuple[str, str]] | None:
    """A crop file's classifier results and the (name, version) of its model; None when
    the file carries none. Files written before ``event_id`` existed read as -1."""
    import h5py

    with h5py.File(path, "r") as h5:
        if "result_id" not in h5:
            return None
        columns = {name: h5[name][()] for name in _CLASSIFIED if name in h5}
        model = (str(h5.attrs.get("model_name", "")), str(h5.attrs.get("model_version", "")))
    return Classified(**columns), model


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


def salvage_crop_file(path: str | Path) -> int:
    """Make a crop file cut short mid-write readable (:class:`CropWriter`'s, after a
    crash or a failed write): check that every row up to the length of ``label``
    (written last) reads back, and cut the other per-crop datasets to it.

    Returns the number of rows the file holds; raises ValueError if it is unreadable
    (not a crop file, damaged, or fewer values than ``label`` in some dataset).
    """
    import h5py

    try:
        with h5py.File(path, "r") as h5:  # no write unless one is needed
            n, lengths = _readable_rows(h5)
        if any(length > n for length in lengths.values()):
            with h5py.File(path, "r+") as h5:
                for name, length in lengths.items():
                    if length > n:
                        h5[name].resize(n, axis=0)
    except (*HDF5_ERRORS, KeyError, ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from exc
    return n


def _readable_rows(h5: h5py.File) -> tuple[int, dict[str, int]]:
    """The number of rows whose every dataset reads back, and each per-crop
    dataset's length; raises if the file cannot hold that many."""
    import h5py

    n = len(h5["label"])
    per_crop = [d for d in h5.values() if isinstance(d, h5py.Dataset)]
    if "qc" in h5:
        per_crop += list(h5["qc"].values())
    lengths = {d.name: len(d) for d in per_crop}
    short = [name for name, length in lengths.items() if length < n]
    if short:
        raise ValueError(f"{short} hold fewer values than label's {n}")
    missing = {"class_names", "pixel_size_um", "wavelength_nm"} - set(h5.attrs)
    if missing:
        raise KeyError(f"no attributes {sorted(missing)}")
    for start in range(0, n, VERIFY_BLOCK):  # reads (and decompresses) every crop
        for dataset in per_crop:
            _ = dataset[start : min(start + VERIFY_BLOCK, n)]
    return n, lengths


def _shuffle_deflate(crop: np.ndarray) -> bytes:
    """One C-contiguous little-endian crop as HDF5's shuffle then gzip filters store it."""
    shuffled = crop.view(np.uint8).reshape(-1, crop.itemsize).T.tobytes()
    deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_RLE)
    return deflate.compress(shuffled) + deflate.flush()
