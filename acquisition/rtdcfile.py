"""dclab's ``.rtdc`` files as topgan writes and reads them.

One feature mapping (:func:`dclab_features`, described by :func:`mapping_log` in the
file's log ``topgan-export``) serves both writers, ``topgan export rtdc``
(:mod:`service.export_rtdc`) and the crop archive's ``rtdc`` format
(:mod:`service.archive`); :func:`read_rtdc_rows` inverts it from the log, which names
each ``userdef`` slot, so ``dataset import --archive`` and training read such files
back. Files are written with dclab's own writer (:class:`dclab.RTDCWriter`) alone:
:class:`RtdcAppender` takes rows as they come and stores them at each ``flush``.
docs/design.md, "Files (contract)", lists the features.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cropfile import HDF5_ERRORS, Classified
from .segmentation import QC_FEATURES, QC_FLAGS

if TYPE_CHECKING:
    import h5py

#: The log that names the mapping (and, for the inverse, each userdef's value).
LOG_NAME = "topgan-export"
#: The QC features with a dclab name: topgan's name -> (dclab's, conversion).
DCLAB_QC: dict[str, tuple[str, str]] = {
    "area_um2": ("area_um", "as is (um^2)"),
    "dry_mass_pg": ("qpi_dm", "as is (pg)"),
    # dclab's circularity is 2 sqrt(pi A) / P, topgan's 4 pi A / P^2
    "circularity": ("circ", "sqrt(circularity)"),
    # dclab's porosity is convex area / area, topgan's solidity its inverse
    "solidity": ("area_ratio", "1 / solidity"),
}
_TO_DCLAB: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "circularity": np.sqrt,
    "solidity": np.reciprocal,
}
_FROM_DCLAB: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "circularity": np.square,
    "solidity": np.reciprocal,
}
#: The values without a dclab name, in ``userdef0`` to ``userdef9``.
USERDEF: tuple[str, ...] = (
    "result_id",
    "event_id",
    "views",
    "speed_um_s",
    "mean_opd_nm",
    "peak_opd_nm",
    "amplitude_std",
    "clipped",
    "touching",
    "out_of_focus",
)
#: What a userdef holds, for the log.
USERDEF_MEANING = {
    "result_id": "the results store's id of the row's view (-1 without one)",
    "event_id": "the event's id (views: their event's, -1 without one)",
    "views": "classified views of the event (views: 1)",
    "speed_um_s": "the event's speed, um/s (NaN when unknown)",
    "mean_opd_nm": "mean OPD over the cell, nm",
    "peak_opd_nm": "peak OPD, nm",
    "amplitude_std": "relative amplitude standard deviation",
    "clipped": "flag (events: fraction of views)",
    "touching": "flag (events: fraction of views)",
    "out_of_focus": "flag (events: fraction of views)",
}
#: Rows :class:`RtdcAppender` holds before it stores them (at most 16 MiB of 128x128
#: phase images): dclab's writer rewrites a partly filled 1 MiB chunk of every feature
#: on each call, several ms a feature, so a call per camera frame would be far too slow.
PENDING_ROWS = 256
#: HDF5's chunk cache per dataset of the files being written: dclab's chunks are 1 MiB.
CHUNK_CACHE_BYTES = 8 * 2**20
#: Rows read (and their checksums verified) at a time.
READ_BLOCK = 256
#: HDF5's byte shuffle before dclab's own compression (Zstandard, level 5): phase
#: images (float32) then take 83 % of their size instead of 94 %, at the same speed;
#: the shuffle is HDF5's standard filter, which every reader decodes.
SHUFFLE = {"shuffle": True}

_SCORE_LINE = re.compile(r"^ml_score_([a-z0-9]{3}): (.+)$")
_USERDEF_LINE = re.compile(r"^userdef(\d): ([a-z_]+),")
_MODEL_LINE = re.compile(r"^model: (.+) version (.+)$")


def phase_rad(opd_nm: np.ndarray, wavelength_nm: float) -> np.ndarray:
    """OPD (nm) as phase (rad) at ``wavelength_nm``: 2 pi OPD / wavelength."""
    if not wavelength_nm > 0:
        raise ValueError(f"the wavelength must be positive, got {wavelength_nm}")
    return (2 * np.pi / wavelength_nm * np.asarray(opd_nm, dtype=np.float64)).astype(np.float32)


def opd_nm(phase: np.ndarray, wavelength_nm: float) -> np.ndarray:
    """Phase (rad) as OPD (nm) at ``wavelength_nm``: the inverse of :func:`phase_rad`."""
    if not wavelength_nm > 0:
        raise ValueError(f"the wavelength must be positive, got {wavelength_nm}")
    return (np.asarray(phase, dtype=np.float64) * (wavelength_nm / (2 * np.pi))).astype(np.float32)


def score_codes(classes: Sequence[str]) -> dict[str, str]:
    """Each class's three-character code for dclab's ``ml_score_xxx`` (``[a-z0-9]{3}``):
    the first three letters or digits of its name; if those are not distinct, the
    first two and the last; else ``c00``, ``c01``, ... in class order."""
    clean = [re.sub(r"[^a-z0-9]", "", c.lower()) for c in classes]
    for rule in (lambda s: s[:3], lambda s: s[:2] + s[-1:]):
        codes = [rule(s) for s in clean]
        if all(len(c) == 3 for c in codes) and len(set(codes)) == len(codes):
            return dict(zip(classes, codes, strict=True))
    return {c: f"c{i:02d}" for i, c in enumerate(classes)}


@dataclass(frozen=True)
class FeatureRows:
    """Rows of a ``.rtdc`` file in topgan's terms, one value per row (a view or an event).

    ``qc`` holds topgan's QC features (:data:`~acquisition.segmentation.QC_FEATURES`;
    one missing is NaN); ``position_px`` the (y, x) centres in camera pixels, None
    when unknown (no ``pos_x``, ``pos_y`` then).
    """

    classes: tuple[str, ...]
    probabilities: np.ndarray  # (N, classes), in the order of ``classes``
    qc: Mapping[str, np.ndarray]
    frame: np.ndarray
    time: np.ndarray  # Unix s
    result_id: np.ndarray  # -1: none
    event_id: np.ndarray  # -1: none
    views: np.ndarray
    speed_um_s: np.ndarray  # NaN: unknown
    position_px: np.ndarray | None = None  # (N, 2)

    def __len__(self) -> int:
        return len(self.frame)


def dclab_features(
    rows: FeatureRows,
    *,
    t0: float,
    camera_pixel_size_um: float,
    crops_nm: np.ndarray | None = None,
    wavelength_nm: float | None = None,
) -> dict[str, np.ndarray]:
    """The rows as dclab's features (docs/design.md, "Files"): ``time`` in s from
    ``t0``; ``qpi_pha`` (and ``qpi_amp``, ones) from the OPD ``crops_nm`` (N, H, W) at
    ``wavelength_nm`` when given."""
    n = len(rows)
    codes = score_codes(rows.classes)
    ordered = sorted(rows.classes, key=codes.__getitem__)  # dclab's ml_class: sorted names
    probabilities = np.asarray(rows.probabilities, dtype=np.float64).reshape(n, len(rows.classes))
    features: dict[str, np.ndarray] = {
        "frame": np.asarray(rows.frame, dtype=np.uint64),
        "time": np.asarray(rows.time, dtype=np.float64) - t0,
    }
    for i, c in enumerate(rows.classes):
        features[f"ml_score_{codes[c]}"] = probabilities[:, i]
    rank = np.asarray([ordered.index(c) for c in rows.classes])
    features["ml_class"] = rank[np.argmax(probabilities, axis=1)].astype(np.uint32)
    if rows.position_px is not None:
        # pos_x along the channel: the camera's x (flow along x or y; see the log)
        position = np.asarray(rows.position_px, dtype=np.float64).reshape(n, 2)
        features["pos_x"] = position[:, 1] * camera_pixel_size_um
        features["pos_y"] = position[:, 0] * camera_pixel_size_um

    def qc(name: str) -> np.ndarray:
        values = rows.qc.get(name)
        return np.full(n, math.nan) if values is None else np.asarray(values, dtype=np.float64)

    for name, (dclab_name, _) in DCLAB_QC.items():
        features[dclab_name] = _TO_DCLAB.get(name, np.asarray)(qc(name))
    userdef = {
        "result_id": np.asarray(rows.result_id, dtype=np.float64),
        "event_id": np.asarray(rows.event_id, dtype=np.float64),
        "views": np.asarray(rows.views, dtype=np.float64),
        "speed_um_s": np.asarray(rows.speed_um_s, dtype=np.float64),
    }
    for i, name in enumerate(USERDEF):
        features[f"userdef{i}"] = userdef[name] if name in userdef else qc(name)
    if crops_nm is not None:
        if wavelength_nm is None:
            raise ValueError("phase images need the wavelength")
        features["qpi_pha"] = phase_rad(crops_nm, wavelength_nm)
        features["qpi_amp"] = np.ones_like(features["qpi_pha"])
    for name, values in features.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} values for {n} rows")
    return features


def mapping_log(classes: Sequence[str], wavelength_nm: float | None) -> list[str]:
    """The lines of the log that describe :func:`dclab_features`' mapping (and that
    :func:`read_rtdc_rows` reads back); ``wavelength_nm`` None: no phase images."""
    codes = score_codes(classes)
    ordered = sorted(classes, key=codes.__getitem__)
    return [
        f"qpi_pha: 2 pi OPD / {wavelength_nm:g} nm; qpi_amp: ones (not archived)"
        if wavelength_nm is not None
        else "no crops: no qpi_pha, qpi_amp",
        "time: s since the first row; pos_x, pos_y: camera x, y times the pixel size",
        *(f"ml_score_{codes[c]}: {c}" for c in classes),
        f"ml_class: index into {[codes[c] for c in ordered]}",
        *(f"{d}: {name}, {how}" for name, (d, how) in DCLAB_QC.items()),
        *(f"userdef{i}: {name}, {USERDEF_MEANING[name]}" for i, name in enumerate(USERDEF)),
    ]


def model_line(name: str, version: str) -> str:
    """The log's line that names a model whose results the rows carry."""
    return f"model: {name} version {version}"


