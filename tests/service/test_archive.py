"""The crop archive: real files in tmp_path (crop datasets in HDF5, or dclab's .rtdc),
simulated crops."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from acquisition.archivefiles import read_archive_crops, read_archive_file
from acquisition.cropfile import qc_columns, read_crop_dataset
from acquisition.segmentation import QC_FEATURES
from acquisition.simulator.datasets import simulate_direct
from service.archive import CropArchive
from service.errors import ArchiveError
from service.export_rtdc import Optics

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["sw480", "sw620"]
FLAGS = ("clipped", "touching", "out_of_focus")
KIB = 1024
FORMATS = ("h5", "rtdc")
#: The setup an rtdc archive's metadata names (the service's defaults).
OPTICS = Optics(
    camera_pixel_size_um=0.12,
    crop_pixel_size_um=0.25,
    wavelength_nm=632.8,
    frame_rate_hz=None,
    flow_rate_ul_min=None,
    medium_index=None,
)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """12 simulated 128x128 OPD crops, nm."""
    return simulate_direct(CLASSES, 6, seed=3).opd


def qc_rows(n: int, seed: int = 0) -> list[dict[str, float | bool]]:
    rng = np.random.default_rng(seed)
    return [
        {
            f: bool(rng.random() < 0.3) if f in FLAGS else float(rng.uniform(1, 100))
            for f in QC_FEATURES
        }
        for _ in range(n)
    ]


def make_archive(folder: Path, **options: object) -> CropArchive:
    settings: dict = {
        "max_bytes": 10**9,
        "pixel_size_um": 0.25,
        "wavelength_nm": 632.8,
        "class_names": CLASSES,
        "min_free_bytes": 0,
        **options,
    }
    if settings.get("file_format") == "rtdc":
        settings.setdefault("optics", OPTICS)
    return CropArchive(folder, **settings)


def add(
    archive: CropArchive,
    crops: np.ndarray,
    first_id: int,
    version: str = "1",
    classes: list[str] = CLASSES,
    frame_id: int = 7,
) -> None:
    """Archive ``crops`` with result ids from ``first_id``, predicted class i % n_classes."""
    n = len(crops)
    probabilities = np.full((n, len(classes)), 0.1 / (len(classes) - 1), np.float32)
    probabilities[np.arange(n), np.arange(n) % len(classes)] = 0.9
    archive.add(
        crops,
        list(range(first_id, first_id + n)),
        [classes[i % len(classes)] for i in range(n)],
        probabilities,
        qc_rows(n, first_id),
        frame_id=frame_id,
        grabbed_at=1.7e9 + first_id,
        model_name="sw480-sw620",
        model_version=version,
        class_names=None if classes == CLASSES else classes,
    )


def complete(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.h5"), *folder.glob("*.rtdc")])


def parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.part"))


def result_ids(path: Path) -> list[int]:
    found = read_archive_file(path)
    assert found is not None
    return [int(i) for i in found.results.result_id]


def test_round_trip_through_read_crop_dataset(crops, tmp_path):
    with make_archive(tmp_path, source="camera SN 1234") as archive:
        add(archive, crops[:4], first_id=10, frame_id=3)
        add(archive, crops[4:7], first_id=14, frame_id=4)
        assert archive.archived == 7
    assert archive.bytes == complete(tmp_path)[0].stat().st_size
    (path,) = complete(tmp_path)
    assert path.name.startswith("crops-")
    assert path.name.endswith("-000001.h5")
    data = read_crop_dataset(path)
    np.testing.assert_array_equal(data.opd, crops[:7])  # lossless
    np.testing.assert_array_equal(data.label, -1)  # a prediction is not ground truth
    assert data.class_names == CLASSES
    assert (data.pixel_size_um, data.wavelength_nm, data.source) == (0.25, 632.8, "camera SN 1234")
    expected = {
        k: np.concatenate([a, b])
        for (k, a), b in zip(
            qc_columns(qc_rows(4, 10), QC_FEATURES).items(),
            qc_columns(qc_rows(3, 14), QC_FEATURES).values(),
            strict=True,
        )
    }
    assert set(data.qc) == set(QC_FEATURES)
    for name, values in expected.items():
        np.testing.assert_array_equal(data.qc[name], values)
        assert data.qc[name].dtype == (np.uint8 if name in FLAGS else np.float32)
    with h5py.File(path, "r") as h5:
        assert h5["result_id"].dtype == np.int64
        assert list(h5["result_id"][()]) == list(range(10, 17))
        assert h5["predicted"].dtype == np.int16
        assert list(h5["predicted"][()]) == [0, 1, 0, 1, 0, 1, 0]
        probability = h5["probability"][()]
        assert probability.dtype == np.float32
        assert probability.shape == (7, 2)
        np.testing.assert_allclose(probability[:, 0], [0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9])
        assert list(h5["frame_id"][()]) == [3] * 4 + [4] * 3
        assert h5["grabbed_at"].dtype == np.float64
        assert h5["grabbed_at"][0] == 1.7e9 + 10
        assert (h5.attrs["model_name"], h5.attrs["model_version"]) == ("sw480-sw620", "1")
        opd = h5["opd"]
        assert opd.chunks == (1, 128, 128)
        assert (opd.compression, opd.compression_opts, opd.shuffle) == ("gzip", 1, True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_rotate_at_file_crops_and_when_the_model_changes(crops, tmp_path, fmt):
    with make_archive(tmp_path, file_crops=4, file_format=fmt) as archive:
        for first in (0, 3, 6):  # 9 crops: two full files, one crop in the third
            add(archive, crops[first : first + 3], first_id=first)
        assert [len(result_ids(p)) for p in complete(tmp_path)] == [4, 4]
        assert len(parts(tmp_path)) == 1
        add(archive, crops[9:11], first_id=9, version="2", classes=["a", "b", "c"])
        assert len(complete(tmp_path)) == 3  # the new model completed the file
    files = complete(tmp_path)
    assert [p.name.removeprefix("crops-")[16:] for p in files] == [
        f"{i:06d}.{fmt}" for i in range(1, 5)
    ]
    assert [result_ids(p) for p in files] == [[0, 1, 2, 3], [4, 5, 6, 7], [8], [9, 10]]
    found = [read_archive_file(p) for p in files]
    assert [f.class_names for f in found if f] == [CLASSES] * 3 + [["a", "b", "c"]]
    assert found[-1] is not None
    assert found[-1].model == ("sw480-sw620", "2")
    assert found[-1].results.probability.shape == (2, 3)
    lossless = fmt == "h5"  # rtdc: float32 phase (rad) and back
    np.testing.assert_allclose(
        read_archive_crops(files[0], np.arange(4)).opd,
        crops[:4],
        rtol=0,
        atol=0 if lossless else 1e-3,
    )
    assert not parts(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_file_is_visible_until_it_is_complete(crops, tmp_path, fmt):
    from training.data import dataset_files

    archive = make_archive(tmp_path, file_crops=4, file_format=fmt)
    add(archive, crops[:3], first_id=0)
    archive.flush()
    assert complete(tmp_path) == []
    assert len(parts(tmp_path)) == 1
    assert archive.bytes == parts(tmp_path)[0].stat().st_size > 0
    with pytest.raises(ValueError, match=r"holds no crop files \(\.h5, \.rtdc\)"):
        dataset_files([tmp_path])
    add(archive, crops[3:4], first_id=3)
    assert dataset_files([tmp_path]) == complete(tmp_path)
    assert len(complete(tmp_path)) == 1
    assert parts(tmp_path) == []
    archive.close()
    archive.close()  # idempotent
    assert len(complete(tmp_path)) == 1  # nothing was left to complete


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_disk_bound_deletes_the_oldest_files(crops, tmp_path, caplog, fmt):
    # Every file holds the same two crops, so every file has the same size (rtdc: to
    # the few bytes the compressed ids take).
    probe = tmp_path / "probe"
    with make_archive(probe, file_crops=2, file_format=fmt) as archive:
        add(archive, crops[:2], first_id=0)
    size = complete(probe)[0].stat().st_size
    # two 64 KiB crops deflated to ~85% (rtdc: shuffled and Zstandard's, ~83%; qpi_amp's
    # ones to nothing), and metadata (rtdc: some 20 datasets, ~70 KiB)
    assert (100 * KIB < size < 200 * KIB) if fmt == "h5" else (120 * KIB < size < 240 * KIB)
    folder, max_bytes = tmp_path / "archive", int(2.5 * size)

    caplog.set_level(logging.INFO, logger="service.archive")
    with make_archive(folder, file_crops=2, max_bytes=max_bytes, file_format=fmt) as archive:
        for file in range(6):
            add(archive, crops[:2], first_id=2 * file)
            assert archive.bytes <= max_bytes
        assert archive.files_deleted == 4
        assert archive.archived == 12
    kept = complete(folder)
    assert [result_ids(p) for p in kept] == [[8, 9], [10, 11]]  # the newest two
    total = sum(p.stat().st_size for p in kept)
    assert total <= max_bytes < 3 * min(p.stat().st_size for p in kept)
    if fmt == "h5":
        assert total == 2 * size
    assert archive.bytes == total
    deleted = [r for r in caplog.records if "deleted" in r.getMessage()]
    assert len(deleted) == 4
    assert all(r.levelno == logging.INFO for r in deleted)

    # At startup too: a lower bound deletes the oldest file at once.
    with make_archive(folder, file_crops=2, max_bytes=int(1.5 * size), file_format=fmt) as archive:
        assert archive.files_deleted == 1
        assert archive.bytes == complete(folder)[0].stat().st_size
    assert [result_ids(p) for p in complete(folder)] == [[10, 11]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_file_being_written_is_never_deleted(crops, tmp_path, fmt):
    with make_archive(tmp_path, file_crops=4, max_bytes=1, file_format=fmt) as archive:
        add(archive, crops[:4], first_id=0)  # complete, then deleted: over the bound alone
        add(archive, crops[4:6], first_id=4)
        assert archive.files_deleted == 1
        assert complete(tmp_path) == []
        assert len(parts(tmp_path)) == 1
    assert archive.files_deleted == 2


CRASH = """
import os, sys
import numpy as np
from pathlib import Path
from tests.service.test_archive import add, make_archive, simulate_direct

