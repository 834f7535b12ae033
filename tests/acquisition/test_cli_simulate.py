from __future__ import annotations

import csv
import itertools
import json

import h5py
import numpy as np
import tifffile

from acquisition.cropfile import read_crop_dataset
from service.cli import main
from tests.acquisition.test_cli_reconstruct import run_cli


def test_simulated_holograms_reconstruct_to_their_cells(tmp_path, capsys):
    out = tmp_path / "holo"
    args = [
        "-q",
        "simulate",
        "holograms",
        "--cell-line",
        "sw480",
        "--frames",
        "2",
        "--shape",
        "512x640",
        "--seed",
        "7",
    ]
    assert main([*args, "--out", str(out)]) == 0
    frames = sorted(out.glob("frame_*.tif"))
    assert [f.name for f in frames] == ["frame_00000.tif", "frame_00001.tif"]
    assert tifffile.imread(frames[0]).dtype == np.uint8
    with h5py.File(out / "ground_truth.h5") as h5:
        assert h5["opd_nm"].shape == (2, 512, 320)
    with (out / "cells.csv").open() as f:
        rows = list(csv.DictReader(f))
    cells = [
        r
        for r in rows
        if r["kind"] == "cell" and r["touching"] == "False" and r["clipped"] == "False"
    ]
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["reconstruct_with"]["sample_half"] == "left"

    # The same seed writes the same files.
    again = tmp_path / "again"
    assert main([*args, "--out", str(again)]) == 0
    assert (again / "frame_00001.tif").read_bytes() == frames[1].read_bytes()

    rec = tmp_path / "rec"
    assert (
        main(
            [
                "-q",
                "reconstruct",
                *map(str, frames),
                "--reference",
                str(out / "reference.tiff"),
                "--sample-half",
                "left",
                "--out",
                str(rec),
                "--crops",
                str(rec / "c.h5"),
            ]
        )
        == 0
    )
    crops = read_crop_dataset(rec / "c.h5")
    assert len(crops) >= len(cells)


def test_12_bit_frames_are_stored_msb_aligned(tmp_path):
    out = tmp_path / "h12"
    assert (
        main(
            [
                "-q",
                "simulate",
                "holograms",
                "--cell-line",
                "sw620",
                "--frames",
                "1",
                "--shape",
                "256x320",
                "--bit-depth",
                "12",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    frame = tifffile.imread(out / "frame_00000.tif")
    assert frame.dtype == np.uint16
    assert (frame % 16 == 0).all()
    assert frame.max() > 4095


def test_simulated_cells_and_dataset_info(tmp_path, capsys):
    path = tmp_path / "cells.h5"
    assert (
        main(
            [
                "-q",
                "simulate",
                "cells",
                "--cell-line",
                "hs895-sk,hs895-t",
                "--count",
                "3",
                "--shape",
                "512x640",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    data = read_crop_dataset(path)
    assert data.opd.shape == (6, 128, 128)
    assert data.class_names == ["hs895-sk", "hs895-t"]
    capsys.readouterr()
    assert main(["dataset", "info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "6 crops of 128x128 px at 0.25 um" in text
    assert "hs895-sk: 3, hs895-t: 3, unlabeled: 0" in text
    assert main(["dataset", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"] == {"hs895-sk": 3, "hs895-t": 3, "unlabeled": 0}

    direct = tmp_path / "pool.h5"
    assert (
        main(
            [
                "-q",
                "simulate",
                "cells",
                "--cell-line",
                "sperm",
                "--count",
                "20",
                "--direct",
                "--out",
                str(direct),
            ]
        )
        == 0
    )
    pool = read_crop_dataset(direct)
    assert len(pool) == 20
    assert (pool.label == -1).all()
    assert "direct path" in pool.source


def test_simulate_and_dataset_errors(tmp_path):
    result = run_cli(
        "simulate", "cells", "--cell-line", "hela", "--count", "1", "--out", str(tmp_path / "x.h5")
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "topgan simulate cells: error: unknown cell line 'hela'; known lines: "
        "sperm, hs895-sk, hs895-t, sw480, sw620, mcf10a, mcf7"
    )
    result = run_cli(
        "simulate", "holograms", "--cell-line", "sw480", "--frames", "0", "--out", str(tmp_path)
    )
    assert result.returncode == 2
    assert "--frames must be at least 1" in result.stderr
    result = run_cli("dataset", "info", str(tmp_path / "missing.h5"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    (tmp_path / "bad.h5").write_bytes(b"nope")
    result = run_cli("dataset", "info", str(tmp_path / "bad.h5"))
    assert result.returncode == 2
    assert "not a crop dataset" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_dataset_import_from_the_command_line(tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(3):
        np.save(maps / f"m{i}.npy", np.full((32, 32), 100.0 + i, np.float32))
    (tmp_path / "labels.csv").write_text("file,label\nm0.npy,a\nm1.npy,b\nm2.npy,\n")
    out = tmp_path / "imported.h5"
    assert (
        main(
            [
                "-q",
                "dataset",
                "import",
                "--maps",
                str(maps),
                "--labels",
                str(tmp_path / "labels.csv"),
                "--pixel-size-um",
                "0.2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = read_crop_dataset(out)
    assert data.label.tolist() == [0, 1, -1]
    assert data.pixel_size_um == 0.2
    (tmp_path / "bad.csv").write_text("file,label\nm0.npy,a\nm1.npy,c\nm2.npy,\n")
    result = run_cli(
        "dataset",
        "import",
        "--maps",
        str(maps),
        "--labels",
        str(tmp_path / "bad.csv"),
        "--pixel-size-um",
        "0.2",
        "--classes",
        "a,b",
        "--out",
        str(tmp_path / "x.h5"),
    )
    assert result.returncode == 2
    assert "unknown label 'c'" in result.stderr
    result = run_cli(
        "dataset",
        "import",
        "--maps",
        str(maps),
        "--labels",
        str(tmp_path / "labels.csv"),
        "--out",
        str(tmp_path / "x.h5"),
    )
    assert result.returncode == 2
    assert "--pixel-size-um is required" in result.stderr


def test_simulated_flow_follows_each_cell_across_frames(tmp_path, capsys):
    out = tmp_path / "flow"
    args = ["-q", "--seed", "2", "simulate", "holograms", "--cell-line", "sw480,sw620"]
    args += ["--frames", "16", "--flow", "--flow-speed-um-s", "1500", "--flow-axis", "x"]
    args += ["--flow-direction", "-1", "--out", str(out)]
    assert main(args) == 0
    assert "cells in flow" in capsys.readouterr().err
    with (out / "cells.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "cell"]
    tracks: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        tracks.setdefault(row["track"], []).append(row)
    assert len(tracks) >= 3
    assert any(len(views) >= 3 for views in tracks.values()), "cells stay for several frames"
    for views in tracks.values():
        frames = [int(v["frame"]) for v in views]
        assert frames == list(range(frames[0], frames[0] + len(frames)))
        xs = [float(v["x_px"]) for v in views]
        assert all(b < a for a, b in itertools.pairwise(xs)), "downstream along -x"
        assert len({v["y_px"] for v in views}) == 1, "in its lane"
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["flow"]["axis"] == "x"
    assert meta["flow"]["direction"] == -1
