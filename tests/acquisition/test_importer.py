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


# -- a crop archive's runs -------------------------------------------------------------

#: Run A (grabbed at 100 + frame s): event 1 in frames 0-2, event 2 in frames 0-3 (its
#: first view out of focus), two crops without an event in frame 4. Run B (200 + frame
#: s): event 3 in frames 10 and 11. (result id, frame, event, flag); ids are in order.
ARCHIVED = [
    (0, 0, 1, None),
    (1, 0, 2, "out_of_focus"),
    (2, 1, 1, None),
    (3, 1, 2, None),
    (4, 2, 1, None),
    (5, 2, 2, None),
    (6, 3, 2, None),
    (7, 4, -1, None),
    (8, 4, -1, None),
    (9, 10, 3, None),
    (10, 11, 3, None),
]


def write_archive(folder, pixel_size_um=0.25, fmt="h5"):
    """The crop archive of :data:`ARCHIVED`, written by the service's own archive (five
    crops a file, so events straddle files; ``fmt`` h5 or rtdc), each crop filled with
    its result id."""
    from service.archive import CropArchive
    from tests.service.test_archive import OPTICS

    classes = ["sw480", "sw620"]
    with CropArchive(
        folder,
        max_bytes=2**30,
        file_crops=5,
        pixel_size_um=pixel_size_um,
        wavelength_nm=632.8,
        class_names=classes,
        min_free_bytes=0,
        file_format=fmt,
        optics=OPTICS,
    ) as archive:
        for rid, frame, event, flag in ARCHIVED:
            qc = {name: 1.0 for name in ("area_um2", "dry_mass_pg", "mean_opd_nm")}
            qc |= {"peak_opd_nm": 1.0, "circularity": 0.9, "solidity": 0.95}
            qc |= {"amplitude_std": 0.05, "clipped": False, "touching": False}
            qc |= {"out_of_focus": False} | ({flag: True} if flag else {})
            archive.add(
                np.full((1, 16, 16), float(rid), np.float32),
                [rid],
                ["sw480"],
                np.array([[0.6, 0.4]]),
                [qc],
                frame_id=frame,
                grabbed_at=(100.0 if frame < 10 else 200.0) + frame,
                model_name="m",
                model_version="1",
                event_ids=[event],
            )
    (folder / f"crops-20250101-000000-000099.{fmt}.part").write_bytes(b"being written")
    return folder


def ids(data):
    return np.rint(data.opd[:, 0, 0]).astype(int).tolist()  # rtdc: to float rounding


@pytest.mark.parametrize("fmt", ["h5", "rtdc"])
def test_archive_runs_become_labelled_crops_one_view_per_cell(tmp_path, fmt):
    from acquisition.importer import import_archive

    archive = write_archive(tmp_path / "archive", fmt=fmt)
    data, picked = import_archive(archive, "sw480", until=150)
    # event 1: views 0, 2, 4 -> the middle, 2; event 2: 1 is flagged, so 3, 5, 6 -> 5;
    # the crops without an event are each kept
    assert ids(data) == [2, 5, 7, 8]
    assert data.class_names == ["sw480"]
    assert (data.label == 0).all()
    assert (data.pixel_size_um, data.wavelength_nm) == (0.25, 632.8)
    assert data.qc["result_id"].tolist() == [2, 5, 7, 8]
    assert data.qc["event_id"].tolist() == [1, 2, -1, -1]
    assert data.qc["frame_id"].tolist() == [1, 2, 4, 4]
    assert {"area_um2", "out_of_focus"} <= set(data.qc)
    np.testing.assert_allclose(data.qc["circularity"], 0.9, rtol=1e-6)  # rtdc: sqrt, squared
    np.testing.assert_allclose(data.qc["solidity"], 0.95, rtol=1e-6)
    assert data.qc["out_of_focus"].tolist() == [0, 0, 0, 0]
    assert (picked.crops, picked.kept, picked.flagged_crops, picked.other_views) == (9, 4, 1, 4)
    assert picked.flagged["out_of_focus"] == 1
    assert (picked.files, picked.unfinished) == (2, 1)
    assert "one view per cell" in data.source
    kept, _ = import_archive(archive, "sw480", until=150, keep_flagged=True)
    assert ids(kept) == [2, 3, 7, 8]  # event 2: 1, 3, 5, 6 -> the lower middle, 3
    every, picked = import_archive(archive, "sw480", until=150, all_views=True)
    assert ids(every) == [0, 2, 3, 4, 5, 6, 7, 8]
    assert picked.other_views == 0
    run_b, _ = import_archive(archive, "sw620", since=150)
    assert ids(run_b) == [9]  # event 3: views 9 and 10, the lower middle