crops = simulate_direct(["sw480"], 8, seed=1).opd
archive = make_archive(Path(sys.argv[1]), file_format=sys.argv[2])
add(archive, crops[:5], first_id=0)
archive.flush()
add(archive, crops[5:], first_id=5)  # not flushed: lost with the process
os._exit(1)
"""


def test_stale_part_files_are_recovered_or_deleted(crops, tmp_path, caplog):
    folder = tmp_path / "archive"
    crash = subprocess.run(
        [sys.executable, "-c", CRASH, str(folder), "h5"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crash.returncode == 1, crash.stderr
    (crashed,) = parts(folder)

    # A file cut off in the middle of add(): opd and result_id hold one crop more
    # than label, which is written last.
    with make_archive(tmp_path / "other") as archive:
        add(archive, crops[:4], first_id=100)
    interrupted = folder / "crops-20250101-120000-000090.h5.part"
    complete(tmp_path / "other")[0].rename(interrupted)
    with h5py.File(interrupted, "r+") as h5:
        for name in ("opd", "result_id"):
            h5[name].resize(5, axis=0)
    garbage = folder / "crops-20250101-120000-000091.h5.part"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(500))
    stranger = folder / "notes.h5.part"  # not the archive's: left alone
    stranger.write_bytes(b"x")

    caplog.set_level(logging.WARNING, logger="service.archive")
    with make_archive(folder) as archive:
        add(archive, crops[:1], first_id=200)
    assert parts(folder) == [stranger]
    recovered = {p.name: result_ids(p) for p in complete(folder)}
    assert recovered.pop(crashed.name.removesuffix(".part")) == [0, 1, 2, 3, 4]  # flushed
    assert recovered.pop(interrupted.name.removesuffix(".part")) == [100, 101, 102, 103]
    ((new, ids),) = recovered.items()
    assert new.endswith("-000092.h5")  # numbering goes on after the highest
    assert ids == [200]
    for path in complete(folder):
        data = read_crop_dataset(path)
        assert len(data.opd) == len(data.label) == len(result_ids(path))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "recovered 5 crops" in messages
    assert "recovered 4 crops" in messages
    assert f"deleted {garbage}" in messages


def test_stale_rtdc_part_files_are_completed_or_deleted(crops, tmp_path, caplog):
    import dclab

    from acquisition.rtdcfile import phase_rad, read_rtdc_rows
    from tests.service.test_export_rtdc import verify

    folder = tmp_path / "archive"
    crash = subprocess.run(
        [sys.executable, "-c", CRASH, str(folder), "rtdc"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crash.returncode == 1, crash.stderr
    (crashed,) = parts(folder)
    with h5py.File(crashed, "r") as h5:
        assert "experiment:event count" not in h5.attrs  # dclab's writer never closed it

    # A file cut off while its rows were being stored: two features hold a row more.
    with make_archive(tmp_path / "other", file_format="rtdc") as archive:
        add(archive, crops[:4], first_id=100)
    interrupted = folder / "crops-20250101-120000-000090.rtdc.part"
    complete(tmp_path / "other")[0].rename(interrupted)
    with h5py.File(interrupted, "r+") as h5:
        for name in ("qpi_pha", "userdef0"):
            h5["events"][name].resize(5, axis=0)
    garbage = folder / "crops-20250101-120000-000091.rtdc.part"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(500))

    caplog.set_level(logging.WARNING, logger="service.archive")
    make_archive(folder, file_format="rtdc").close()
    assert parts(folder) == []
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "recovered 5 crops" in messages  # the flushed ones; the 3 after were lost
    assert "recovered 4 crops" in messages
    assert f"deleted {garbage}" in messages
    recovered = {p.name: p for p in complete(folder)}
    assert set(recovered) == {crashed.name.removesuffix(".part"), interrupted.stem}
    assert result_ids(recovered[crashed.name.removesuffix(".part")]) == [0, 1, 2, 3, 4]
    again = recovered[interrupted.stem]
    assert result_ids(again) == [100, 101, 102, 103]
    with dclab.new_dataset(again) as ds:
        assert len(ds) == ds.config["experiment"]["event count"] == 4
        assert all(len(ds[f]) == 4 for f in ds.features_innate)
        np.testing.assert_array_equal(ds["qpi_pha"][:], phase_rad(crops[:4], 632.8))
        assert "topgan-export" in ds.logs  # the metadata and logs came along
        assert ds.config["qpi"]["wavelength"] == 632.8
    assert read_rtdc_rows(again).models == [("sw480-sw620", "1")]
    for path in recovered.values():
        assert "Check Complete: 0 violations" in verify(path).stdout


def test_a_folder_that_is_a_file_raises_archive_error(tmp_path):
    blocker = tmp_path / "archive"
    blocker.write_text("a regular file where the archive folder should be")
    for folder in (blocker, blocker / "sub"):
        with pytest.raises(ArchiveError, match=f"crop archive: {folder}: cannot create") as err:
            make_archive(folder)
        assert isinstance(err.value, OSError)
        assert err.value.path == folder


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_nearly_full_disk_completes_the_file_and_raises(crops, tmp_path, fmt):
    archive = make_archive(tmp_path, file_format=fmt)
    add(archive, crops[:2], first_id=0)
    archive.min_free_bytes = 2**62  # more than any disk holds
    with pytest.raises(ArchiveError, match="the disk is nearly full"):
        add(archive, crops[2:4], first_id=2)
    assert parts(tmp_path) == []
    assert [result_ids(p) for p in complete(tmp_path)] == [[0, 1]]
    assert archive.archived == 2
    archive.close()


FILE_TOO_LARGE = """
import json, os, resource, signal, sys
from pathlib import Path
from service.errors import ArchiveError
from tests.service.test_archive import add, make_archive, simulate_direct

