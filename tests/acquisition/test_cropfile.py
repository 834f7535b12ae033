from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from acquisition.cropfile import (
    GZIP_LEVEL,
    Classified,
    CropDataset,
    CropWriter,
    qc_columns,
    read_crop_dataset,
    salvage_crop_file,
    write_crop_dataset,
)

REPO = Path(__file__).resolve().parents[2]


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = CropDataset(
        opd=rng.normal(100, 50, size=(5, 128, 128)),
        label=np.array([0, 1, -1, 1, 0]),
        class_names=["sw480", "sw620"],
        pixel_size_um=0.25,
        wavelength_nm=632.8,
        source="test",
        qc=qc_columns(
            [{"area_um2": 100.0 + i, "touching": i % 2 == 0} for i in range(5)],
            ["area_um2", "touching"],
        ),
    )
    write_crop_dataset(tmp_path / "set.h5", data)
    back = read_crop_dataset(tmp_path / "set.h5")
    np.testing.assert_array_equal(back.opd, data.opd.astype(np.float32))
    assert back.opd.dtype == np.float32
    assert back.label.dtype == np.int16
    np.testing.assert_array_equal(back.label, data.label)
    assert back.class_names == ["sw480", "sw620"]
    assert (back.pixel_size_um, back.wavelength_nm, back.source) == (0.25, 632.8, "test")
    np.testing.assert_array_equal(back.qc["touching"], [1, 0, 1, 0, 1])
    assert back.qc["touching"].dtype == np.uint8
    np.testing.assert_allclose(back.qc["area_um2"], [100, 101, 102, 103, 104])


def test_empty_dataset_round_trips(tmp_path):
    data = CropDataset(np.zeros((0, 128, 128)), np.zeros(0), [], 0.25, 632.8, "none")
    write_crop_dataset(tmp_path / "e.h5", data)
    assert len(read_crop_dataset(tmp_path / "e.h5")) == 0


@pytest.mark.parametrize(
    ("opd", "label", "names", "message"),
    [
        (np.zeros((2, 8)), [0, 0], ["a"], "opd must be"),
        (np.zeros((2, 8, 8)), [0], ["a"], "label must have shape"),
        (np.zeros((2, 8, 8)), [0, 3], ["a", "b"], "labels must be -1"),
    ],
)
def test_inconsistent_datasets_refused(opd, label, names, message):
    with pytest.raises(ValueError, match=message):
        CropDataset(opd, np.asarray(label), names, 0.25, 632.8, "")


def sample(n: int = 7, seed: int = 0) -> CropDataset:
    rng = np.random.default_rng(seed)
    return CropDataset(
        opd=rng.normal(100, 50, size=(n, 32, 48)),
        label=rng.integers(-1, 2, n),
        class_names=["sw480", "sw620"],
        pixel_size_um=0.25,
        wavelength_nm=632.8,
        source="test",
        qc=qc_columns(
            [{"area_um2": 100.0 + i, "touching": i % 2 == 0} for i in range(n)],
            ["area_um2", "touching"],
        ),
    )


def writer_for(path: Path, data: CropDataset, **options: object) -> CropWriter:
    settings: dict = {
        "class_names": data.class_names,
        "pixel_size_um": data.pixel_size_um,
        "wavelength_nm": data.wavelength_nm,
        "source": data.source,
        **options,
    }
    return CropWriter(path, data.opd.shape[1:], **settings)


