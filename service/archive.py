"""The crop archive: every classified crop of the camera loop, in rotating files.

In the ``h5`` format (the default) each file is a crop dataset (docs/design.md,
"Files (contract)") that carries its classifier's results, written by
:class:`acquisition.cropfile.CropWriter` (which owns the layout), so ``topgan train
gan --data FOLDER`` reads the folder as it is. Its crops are unlabeled (``label`` -1:
a prediction is not ground truth); beside them, one value per crop of ``result_id``
(the results store's id), ``predicted``, ``probability``, ``frame_id``,
``grabbed_at`` and ``event_id`` (the cell each crop is a view of;
:class:`~acquisition.cropfile.Classified`), and the model's name and version;
``qc/<feature>`` holds the segmentation's :data:`~acquisition.segmentation.QC_FEATURES`.

In the ``rtdc`` format each file is dclab's ``.rtdc``, one row per crop mapped as
``topgan export rtdc`` maps a view (:func:`acquisition.rtdcfile.dclab_features`, and
:func:`service.export_rtdc.rtdc_metadata`'s metadata), written with dclab's own
writer (:class:`~acquisition.rtdcfile.RtdcAppender`, which stores the crops added at
each :meth:`CropArchive.flush`); it also keeps each crop's position (``pos_x``,
``pos_y``). :mod:`acquisition.archivefiles` reads either format back.

A file being written is ``crops-YYYYmmdd-HHMMSS-<seq>.<h5|rtdc>.part`` (UTC time of
its first crop; ``seq`` counts up across restarts and formats and orders the files)
and is renamed without ``.part`` once complete, so a reader of the folder never sees
a half-written file. A file is complete at ``file_crops`` crops, when the model, its
classes or the crop shape change, and on :meth:`CropArchive.close`. After each
completed file the oldest complete files are deleted until the archive's files fit
in ``max_bytes``. An interrupted ``.part`` file (a crash, a failed write) is
completed with the crops it holds whole (:func:`~acquisition.cropfile.salvage_crop_file`,
:func:`~acquisition.rtdcfile.salvage_rtdc_file`), or deleted if it has none or
cannot be read.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from acquisition.archivefiles import FILE_NAME, PART
from acquisition.cropfile import HDF5_ERRORS, Classified, CropWriter, qc_columns, salvage_crop_file
from acquisition.rtdcfile import (
    FeatureRows,
    RtdcAppender,
    dclab_features,
    mapping_log,
    model_line,
    salvage_rtdc_file,
)
from acquisition.segmentation import QC_FEATURES

from .errors import ArchiveError
from .export_rtdc import Optics, measured_frame_rate, rtdc_metadata

logger = logging.getLogger(__name__)

#: The archive's file formats: crop datasets in HDF5, or dclab's .rtdc.
ArchiveFormat = Literal["h5", "rtdc"]
LOCK_NAME = ".lock"
#: Free disk space the archive leaves by default. Below it, the file being written is
#: completed and ``add`` raises ArchiveError before HDF5 meets a full disk: h5py cannot
#: close a file whose writes fail, and the process then crashes at exit (h5py #914).
MIN_FREE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class _FileKey:
    """What every crop of one file shares."""

    class_names: tuple[str, ...]
    model_name: str
    model_version: str
    crop_shape: tuple[int, ...]
    positions: bool  # the rows carry positions (rtdc: pos_x, pos_y)


class _RtdcFile:
    """An archive file in dclab's format: each crop a row, mapped as ``topgan export
    rtdc`` maps a view, with the export's metadata (frame rate: the setting's, else
    measured over the file's crops when it completes)."""

    def __init__(
        self,
        path: Path,
        key: _FileKey,
        optics: Optics,
        pixel_size_um: float,
        wavelength_nm: float,
        source: str,
        t0: float,
    ) -> None:
        self.path = path
        self._optics = optics
        self._wavelength_nm = wavelength_nm
        self._t0 = t0
        # the smallest and largest frame number and grab time seen (the frame rate)
        self._span = np.asarray([[np.inf, np.inf], [-np.inf, -np.inf]])
        h, w = key.crop_shape
        metadata = rtdc_metadata(
            t0, "view", pixel_size_um, wavelength_nm, optics, (h, w), optics.frame_rate_hz
        )
        log = [
            f"source: {source}, the crop archive"[:99],
            model_line(key.model_name, key.model_version),
            "rows: one per view, as the camera loop classified it",
            "crop: the view's own",
            "scalars: the view's",
            *mapping_log(key.class_names, wavelength_nm),
        ]
        self.file = RtdcAppender(path, metadata, log)

    @property
    def count(self) -> int:
        return self.file.count

    def append(
        self,
        crops: np.ndarray,
        qc: Mapping[str, np.ndarray],
        results: Classified,
        classes: tuple[str, ...],
        positions_px: np.ndarray | None,
    ) -> None:
        n = len(results)
        rows = FeatureRows(
            classes=classes,
            probabilities=results.probability,
            qc=qc,
            frame=results.frame_id,
            time=results.grabbed_at,
            result_id=results.result_id,
            event_id=results.event_id,
            views=np.ones(n),
            speed_um_s=np.full(n, np.nan),
            position_px=positions_px,
        )
        features = dclab_features(
            rows,
            t0=self._t0,
            camera_pixel_size_um=self._optics.camera_pixel_size_um,
            crops_nm=crops,
            wavelength_nm=self._wavelength_nm,
        )
        self.file.append(features)
        if n:
            seen = np.stack([results.frame_id.astype(np.float64), results.grabbed_at], axis=1)
            self._span[0] = np.minimum(self._span[0], seen.min(axis=0))
            self._span[1] = np.maximum(self._span[1], seen.max(axis=0))

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if not self._optics.frame_rate_hz:
            rate = measured_frame_rate(self._span[:, 0], self._span[:, 1]) if self.count else None
            if rate:
                self.file.store_metadata({"imaging": {"frame rate": rate}})
        self.file.close()

    def abort(self) -> None:
        self.file.abort()