crops = simulate_direct(["sw480"], 8, seed=1).opd
archive = make_archive(Path(sys.argv[1]), file_format=sys.argv[2])
add(archive, crops[:3], first_id=0, version="1")
# No file may grow past 300 kB (EFBIG instead of SIGXFSZ): model 2's file fails as
# on a full disk, past the free-space check (an rtdc file grows at each flush, which
# the archive's writer thread calls every second).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
error = None
try:
    for i in range(3, 40):
        add(archive, crops[i % 8 : i % 8 + 1], first_id=i, version="2")
        archive.flush()
except ArchiveError as exc:
    error = {"message": str(exc), "path": str(exc.path)}
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
add(archive, crops[:2], first_id=100, version="2")  # the archive goes on in a new file
archive.close()
print(json.dumps({"error": error, "files_failed": archive.files_failed}), flush=True)
# HDF5 could not close the failed file, and its own clean-up at exit crashes on it
# (h5py #914): leave without it.
os._exit(0)
"""


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failing_write_raises_and_keeps_the_complete_files(tmp_path, fmt):
    folder = tmp_path / "archive"
    run = subprocess.run(
        [sys.executable, "-c", FILE_TOO_LARGE, str(folder), fmt],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    error = report["error"]
    assert error is not None, "no write failed"
    assert error["path"].endswith(f"-000002.{fmt}.part")
    assert error["path"] in error["message"]
    assert "File too large" in error["message"]
    assert report["files_failed"] == 1
    if fmt == "rtdc":
        # HDF5 cannot close the failed file (closing any other then crashes): it stays
        # open and .part, and the next start salvages it
        assert [p.name for p in parts(folder)] == [Path(error["path"]).name]
        make_archive(folder, file_format=fmt).close()
    assert parts(folder) == []  # the failed file is recovered or deleted, never left half
    files = complete(folder)
    assert result_ids(files[0]) == [0, 1, 2]  # the complete file is intact
    assert result_ids(files[-1]) == [100, 101]
    assert files[-1].name.endswith(f"-000003.{fmt}")
    for path in files:  # and nothing unreadable is visible
        rows = np.arange(len(result_ids(path)))
        assert len(read_archive_crops(path, rows).opd) == len(rows)


def test_one_archive_per_folder_and_one_caller_at_a_time(crops, tmp_path):
    archive = make_archive(tmp_path)
    with pytest.raises(ArchiveError, match="another crop archive writes into this folder"):
        make_archive(tmp_path)
    archive._busy.acquire()  # another thread is inside add()
    try:
        with pytest.raises(RuntimeError, match="not thread-safe"):
            add(archive, crops[:1], first_id=0)
    finally:
        archive._busy.release()
    adder = threading.Thread(target=add, args=(archive, crops[:2], 0))
    adder.start()
    adder.join()  # handing the archive to another thread is fine, one call at a time
    archive.close()
    with pytest.raises(RuntimeError, match="after close"):
        add(archive, crops[:1], first_id=2)
    make_archive(tmp_path).close()  # the folder is free again
    assert [result_ids(p) for p in complete(tmp_path)] == [[0, 1]]


def test_add_validates_its_input(crops, tmp_path):
    archive = make_archive(tmp_path)
    good = {
        "crops": crops[:2],
        "result_ids": [1, 2],
        "predicted": ["sw480", "sw620"],
        "probabilities": np.full((2, 2), 0.5),
        "qc": qc_rows(2),
        "frame_id": 1,
        "grabbed_at": 0.0,
        "model_name": "m",
        "model_version": "1",
    }
    bad = [
        ({"crops": crops[0]}, r"crops must be \(N, H, W\)"),
        ({"result_ids": [1]}, "result_ids has 1 entries for 2 crops"),
        ({"predicted": ["sw480", "hl60"]}, r"predicted classes \['hl60'\] are not among"),
        ({"probabilities": np.full((2, 3), 0.3)}, r"probabilities must be .* got shape \(2, 3\)"),
        ({"qc": [{}, {}]}, "qc of crop 0 lacks"),
        ({"class_names": ["a", "a"]}, "class_names must be distinct"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            archive.add(**{**good, **change})
    with pytest.raises(ValueError, match="max_bytes must be positive, got 0"):
        make_archive(tmp_path / "x", max_bytes=0)
    archive.add(
        **{
            **good,
            "crops": crops[:0],
            "result_ids": [],
            "predicted": [],
            "probabilities": np.zeros((0, 2)),
            "qc": [],
        }
    )
    archive.close()
    assert archive.archived == 0
    assert complete(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_writer_completes_its_file_on_request_and_records_each_crops_event(
    crops, tmp_path, fmt
):
    from service.archive import ArchiveWriter

    writer = ArchiveWriter(lambda: make_archive(tmp_path, file_format=fmt))
    try:
        for frame, events in ((1, [5, 6]), (2, [5, 7])):
            writer.submit(
                crops[:2],
                [10 * frame, 10 * frame + 1],
                CLASSES,
                np.full((2, 2), 0.5),
                qc_rows(2),
                frame,
                1.7e9 + frame,
                "sw480-sw620",
                "1",
                event_ids=events,
            )
        writer.complete_file()  # what stopping the acquisition does
        assert not parts(tmp_path), "every crop so far is in a complete file"
        (done,) = complete(tmp_path)
        found = read_archive_file(done)
        assert found is not None
        assert found.results.event_id.tolist() == [5, 6, 5, 7]
        assert found.results.result_id.tolist() == [10, 11, 20, 21]
        writer.complete_file()  # nothing being written: nothing happens
        assert complete(tmp_path) == [done]
    finally:
        writer.close()
    assert writer.status()["errors"] == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_training_loads_every_crop_of_the_archive(crops, tmp_path, fmt):
    from training.data import load_crops

    with make_archive(tmp_path, file_crops=5, file_format=fmt) as archive:
        add(archive, crops[:8], first_id=0)
        add(archive, crops[8:], first_id=8, version="2", classes=["a", "b", "c"])
    assert len(complete(tmp_path)) == 3  # 5, 3, then 4 crops of another model
    loaded = load_crops([tmp_path])
    np.testing.assert_allclose(loaded.opd, crops, rtol=0, atol=0 if fmt == "h5" else 1e-3)
    np.testing.assert_array_equal(loaded.label, -1)
    assert loaded.pixel_size_um == 0.25
    assert loaded.files == complete(tmp_path)


def test_a_folder_may_change_format_and_is_read_whole(crops, tmp_path):
    from acquisition.importer import import_archive
    from training.data import load_crops

    with make_archive(tmp_path, file_crops=4) as archive:
        add(archive, crops[:4], first_id=0)
    with make_archive(tmp_path, file_crops=4, file_format="rtdc") as archive:
        add(archive, crops[4:8], first_id=4)
    h5_file, rtdc_file = complete(tmp_path)
    assert (h5_file.name[-9:], rtdc_file.name[-11:]) == ("000001.h5", "000002.rtdc")
    np.testing.assert_allclose(load_crops([tmp_path]).opd, crops[:8], rtol=0, atol=1e-3)
    data, picked = import_archive(tmp_path, "sw480", all_views=True, keep_flagged=True)
    assert data.qc["result_id"].tolist() == list(range(8))
    assert picked.files == 2
    assert set(data.qc) >= set(QC_FEATURES)
    # the bound counts both formats: the oldest file goes, whichever its format
    with make_archive(tmp_path, max_bytes=rtdc_file.stat().st_size, file_format="rtdc") as archive:
        assert archive.files_deleted == 1
    assert complete(tmp_path) == [rtdc_file]


def test_topgan_train_gan_accepts_the_archive_folder(crops, tmp_path):
    folder = tmp_path / "archive"
    with make_archive(folder, file_crops=5) as archive:
        add(archive, crops, first_id=0)
    out = tmp_path / "gan"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "-q",
            "train",
            "gan",
            "--data",
            str(folder),
            "--out",
            str(out),
            "--dry-run",
            "--seed",
            "1",
        ],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    info = json.loads((out / "gan.json").read_text())
    assert info["crops"] == len(crops)
    assert len(info["data"]) == 3
    assert (out / "gan.pt").is_file()


def python_env() -> dict[str, str]:
    """This checkout first on the path of a child Python."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