@dataclass(frozen=True)
class LogInfo:
    """What topgan's log says of a file: the classes by score code (in class order),
    the models and each userdef slot's value."""

    classes: dict[str, str]
    models: list[tuple[str, str]]
    userdef: dict[str, int]


def parse_log(lines: Sequence[str]) -> LogInfo:
    """Read :func:`mapping_log`'s and :func:`model_line`'s lines back."""
    classes: dict[str, str] = {}
    models: list[tuple[str, str]] = []
    userdef: dict[str, int] = {}
    for raw in lines:
        line = str(raw).strip()
        if match := _SCORE_LINE.match(line):
            classes[match[1]] = match[2].strip()
        elif match := _USERDEF_LINE.match(line):
            userdef[match[2]] = int(match[1])
        elif match := _MODEL_LINE.match(line):
            models.append((match[1], match[2]))
    return LogInfo(classes, models, userdef)


def dataset_log(ds: Any) -> LogInfo:
    """What topgan's log says of an open dclab dataset (nothing, without the log)."""
    logs = ds.logs
    return parse_log(logs[LOG_NAME] if logs is not None and LOG_NAME in logs else [])


class RtdcAppender:
    """A new ``.rtdc`` file written row by row with dclab's writer.

    :meth:`append` holds the rows (every call the same features) and stores them with
    :meth:`dclab.RTDCWriter.store_feature` at :meth:`flush`, at :meth:`close` and
    whenever :data:`PENDING_ROWS` are held; what was stored before the last flush
    survives a crash of the process (:func:`salvage_rtdc_file` then completes the
    file), what came after is lost. :meth:`close` completes the metadata (dclab's
    event count and version).

    Raises what h5py raises (:data:`~acquisition.cropfile.HDF5_ERRORS`) when the file
    cannot be created or written (then call :meth:`abort`, and leave the file to the
    next start), and FileExistsError when ``path`` exists and ``replace`` is false.
    """

    def __init__(
        self,
        path: str | Path,
        metadata: Mapping[str, Mapping[str, Any]],
        log: Sequence[str],
        *,
        replace: bool = False,
        logs: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        import h5py
        import hdf5plugin  # noqa: F401  (dclab's compression filters)
        from dclab import RTDCWriter

        self.path = Path(path)
        #: Rows appended (stored or held).
        self.count = 0
        self._pending: list[dict[str, np.ndarray]] = []
        self._names: tuple[str, ...] | None = None
        self._h5 = h5py.File(self.path, "w" if replace else "w-", rdcc_nbytes=CHUNK_CACHE_BYTES)
        try:
            # an open file rather than a path: dclab's writer then takes our chunk cache
            self._writer = RTDCWriter(self._h5, mode="append", compression_kwargs=_compression())
            self._writer.store_metadata(metadata)
            self._writer.store_log(LOG_NAME, list(log))
            for name, lines in (logs or {}).items():  # more logs beside the mapping's
                self._writer.store_log(name, list(lines))
        except BaseException:
            self._h5.close()
            self.path.unlink(missing_ok=True)
            raise

    def append(self, features: Mapping[str, np.ndarray]) -> None:
        """Add rows: one array per feature, of one length, the same features every time.

        Raises ValueError on inconsistent rows (nothing is added)."""
        names = tuple(sorted(features))
        if self._names is not None and names != self._names:
            raise ValueError(f"the rows have features {list(names)}, the file {list(self._names)}")
        lengths = {len(values) for values in features.values()}
        if len(lengths) != 1:
            raise ValueError(f"the features differ in length: {sorted(lengths)}")
        n = lengths.pop()
        if not n:
            return
        self._names = names
        self._pending.append(dict(features))
        self.count += n
        if sum(len(next(iter(p.values()))) for p in self._pending) >= PENDING_ROWS:
            self._store()

    def store_metadata(self, metadata: Mapping[str, Mapping[str, Any]]) -> None:
        """Add or change metadata (dclab's sections and keys)."""
        self._writer.store_metadata(metadata)

    def flush(self) -> None:
        """Store the rows held and hand HDF5's buffers to the operating system."""
        self._store()
        self._h5.flush()

    def close(self) -> None:
        """Store the rows held, complete the metadata and close the file."""
        self._store()
        if self.count:
            self._writer.rectify_metadata()
        self._writer.version_brand()
        self._h5.close()

    def abort(self) -> None:
        """Give the file up after a failed write, without closing it: the rows held are
        dropped, and what was stored stays on disk for :func:`salvage_rtdc_file` at the
        next start. HDF5 cannot close a file whose writes fail (the close fails too),
        and after such an attempt closing any other file crashes the process (h5py
        #914), so the file stays open, its objects are never freed (nor, in this
        process, salvaged) and HDF5's own clean-up at exit may crash on it."""
        self._pending.clear()
        self._h5.id.locked = True

    def _store(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for name in pending[0]:
            values = np.concatenate([p[name] for p in pending])
            with warnings.catch_warnings():
                # dclab's writer takes each feature's nanmin and nanmax: a feature that
                # is NaN throughout (the speed of views) would warn
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    self._writer.store_feature(name, values)
                except HDF5_ERRORS as exc:
                    _keep_alive(exc)
                    raise


def _keep_alive(exc: BaseException) -> None:
    """Keep the HDF5 objects of a failed write (dclab's, in the frames of ``exc``'s
    traceback) from ever being freed: h5py crashes the process when it frees an object
    of a file whose writes fail (h5py #914), as :meth:`RtdcAppender.abort` explains."""
    import h5py

    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, h5py.HLObject):
                value = value.id
            if isinstance(value, h5py.h5.ObjectID):
                value.locked = True
        tb = tb.tb_next


def salvage_rtdc_file(path: str | Path) -> int:
    """Make a ``.rtdc`` file cut short mid-write (:class:`RtdcAppender`'s, after a
    crash or a failed write) complete: its rows are those that every feature holds
    and that read back (dclab's datasets carry checksums). A file whose features
    all hold them is completed in place (dclab's event count); one cut in the middle
    of storing is written anew through dclab's writer with those rows, its metadata
    and logs.

    Returns the number of rows the file holds (0: none, the file is left as it is);
    raises ValueError if it is unreadable (not an HDF5 file, no features, damaged).
    """
    import h5py
    import hdf5plugin  # noqa: F401  (dclab's compression filters)
    from dclab import RTDCWriter

    path = Path(path)
    try:
        with h5py.File(path, "r") as h5:
            n, lengths = _readable_rows(h5)
            if not n or len(set(lengths.values())) == 1:
                copy = None
            else:
                copy = path.with_name(path.name + ".salvage")
                _rewrite(h5, copy, n)
        if copy is not None:
            copy.replace(path)
        elif n:
            with RTDCWriter(path, mode="append"):  # leaving: event count, version
                pass
    except (*HDF5_ERRORS, KeyError, ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from exc
    return n


def _readable_rows(h5: h5py.File) -> tuple[int, dict[str, int]]:
    """The number of rows every feature holds, and each feature's length; reads (and
    checks) them all."""
    import h5py

    events = h5["events"]
    datasets = {name: d for name, d in events.items() if isinstance(d, h5py.Dataset)}
    if not datasets or len(datasets) != len(events):
        raise ValueError("no features, or features that topgan does not write")
    lengths = {name: len(d) for name, d in datasets.items()}
    n = min(lengths.values())
    for start in range(0, n, READ_BLOCK):
        for dataset in datasets.values():
            _ = dataset[start : min(start + READ_BLOCK, n)]
    return n, lengths


def _rewrite(h5: h5py.File, out: Path, n: int) -> None:
    """The first ``n`` rows of ``h5``, its metadata and logs, into a new file ``out``."""
    import dclab
    from dclab import RTDCWriter

    metadata: dict[str, dict[str, Any]] = {}
    for key, value in h5.attrs.items():
        section, _, name = key.partition(":")
        if dclab.definitions.config_key_exists(section, name):
            metadata.setdefault(section, {})[name] = value
    try:
        with RTDCWriter(out, mode="reset", compression_kwargs=_compression()) as writer:
            writer.store_metadata(metadata)
            for name, lines in h5.get("logs", {}).items():
                writer.store_log(name, [line.decode() for line in lines[()]])
            for start in range(0, n, READ_BLOCK):
                for name, dataset in h5["events"].items():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # NaN throughout
                        writer.store_feature(name, dataset[start : min(start + READ_BLOCK, n)])
    except BaseException:
        out.unlink(missing_ok=True)
        raise


@dataclass
class RtdcRows:
    """What a ``.rtdc`` file that topgan wrote says of its rows (:func:`read_rtdc_rows`)."""

    classes: list[str]
    models: list[tuple[str, str]]
    results: Classified
    qc: dict[str, np.ndarray]  # topgan's QC features, as far as the file has them
    pixel_size_um: float
    wavelength_nm: float
    crop_shape: tuple[int, int] | None  # None: no phase images

    def __len__(self) -> int:
        return len(self.results)


def read_rtdc_rows(path: str | Path) -> RtdcRows:
    """The rows of a ``.rtdc`` file written by topgan (the export or the crop archive),
    in topgan's terms: :func:`dclab_features` inverted (``predicted`` from
    ``ml_class``, ``grabbed_at`` from ``time`` and the ``[experiment] timestamp``,
    the userdefs as the log names them; circularity and solidity back from dclab's
    conversions, to float rounding).

    Raises ValueError when the file is unreadable or is not topgan's (no log naming
    its scores and userdefs).
    """
    with _open_dataset(path) as ds:
        info = dataset_log(ds)
        scores = [f for f in ds.features if f.startswith("ml_score_")]
        codes = sorted(f.removeprefix("ml_score_") for f in scores)
        if not info.userdef or sorted(info.classes) != codes:
            raise ValueError(f"{path} is not topgan's: its log does not name its features")
        classes = list(info.classes.values())

        def userdef(name: str) -> np.ndarray | None:
            slot = info.userdef.get(name)
            feature = f"userdef{slot}"
            return None if slot is None or feature not in ds.features else _column(ds, feature)

        n = len(ds)
        class_of_rank = np.asarray([classes.index(info.classes[c]) for c in codes])
        ids = {name: userdef(name) for name in ("result_id", "event_id")}
        results = Classified(
            result_id=_as_int(ids["result_id"], n),
            predicted=class_of_rank[np.asarray(ds["ml_class"], dtype=np.int64)],
            probability=np.stack(
                [_column(ds, f"ml_score_{c}") for c in info.classes], axis=1
            ).astype(np.float32),
            frame_id=np.asarray(ds["frame"], dtype=np.int64),
            grabbed_at=_column(ds, "time") + float(ds.config["experiment"].get("timestamp", 0)),
            event_id=_as_int(ids["event_id"], n),
        )
        qc: dict[str, np.ndarray] = {}
        for name in QC_FEATURES:
            if name in DCLAB_QC and DCLAB_QC[name][0] in ds.features:
                qc[name] = _FROM_DCLAB.get(name, np.asarray)(_column(ds, DCLAB_QC[name][0]))
            elif (values := userdef(name)) is not None:
                whole = np.all(np.isin(values, (0, 1)))
                qc[name] = values.astype(np.uint8) if name in QC_FLAGS and whole else values
        shape = tuple(ds["qpi_pha"].shape[1:]) if "qpi_pha" in ds.features else None
        return RtdcRows(
            classes=classes,
            models=info.models,
            results=results,
            qc=qc,
            pixel_size_um=float(ds.config["imaging"].get("pixel size", math.nan)),
            wavelength_nm=float(ds.config["qpi"].get("wavelength", math.nan)),
            crop_shape=None if shape is None else (int(shape[0]), int(shape[1])),
        )


def read_rtdc_opd(
    path: str | Path, rows: np.ndarray | None = None, wavelength_nm: float | None = None
) -> np.ndarray:
    """A ``.rtdc`` file's phase images (``qpi_pha``, rad) as OPD (nm, float32) at its
    ``[qpi] wavelength`` (or ``wavelength_nm``); only the ``rows`` given (increasing)
    when given. Raises ValueError when the file has no phase images or wavelength."""
    with _open_dataset(path) as ds:
        if "qpi_pha" not in ds.features:
            raise ValueError(f"{path} carries no qpi_pha (phase images)")
        wavelength = wavelength_nm or float(ds.config["qpi"].get("wavelength", 0) or 0)
        if not wavelength > 0:
            raise ValueError(f"{path} does not say its wavelength ([qpi] wavelength)")
        phase = ds["qpi_pha"]
        index = np.arange(len(phase)) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.empty((len(index), *phase.shape[1:]), dtype=np.float32)
        for start in range(0, len(index), READ_BLOCK):
            block = index[start : start + READ_BLOCK]
            if len(block) and block[-1] - block[0] == len(block) - 1:  # a run: one slice
                images = phase[int(block[0]) : int(block[-1]) + 1]
            else:
                images = phase[block]
            out[start : start + len(block)] = opd_nm(images, wavelength)
        return out


@contextlib.contextmanager
def _open_dataset(path: str | Path) -> Iterator[Any]:
    import dclab

    try:
        dataset = dclab.new_dataset(Path(path))
    except Exception as exc:  # dclab raises its own, and h5py's, on a bad file
        raise ValueError(f"{path} is not a readable .rtdc file: {exc}") from None
    with dataset as ds:
        yield ds


def _compression() -> dict[str, Any]:
    """dclab's default compression, with :data:`SHUFFLE`."""
    import hdf5plugin

    return {**hdf5plugin.Zstd(clevel=5), **SHUFFLE}


def _column(ds: Any, name: str) -> np.ndarray:
    return np.asarray(ds[name], dtype=np.float64)


def _as_int(values: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int64) if values is None else np.rint(values).astype(np.int64)