def test_archive_import_errors_say_what_is_wrong(tmp_path):
    from acquisition.cropfile import write_crop_dataset
    from acquisition.importer import import_archive
    from acquisition.simulator.datasets import simulate_direct

    archive = write_archive(tmp_path / "archive")
    with pytest.raises(DatasetImportError, match=r"no crops to import .* 0 archived"):
        import_archive(archive, "sw480", since=1000)
    with pytest.raises(DatasetImportError, match="must come after --since"):
        import_archive(archive, "sw480", since=150, until=100)
    with pytest.raises(DatasetImportError, match="no such folder"):
        import_archive(tmp_path / "nowhere", "sw480")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "crops-20250101-000000-000001.h5.part").write_bytes(b"")
    with pytest.raises(DatasetImportError, match=r"no complete archive files .* 1 still being"):
        import_archive(empty, "sw480")
    write_crop_dataset(archive / "lab.h5", simulate_direct(["sw480"], 2, seed=1))
    with pytest.raises(DatasetImportError, match=r"lab\.h5 is not a crop archive file"):
        import_archive(archive, "sw480")


def test_dataset_import_archive_and_merge_from_the_command_line(tmp_path, capsys):
    from acquisition.cropfile import read_crop_dataset, write_crop_dataset
    from service.cli import main

    archive = write_archive(tmp_path / "archive")
    a, b, lab = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "lab.h5"
    run = ["dataset", "import", "--archive", str(archive)]
    assert main([*run, "--label", "sw620", "--since", "150", "--out", str(b)]) == 0
    until = "1970-01-01T00:02:30"  # ISO 8601, UTC: 150 s
    assert main([*run, "--label", "sw480", "--until", until, "--out", str(a)]) == 0
    err = capsys.readouterr().err
    assert (
        f"wrote 4 crops (sw480) of 9 archived in the window, from 2 file(s), to {a}; "
        "1 QC-flagged left out (out_of_focus 1); 4 other views of the same cells left out; "
        "1 file(s) still being written not read"
    ) in err
    # b before a: the classes still come sorted
    assert main(["dataset", "merge", str(b), str(a), "--out", str(lab)]) == 0
    assert f"wrote 5 crops (sw480 4, sw620 1) to {lab}" in capsys.readouterr().err
    merged = read_crop_dataset(lab)
    assert merged.class_names == ["sw480", "sw620"]
    assert merged.label.tolist() == [1, 0, 0, 0, 0]
    assert ids(merged) == [9, 2, 5, 7, 8]
    assert merged.qc["result_id"].tolist() == [9, 2, 5, 7, 8]
    assert f"merged from {b} (1 crops: sw620 1); {a} (4 crops: sw480 4)" == merged.source
    assert (
        main(["dataset", "merge", str(b), str(a), "--out", str(lab), "--classes", "sw620,sw480"])
        == 0
    )
    assert read_crop_dataset(lab).label.tolist() == [0, 1, 1, 1, 1]
    capsys.readouterr()

    other = read_crop_dataset(a)
    other.pixel_size_um = 0.3
    write_crop_dataset(tmp_path / "other.h5", other)
    bad = [
        ([*run, "--out", str(a)], "--archive needs --label NAME"),
        ([*run, "--label", "x", "--since", "soon", "--out", str(a)], "--since: expected Unix"),
        (
            ["dataset", "import", "--rtdc", "x.rtdc", "--all-views", "--out", str(a)],
            "--all-views goes with --archive",
        ),
        (
            ["dataset", "merge", str(a), str(tmp_path / "other.h5"), "--out", str(lab)],
            "other.h5 has crops at 0.3 um per pixel",
        ),
        (
            ["dataset", "merge", str(a), str(b), "--classes", "sw480", "--out", str(lab)],
            "has crops labelled 'sw620', which --classes (sw480) does not name",
        ),
        (["dataset", "merge", str(tmp_path / "no.h5"), "--out", str(lab)], "does not exist"),
    ]
    for args, message in bad:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert message in err, err