def rows(
    data: CropDataset, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    return (
        data.opd[start:stop],
        data.label[start:stop],
        {k: v[start:stop] for k, v in data.qc.items()},
    )


def layout(path: Path) -> dict:
    """Every dataset's dtype, shape, chunks, filters and fill value, and the attributes."""
    with h5py.File(path, "r") as h5:
        found: dict = {"attrs": {k: np.asarray(v).tolist() for k, v in h5.attrs.items()}}

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                found[name] = (
                    obj.dtype,
                    obj.shape,
                    obj.maxshape,
                    obj.chunks,
                    obj.compression,
                    obj.compression_opts,
                    obj.shuffle,
                    obj.fillvalue,
                )

        h5.visititems(visit)
        return found


def test_a_file_written_row_by_row_equals_write_crop_dataset(tmp_path):
    data = sample()
    write_crop_dataset(tmp_path / "once.h5", data)
    with writer_for(tmp_path / "rows.h5", data, expected_rows=len(data)) as writer:
        for start, stop in ((0, 3), (3, 3), (3, 7)):
            writer.append(*rows(data, start, stop))
            assert writer.count == stop
    assert layout(tmp_path / "rows.h5") == layout(tmp_path / "once.h5")
    once, by_rows = (read_crop_dataset(tmp_path / f) for f in ("once.h5", "rows.h5"))
    for back in (once, by_rows):
        np.testing.assert_array_equal(back.opd, data.opd)
        np.testing.assert_array_equal(back.label, data.label)
        assert back.qc.keys() == data.qc.keys()
        for name, values in data.qc.items():
            np.testing.assert_array_equal(back.qc[name], values)
    with h5py.File(tmp_path / "once.h5") as a, h5py.File(tmp_path / "rows.h5") as b:
        for i in range(len(data)):  # the same bytes on disk
            assert a["opd"].id.read_direct_chunk((i, 0, 0)) == b["opd"].id.read_direct_chunk(
                (i, 0, 0)
            )
        assert (a["opd"].compression, a["opd"].compression_opts) == ("gzip", GZIP_LEVEL)


def test_a_classifiers_results_are_columns_of_their_own(tmp_path):
    data = sample(5)
    results = Classified(
        result_id=np.arange(10, 15),
        predicted=np.array([0, 1, 1, 0, 1]),
        probability=np.full((5, 2), 0.5),
        frame_id=np.array([3, 3, 4, 4, 4]),
        grabbed_at=np.linspace(1.7e9, 1.7e9 + 1, 5),
    )
    with writer_for(tmp_path / "c.h5", data, model=("sw480-sw620", "2")) as writer:
        writer.append(*rows(data, 0, 2), classified=results[0:2])
        with pytest.raises(ValueError, match="carries a classifier's results"):
            writer.append(*rows(data, 2, 5))
        with pytest.raises(ValueError, match="rows have"):
            writer.append(data.opd[2:5], data.label[2:5], {}, results[2:5])
        writer.append(*rows(data, 2, 5), classified=results[2:5])
    back = read_crop_dataset(tmp_path / "c.h5")
    np.testing.assert_array_equal(back.opd, data.opd)
    np.testing.assert_array_equal(back.label, data.label)
    with h5py.File(tmp_path / "c.h5", "r") as h5:
        assert (h5.attrs["model_name"], h5.attrs["model_version"]) == ("sw480-sw620", "2")
        expected = {
            "result_id": np.int64,
            "predicted": np.int16,
            "probability": np.float32,
            "frame_id": np.int64,
            "grabbed_at": np.float64,
        }
        for name, dtype in expected.items():
            assert h5[name].dtype == dtype
            np.testing.assert_array_equal(h5[name][()], getattr(results, name))
        assert h5["probability"].shape == (5, 2)
    with (
        writer_for(tmp_path / "plain.h5", data) as writer,
        pytest.raises(ValueError, match="no classifier's results"),
    ):
        writer.append(*rows(data, 0, 2), classified=results[0:2])


def test_a_writer_closed_empty_leaves_an_empty_dataset(tmp_path):
    data = sample(0)
    writer_for(tmp_path / "e.h5", data).close()
    writer_for(tmp_path / "m.h5", data, model=("m", "1")).close()
    for name in ("e.h5", "m.h5"):
        back = read_crop_dataset(tmp_path / name)
        assert len(back) == 0
        assert back.opd.shape == (0, 32, 48)
    with h5py.File(tmp_path / "m.h5", "r") as h5:
        assert h5["probability"].shape == (0, 2)
    with pytest.raises(FileExistsError):
        writer_for(tmp_path / "e.h5", data)  # a writer never replaces a file unasked


CUT_SHORT = """
import os, sys
import numpy as np
from pathlib import Path
from acquisition.cropfile import CropWriter
from tests.acquisition.test_cropfile import rows, sample, writer_for

data = sample()
writer = writer_for(Path(sys.argv[1]), data)
writer.append(*rows(data, 0, 3))
write_rows = CropWriter._write_rows

def die_before_label(self, opd, columns):
    write_rows(self, opd, {k: v for k, v in columns.items() if k != "label"})
    self.flush()  # everything of rows 3-6 is on disk but their labels
    os._exit(1)

CropWriter._write_rows = die_before_label
writer.append(*rows(data, 3, 7))
"""


def fail_before_label(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = sample()
    writer = writer_for(path, data)
    writer.append(*rows(data, 0, 3))
    write_rows = CropWriter._write_rows

    def failing(self: CropWriter, opd: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        write_rows(self, opd, {k: v for k, v in columns.items() if k != "label"})
        raise OSError("disk full")

    monkeypatch.setattr(CropWriter, "_write_rows", failing)
    with pytest.raises(OSError, match="disk full"):
        writer.append(*rows(data, 3, 7))
    assert writer.count == 3
    writer.abort()


@pytest.mark.parametrize("how", ["crash", "failed write"])
def test_a_file_cut_short_mid_write_is_salvaged_with_its_complete_rows(how, tmp_path, monkeypatch):
    path = tmp_path / "cut.h5"
    if how == "crash":
        crash = subprocess.run(
            [sys.executable, "-c", CUT_SHORT, str(path)],
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert crash.returncode == 1, crash.stderr
    else:
        fail_before_label(path, monkeypatch)
    with h5py.File(path, "r") as h5:  # row 3 on is written, but for its label
        assert (len(h5["opd"]), len(h5["qc/area_um2"]), len(h5["label"])) == (7, 7, 3)
    assert salvage_crop_file(path) == 3
    assert salvage_crop_file(path) == 3  # nothing left to cut
    data, back = sample(), read_crop_dataset(path)
    np.testing.assert_array_equal(back.opd, data.opd[:3])
    np.testing.assert_array_equal(back.label, data.label[:3])
    np.testing.assert_array_equal(back.qc["area_um2"], data.qc["area_um2"][:3])
    assert back.class_names == data.class_names


def test_salvage_refuses_what_it_cannot_read(tmp_path):
    data = sample()
    write_crop_dataset(tmp_path / "whole.h5", data)
    whole = (tmp_path / "whole.h5").read_bytes()
    (tmp_path / "truncated.h5").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "garbage.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(500))
    write_crop_dataset(tmp_path / "short.h5", data)
    with h5py.File(tmp_path / "short.h5", "r+") as h5:
        h5["opd"].resize(5, axis=0)  # fewer crops than labels
    for name in ("truncated.h5", "garbage.h5", "missing.h5"):
        with pytest.raises(ValueError, match=r"."):
            salvage_crop_file(tmp_path / name)
    with pytest.raises(ValueError, match="fewer values than label's 7"):
        salvage_crop_file(tmp_path / "short.h5")
    assert salvage_crop_file(tmp_path / "whole.h5") == len(data)


def python_env() -> dict[str, str]:
    """This checkout first on the path of a child Python."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