@dataclass
class _Writing:
    """The file being written."""

    key: _FileKey
    file: CropWriter | _RtdcFile

    @property
    def path(self) -> Path:
        return self.file.path


class CropArchive:
    """Classified crops in a folder of crop-dataset files, bounded in size.

    Not thread-safe: one thread (the archive's writer) calls :meth:`add`,
    :meth:`flush` and :meth:`close`; a call that overlaps another one raises
    RuntimeError instead of corrupting the file. The counters may be read from any
    thread: ``archived`` (crops), ``files_deleted`` (to stay under ``max_bytes``),
    ``files_failed`` (writes that failed: the file's readable crops are kept, the rest
    dropped) and ``bytes``. One archive per folder: a second one, in this process or
    another, is refused (a lock file).

    Errors writing raise :class:`ArchiveError` naming the file; complete files are
    never reopened for writing, so they stay intact. The next :meth:`add` starts a
    new file.

    Parameters
    ----------
    folder : where the files go (created if missing)
    max_bytes : bound on the size of the archive's files; the file being written can
        take the folder past it by up to one file until that file completes
    file_crops : crops per file
    pixel_size_um : the crops' pixel size
    wavelength_nm : illumination wavelength
    class_names : the model's classes (``add`` may name others when the model changes)
    source : the files' ``source`` attribute (rtdc: the log's first line)
    min_free_bytes : free space to leave on the folder's disk
    file_format : ``h5`` (crop datasets) or ``rtdc`` (dclab's)
    optics : the setup, for the rtdc files' metadata and positions (needed for rtdc)
    """

    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int,
        file_crops: int = 4096,
        pixel_size_um: float,
        wavelength_nm: float,
        class_names: Sequence[str],
        source: str = "camera",
        min_free_bytes: int = MIN_FREE_BYTES,
        file_format: ArchiveFormat = "h5",
        optics: Optics | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if file_crops < 1:
            raise ValueError(f"file_crops must be at least 1, got {file_crops}")
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must not be negative, got {min_free_bytes}")
        if not pixel_size_um > 0 or not wavelength_nm > 0:
            raise ValueError(
                f"pixel_size_um and wavelength_nm must be positive, "
                f"got {pixel_size_um} and {wavelength_nm}"
            )
        _check_class_names(class_names)
        if file_format not in ("h5", "rtdc"):
            raise ValueError(f"file_format must be h5 or rtdc, got {file_format!r}")
        if file_format == "rtdc" and optics is None:
            raise ValueError("the rtdc format needs the optics (its metadata and positions)")
        self.file_format = file_format
        self.optics = optics
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.file_crops = int(file_crops)
        self.pixel_size_um = float(pixel_size_um)
        self.wavelength_nm = float(wavelength_nm)
        self.class_names = list(class_names)
        self.source = source
        self.min_free_bytes = int(min_free_bytes)
        self.archived = 0
        self.files_deleted = 0
        self.files_failed = 0
        self._complete_bytes = 0
        self._writing: _Writing | None = None
        self._closed = False
        self._busy = threading.Lock()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(self.folder, f"cannot create the folder: {exc}") from exc
        self._lock_fd = _lock_folder(self.folder)
        try:
            files = self._scan()
            self._next_seq = 1 + max((seq for seq, *_ in files), default=0)
            for _, path, _, part in files:
                if part:
                    self._recover(path)
            self._enforce_bound()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- the writer thread's calls ---------------------------------------------------

    def add(
        self,
        crops: np.ndarray,
        result_ids: Sequence[int],
        predicted: Sequence[str],
        probabilities: np.ndarray,
        qc: Sequence[Mapping[str, float | bool]],
        frame_id: int,
        grabbed_at: float,
        model_name: str,
        model_version: str,
        *,
        class_names: Sequence[str] | None = None,
        event_ids: Sequence[int] | None = None,
        positions_px: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        """Archive the classified crops of one frame.

        Parameters
        ----------
        crops : (N, H, W) ndarray of float32, OPD in nm
        result_ids : the results store's id of each crop
        predicted : the predicted class of each crop, one of ``class_names``
        probabilities : (N, n_classes) ndarray, in the order of ``class_names``
        qc : each crop's QC features (at least :data:`QC_FEATURES`)
        frame_id, grabbed_at : the frame and its grab time, Unix seconds
        model_name, model_version : the model that classified them
        class_names : the model's classes; default: the archive's ``class_names``
        event_ids : the event (cell) of each crop; default (or empty): -1, none
        positions_px : each crop's (y, x) centre in camera pixels (rtdc: ``pos_x``,
            ``pos_y``; the h5 format does not keep them); default: unknown

        Raises ValueError on inconsistent input (nothing is written) and
        :class:`ArchiveError` when the disk is nearly full or writing fails.
        """
        crops = np.ascontiguousarray(crops, dtype="<f4")
        if crops.ndim != 3:
            raise ValueError(f"crops must be (N, H, W), got shape {crops.shape}")
        n = len(crops)
        names = tuple(self.class_names if class_names is None else class_names)
        if class_names is not None:
            _check_class_names(names)
        checked = [("result_ids", result_ids), ("predicted", predicted), ("qc", qc)]
        event_ids = [] if event_ids is None else event_ids
        if len(event_ids):
            checked.append(("event_ids", event_ids))
        if positions_px is not None:
            checked.append(("positions_px", positions_px))
        for what, values in checked:
            if len(values) != n:
                raise ValueError(f"{what} has {len(values)} entries for {n} crops")
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if probabilities.shape != (n, len(names)):
            raise ValueError(
                f"probabilities must be (N, n_classes) = ({n}, {len(names)}), "
                f"got shape {probabilities.shape}"
            )
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(predicted) - set(index))
        if unknown:
            raise ValueError(f"predicted classes {unknown} are not among {list(names)}")
        for i, row in enumerate(qc):
            missing = [f for f in QC_FEATURES if f not in row]
            if missing:
                raise ValueError(f"qc of crop {i} lacks {missing}")
        if n == 0:
            return
        results = Classified(
            result_id=np.asarray(result_ids),
            predicted=np.asarray([index[p] for p in predicted]),
            probability=probabilities,
            frame_id=np.full(n, frame_id),
            grabbed_at=np.full(n, grabbed_at, dtype=np.float64),
            event_id=np.asarray(event_ids, dtype=np.int64),
        )
        columns = qc_columns(qc, QC_FEATURES)
        positions = None
        if positions_px is not None and self.file_format == "rtdc":
            positions = np.asarray(positions_px, dtype=np.float64).reshape(n, 2)
        key = _FileKey(names, model_name, model_version, crops.shape[1:], positions is not None)
        with self._one_caller("add"):
            self._check_free_space(crops.nbytes)
            if self._writing is not None and self._writing.key != key:
                self._finish()
            start = 0
            while start < n:
                writing = self._writing or self._open(key, grabbed_at)
                stop = min(n, start + self.file_crops - writing.file.count)
                rows = slice(start, stop)
                self._write(
                    writing,
                    crops[rows],
                    {k: v[rows] for k, v in columns.items()},
                    results[rows],
                    None if positions is None else positions[rows],
                )
                self.archived += stop - start
                start = stop
                if writing.file.count >= self.file_crops:
                    self._finish()

    def flush(self) -> None:
        """Flush the file being written (HDF5 buffers) to the operating system.

        What was added before the last flush survives a crash of the process (the file
        is recovered at the next start); what came after is lost with it.
        """
        with self._one_caller("flush"):
            writing = self._writing
            if writing is not None:
                try:
                    writing.file.flush()
                except HDF5_ERRORS as exc:
                    self._abandon(writing)
                    raise ArchiveError(writing.path, f"flush failed: {exc}") from exc

    def complete_file(self) -> None:
        """Complete the file being written now (the next :meth:`add` starts another), so
        that readers of the folder see every crop archived so far."""
        with self._one_caller("complete_file"):
            if self._writing is not None:
                self._finish()

    def close(self) -> None:
        """Complete the file being written and release the folder; calling again does nothing."""
        with self._one_caller("close"):
            if self._closed:
                return
            self._closed = True
            try:
                if self._writing is not None:
                    self._finish()
            finally:
                os.close(self._lock_fd)

    def __enter__(self) -> CropArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- counters ---------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        """Size of the archive's files on disk, the one being written included."""
        writing = self._writing
        size = self._complete_bytes
        if writing is not None:
            with contextlib.suppress(OSError):  # completed or abandoned meanwhile
                size += writing.path.stat().st_size
        return size

    # -- files ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _one_caller(self, what: str) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                f"CropArchive.{what} overlaps another call: the archive is not thread-safe, "
                "call it from one writer thread"
            )
        try:
            if self._closed and what != "close":
                raise RuntimeError(f"CropArchive.{what} after close()")
            yield
        finally:
            self._busy.release()

    def _check_free_space(self, needed: int) -> None:
        try:
            disk = os.statvfs(self.folder)
        except OSError as exc:
            raise ArchiveError(self.folder, f"cannot read the free disk space: {exc}") from exc
        free = disk.f_bavail * disk.f_frsize
        if free < needed + self.min_free_bytes:
            if self._writing is not None:
                self._finish()
            raise ArchiveError(
                self.folder,
                f"the disk is nearly full ({free} bytes free; the archive leaves "
                f"{self.min_free_bytes}): free space or lower max_bytes",
            )

    def _scan(self) -> list[tuple[int, Path, int, bool]]:
        """The archive's files: (seq, path, size in bytes, still being written)."""
        found = []
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    match = FILE_NAME.fullmatch(entry.name)
                    if match and entry.is_file():
                        size = entry.stat().st_size
                        found.append((int(match[1]), Path(entry.path), size, bool(match[3])))
        except OSError as exc:
            raise ArchiveError(self.folder, f"cannot list the folder: {exc}") from exc
        return sorted(found)

    def _open(self, key: _FileKey, t0: float) -> _Writing:
        """A new file for ``key``'s crops, the first of them grabbed at ``t0``."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = self.folder / f"crops-{stamp}-{self._next_seq:06d}.{self.file_format}{PART}"
        self._next_seq += 1
        file: CropWriter | _RtdcFile
        try:
            if self.file_format == "rtdc":
                assert self.optics is not None
                file = _RtdcFile(
                    path,
                    key,
                    self.optics,
                    self.pixel_size_um,
                    self.wavelength_nm,
                    self.source,
                    t0,
                )
            else:
                file = CropWriter(
                    path,
                    key.crop_shape,
                    class_names=key.class_names,
                    pixel_size_um=self.pixel_size_um,
                    wavelength_nm=self.wavelength_nm,
                    source=self.source,
                    model=(key.model_name, key.model_version),
                    expected_rows=self.file_crops,
                )
        except HDF5_ERRORS as exc:
            raise ArchiveError(path, f"cannot create the file: {exc}") from exc
        self._writing = _Writing(key, file)
        return self._writing

    def _write(
        self,
        writing: _Writing,
        crops: np.ndarray,
        qc: Mapping[str, np.ndarray],
        results: Classified,
        positions_px: np.ndarray | None,
    ) -> None:
        try:
            if isinstance(writing.file, _RtdcFile):
                writing.file.append(crops, qc, results, writing.key.class_names, positions_px)
            else:  # the first lays the file out
                writing.file.append(crops, qc=qc, classified=results)
        except HDF5_ERRORS as exc:
            self._abandon(writing)
            raise ArchiveError(writing.path, f"write failed: {exc}") from exc

    def _finish(self) -> None:
        """Complete the file being written: close, sync, rename; then bound the folder."""
        writing, self._writing = self._writing, None
        assert writing is not None
        final = writing.path.with_name(writing.path.name.removesuffix(PART))
        try:
            writing.file.close()
            with writing.path.open("rb") as f:  # the data on disk before the name says so
                os.fsync(f.fileno())
            writing.path.rename(final)
        except HDF5_ERRORS as exc:
            self._abandon(writing)
            raise ArchiveError(writing.path, f"cannot complete the file: {exc}") from exc
        try:
            size = final.stat().st_size
        except OSError as exc:
            raise ArchiveError(final, f"completed, then vanished: {exc}") from exc
        logger.debug(
            "crop archive: completed %s (%d crops, %d bytes)", final, writing.file.count, size
        )
        if size > self.max_bytes:
            logger.warning(
                "crop archive: one file (%s, %d bytes) exceeds max_bytes %d and is deleted at "
                "once: raise max_bytes or lower file_crops",
                final,
                size,
                self.max_bytes,
            )
        self._enforce_bound()

    def _abandon(self, writing: _Writing) -> None:
        """After a failed write: keep the file's complete crops if it is still readable
        (rtdc: at the next start, see
        :meth:`acquisition.rtdcfile.RtdcAppender.abort`)."""
        if self._writing is writing:
            self._writing = None
        self.files_failed += 1
        try:
            writing.file.abort()
        except HDF5_ERRORS as exc:  # HDF5 cannot close it (the writer keeps h5py from crashing)
            logger.error("crop archive: %s cannot be closed, dropped: %s", writing.path, exc)
            writing.path.unlink(missing_ok=True)
            return
        if isinstance(writing.file, _RtdcFile):
            logger.error(
                "crop archive: %s failed and stays open; the next start salvages it", writing.path
            )
        elif writing.path.exists():
            self._recover(writing.path)

    def _recover(self, path: Path) -> None:
        """Complete an interrupted ``.part`` file (renamed without ``.part``) if it holds
        readable crops, else delete it."""
        crops: int | None
        salvage = salvage_rtdc_file if path.name.endswith(f".rtdc{PART}") else salvage_crop_file
        try:
            crops = salvage(path)
        except ValueError as exc:
            logger.warning("crop archive: %s is unreadable: %s", path, exc)
            crops = None
        try:
            if crops:
                path.rename(path.with_name(path.name.removesuffix(PART)))
                logger.warning(
                    "crop archive: recovered %d crops of the interrupted %s", crops, path
                )
            else:
                path.unlink()
                logger.warning(
                    "crop archive: deleted %s: %s", path, "no crops" if crops == 0 else "unreadable"
                )
        except OSError as exc:
            raise ArchiveError(path, f"cannot recover the interrupted file: {exc}") from exc

    def _enforce_bound(self) -> None:
        """Delete the oldest complete files until the archive fits in ``max_bytes``."""
        files = self._scan()
        total = sum(size for _, _, size, _ in files)
        for _, path, size, part in files:
            if total <= self.max_bytes:
                break
            if part:  # the file being written (or a stranger's): never deleted
                continue
            try:
                path.unlink()
            except FileNotFoundError:  # someone else deleted it
                pass
            except OSError as exc:
                raise ArchiveError(path, f"cannot delete to stay under max_bytes: {exc}") from exc
            else:
                self.files_deleted += 1
                logger.info(
                    "crop archive: deleted %s (%d bytes) to keep the folder under %d bytes",
                    path,
                    size,
                    self.max_bytes,
                )
            total -= size
        self._complete_bytes = total - sum(size for _, _, size, part in files if part)


def _check_class_names(names: Sequence[str]) -> None:
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"class_names must be distinct strings, got {list(names)}")


def _lock_folder(folder: Path) -> int:
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ArchiveError(path, f"cannot create the lock file: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ArchiveError(folder, "another crop archive writes into this folder") from None
    return fd


class ArchiveWriter:
    """Feeds a :class:`CropArchive` from one thread of its own, off the camera loop's
    path: ``submit`` never blocks (a full queue skips the frame's crops and counts
    them), the file is flushed every ``flush_interval_s``, and write errors are
    counted and logged while the loop goes on.
    """

    def __init__(
        self, make_archive: Any, queue_size: int = 1024, flush_interval_s: float = 1.0
    ) -> None:
        import queue

        self._make_archive = make_archive
        self._archive: CropArchive | None = None
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(queue_size)
        self._flush_interval_s = flush_interval_s
        self.archived = 0
        self.skipped = 0
        self.errors = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="crop-archive", daemon=True)
        self._thread.start()

    def submit(self, *args: Any, **kwargs: Any) -> None:
        """Queue one frame's crops with :meth:`CropArchive.add`'s arguments."""
        import queue

        try:
            self._queue.put_nowait((args, kwargs))
        except queue.Full:
            self.skipped += len(args[0])

    def status(self) -> dict[str, Any]:
        archive = self._archive
        return {
            "archived": self.archived,
            "skipped": self.skipped,
            "errors": self.errors,
            "last_error": self.last_error,
            "files_deleted": archive.files_deleted if archive else 0,
            "bytes": archive.bytes if archive else 0,
        }

    def complete_file(self, timeout: float = 30.0) -> None:
        """Archive what is queued, then complete the current file (the acquisition
        stopped: its crops are then all in complete files); waits at most ``timeout``."""
        import queue

        done = threading.Event()
        try:
            self._queue.put((done,), timeout=timeout)
        except queue.Full:
            logger.error("crop archive: its queue stayed full, the file is not completed")
            return
        if not done.wait(timeout):
            logger.error("crop archive: the file was not completed within %.0f s", timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Archive what is queued, complete the current file, stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        import queue

        last_flush = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=self._flush_interval_s)
            except queue.Empty:
                item = ()
            if item is None:
                break
            try:
                if self._archive is None:
                    self._archive = self._make_archive()
                if len(item) == 1:  # complete_file's request
                    try:
                        self._archive.complete_file()
                    finally:
                        item[0].set()
                elif item:
                    args, kwargs = item
                    self._archive.add(*args, **kwargs)
                    self.archived += len(args[0])
                if time.monotonic() - last_flush >= self._flush_interval_s:
                    self._archive.flush()
                    last_flush = time.monotonic()
            except (ArchiveError, OSError, ValueError) as exc:
                self.errors += 1
                self.last_error = str(exc)
                if self.errors in (1, 10) or self.errors % 100 == 0:
                    logger.error("crop archive (%d errors): %s", self.errors, exc)
        if self._archive is not None:
            try:
                self._archive.close()
            except (ArchiveError, OSError) as exc:
                logger.error("closing the crop archive: %s", exc)
