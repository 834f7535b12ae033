from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from acquisition.errors import UnreadableFileError
from acquisition.io import read_hologram


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(40, 48), dtype=np.uint8)


def test_real_files_read_with_their_metadata(real_dir):
    npz = read_hologram(real_dir / "hl60_hologram_with_bg.npz")
    assert npz.frames.shape == (1, 200, 210)
    assert npz.reference is not None
    tif = read_hologram(real_dir / "single_cell_hologram.tif")
    assert tif.frames.shape == (1, 238, 267)
    assert tif.frames.dtype == np.uint8
    h5 = read_hologram(real_dir / "single_cell_hologram_meta.h5")
    assert h5.frames.shape == (1, 294, 280)
    assert h5.wavelength_nm == pytest.approx(532.0)
    assert h5.pixel_size_um == pytest.approx(0.08475, rel=1e-3)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy", ".npz", ".h5"])
def test_lossless_formats_round_trip(tmp_path, frame, suffix):
    path = tmp_path / f"holo{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, frame)
    elif suffix == ".png":
        Image.fromarray(frame).save(path)
    elif suffix == ".npy":
        np.save(path, frame)
    elif suffix == ".npz":
        np.savez(path, data=frame, bg_data=frame // 2)
    else:
        with h5py.File(path, "w") as h5:
            h5["0"] = frame
    got = read_hologram(path)
    np.testing.assert_array_equal(got.frames[0], frame)


def test_jpeg_and_16_bit_and_stacks(tmp_path, frame):
    Image.fromarray(frame).save(tmp_path / "h.jpg", quality=95)
    jpg = read_hologram(tmp_path / "h.jpg").frames[0]
    assert jpg.shape == frame.shape
    assert np.abs(jpg.astype(int) - frame).mean() < 10
    stack = np.stack([frame.astype(np.uint16) << 4] * 3)
    tifffile.imwrite(tmp_path / "s.tiff", stack, photometric="minisblack")
    got = read_hologram(tmp_path / "s.tiff").frames
    assert got.shape == (3, 40, 48)
    assert got.dtype == np.uint16
    rgb = np.stack([frame] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_hologram(tmp_path / "rgb.png").frames[0], frame)


def test_unreadable_files_name_the_problem(tmp_path):
    with pytest.raises(UnreadableFileError, match="no such file"):
        read_hologram(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnreadableFileError, match=r"unknown format '\.txt'"):
        read_hologram(tmp_path / "notes.txt")
    (tmp_path / "broken.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(UnreadableFileError, match=r"broken\.tif"):
        read_hologram(tmp_path / "broken.tif")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(UnreadableFileError, match="not a valid image"):
        read_hologram(tmp_path / "broken.png")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnreadableFileError, match="pickled"):
        read_hologram(tmp_path / "pickled.npy")
    np.savez(tmp_path / "many.npz", a=np.zeros((4, 4)), b=np.zeros((4, 4)))
    with pytest.raises(UnreadableFileError, match="expected an array named 'data'"):
        read_hologram(tmp_path / "many.npz")
    with h5py.File(tmp_path / "empty.h5", "w") as h5:
        h5["x"] = np.zeros(5)
    with pytest.raises(UnreadableFileError, match="no 2-D image dataset"):
        read_hologram(tmp_path / "empty.h5")
    with pytest.raises(UnreadableFileError, match="not a file"):
        read_hologram(tmp_path)
