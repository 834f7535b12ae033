from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile

from acquisition.frames import FrameProcessor
from acquisition.importer import DatasetImportError, import_holograms, import_opd_maps
from acquisition.reconstruction import ReconstructionConfig


def write_labels(path, rows, header="file,label"):
    path.write_text(header + "\n" + "\n".join(f"{f},{lab}" for f, lab in rows) + "\n")
    return path


@pytest.fixture
def maps_dir(tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "a.npy", rng.normal(100, 10, (64, 64)).astype(np.float32))
    tifffile.imwrite(folder / "b.tif", rng.normal(100, 10, (64, 64)).astype(np.float32))
    scipy.io.savemat(folder / "c.mat", {"opd": rng.normal(100, 10, (64, 64))})
    with h5py.File(folder / "d.mat", "w") as h5:  # MATLAB v7.3 is HDF5 (stored transposed)
        h5["opd"] = rng.normal(100, 10, (64, 64)).T
    return folder


def test_opd_maps_import_with_units_and_labels(maps_dir, tmp_path):
    labels = write_labels(
        tmp_path / "l.csv",
        [("a.npy", "sw480"), ("b.tif", "sw620"), ("c.mat", ""), ("d.mat", "sw480")],
    )
    data = import_opd_maps(maps_dir, labels, pixel_size_um=0.25, wavelength_nm=632.8)
    assert data.opd.shape == (4, 64, 64)
    assert data.class_names == ["sw480", "sw620"]
    assert data.label.tolist() == [0, 1, -1, 0]
    np.testing.assert_allclose(data.opd[0], np.load(maps_dir / "a.npy"))
    in_um = import_opd_maps(maps_dir, labels, 0.25, 632.8, unit="um", classes=["sw620", "sw480"])
    np.testing.assert_allclose(in_um.opd[0], data.opd[0] * 1000, rtol=1e-6)
    assert in_um.label.tolist() == [1, 0, -1, 1]


def test_import_errors_say_what_is_wrong(maps_dir, tmp_path):
    ok = [("a.npy", "x"), ("b.tif", "y"), ("c.mat", "x"), ("d.mat", "y")]
    with pytest.raises(DatasetImportError, match="not in"):
        import_opd_maps(
            maps_dir, write_labels(tmp_path / "m.csv", [*ok, ("e.npy", "x")]), 0.25, 632.8
        )
    with pytest.raises(DatasetImportError, match="no row in the labels file"):
        import_opd_maps(maps_dir, write_labels(tmp_path / "u.csv", ok[:3]), 0.25, 632.8)
    with pytest.raises(DatasetImportError, match="unknown label 'y'"):
        import_opd_maps(maps_dir, write_labels(tmp_path / "k.csv", ok), 0.25, 632.8, classes=["x"])
    with pytest.raises(DatasetImportError, match="columns 'file' and 'label'"):
        import_opd_maps(
            maps_dir, write_labels(tmp_path / "h.csv", ok, header="name,class"), 0.25, 632.8
        )
    with pytest.raises(DatasetImportError, match="does not exist"):
        import_opd_maps(maps_dir, tmp_path / "none.csv", 0.25, 632.8)
    with pytest.raises(DatasetImportError, match="listed twice"):
        import_opd_maps(
            maps_dir, write_labels(tmp_path / "t.csv", [*ok, ("a.npy", "x")]), 0.25, 632.8
        )
    np.save(maps_dir / "a.npy", np.zeros((32, 48), np.float32))
    with pytest.raises(DatasetImportError, match=r"mixed sizes: 32x48 \(e.g. a.npy\)"):
        import_opd_maps(maps_dir, write_labels(tmp_path / "s.csv", ok), 0.25, 632.8)
    np.save(maps_dir / "a.npy", np.full((64, 64), np.nan, np.float32))
    with pytest.raises(DatasetImportError, match="NaN or Inf"):
        import_opd_maps(maps_dir, write_labels(tmp_path / "n.csv", ok), 0.25, 632.8)
    with pytest.raises(DatasetImportError, match="is not a folder"):
        import_opd_maps(tmp_path / "nope", write_labels(tmp_path / "f.csv", ok), 0.25, 632.8)


def test_hologram_import_labels_every_cell_of_a_file(real_dir, tmp_path, backend):
    folder = tmp_path / "holo"
    folder.mkdir()
    (folder / "cell.tif").write_bytes((real_dir / "single_cell_hologram.tif").read_bytes())
    labels = write_labels(tmp_path / "l.csv", [("cell.tif", "hl60")])
    processor = FrameProcessor(ReconstructionConfig(), backend=backend)
    data = import_holograms(folder, labels, processor)
    assert data.opd.shape == (1, 128, 128)
    assert data.class_names == ["hl60"]
    assert data.label.tolist() == [0]
    assert data.qc["area_um2"][0] > 50
