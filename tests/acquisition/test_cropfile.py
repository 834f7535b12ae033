from __future__ import annotations

import numpy as np
import pytest

from acquisition.cropfile import CropDataset, qc_columns, read_crop_dataset, write_crop_dataset


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
