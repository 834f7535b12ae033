from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from acquisition.cropfile import read_crop_dataset
from service.cli import main

REAL_FILES = [
    "hl60_hologram_with_bg.npz",
    "single_cell_hologram.tif",
    "single_cell_hologram_meta.h5",
]


@pytest.mark.parametrize("name", REAL_FILES)
def test_each_real_hologram_yields_exactly_one_crop(real_dir, tmp_path, name, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "-q",
            "reconstruct",
            str(real_dir / name),
            "--out",
            str(out),
            "--crops",
            str(tmp_path / "crops.h5"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    crops = read_crop_dataset(tmp_path / "crops.h5")
    assert crops.opd.shape == (1, 128, 128)
    assert crops.label.tolist() == [-1]
    assert crops.pixel_size_um == 0.25
    assert crops.qc["area_um2"][0] > 50
    assert crops.qc["dry_mass_pg"][0] > 0
    # The crop is centred on the cell: the OPD peak region sits in the middle.
    crop = crops.opd[0]
    assert crop[48:80, 48:80].mean() > 3 * np.abs(crop[:16, :16]).mean()

    stem = name.rsplit(".", 1)[0]
    opd = np.load(out / f"{stem}.npy")
    meta = json.loads((out / f"{stem}.json").read_text())
    assert opd.dtype == np.float32
    assert opd.ndim == 2
    assert meta["unit"] == "nm"
    assert meta["shape"] == list(opd.shape)
    assert meta["pixel_size_um"] > 0
    assert meta["cells_per_frame"] == [1]
    assert opd.max() > 100, "cells are positive, in nm"


def test_metadata_and_flags(real_dir, tmp_path):
    out = tmp_path / "o"
    assert (
        main(
            ["-q", "reconstruct", str(real_dir / "single_cell_hologram_meta.h5"), "--out", str(out)]
        )
        == 0
    )
    meta = json.loads((out / "single_cell_hologram_meta.json").read_text())
    assert meta["wavelength_nm"] == pytest.approx(532.0)
    assert meta["camera_pixel_size_um"] == pytest.approx(0.08475, rel=1e-3)
    assert (
        main(
            [
                "-q",
                "reconstruct",
                str(real_dir / "single_cell_hologram_meta.h5"),
                "--out",
                str(out),
                "--wavelength-nm",
                "633",
                "--pixel-size-um",
                "0.1",
                "--resolution",
                "full",
            ]
        )
        == 0
    )
    meta = json.loads((out / "single_cell_hologram_meta.json").read_text())
    assert meta["wavelength_nm"] == 633
    assert meta["pixel_size_um"] == pytest.approx(0.1)
    assert meta["shape"] == [294, 280]


def test_explicit_reference_file(real_dir, tmp_path):
    data = np.load(real_dir / "hl60_hologram_with_bg.npz")
    np.save(tmp_path / "cell.npy", data["data"])
    np.save(tmp_path / "bg.npy", data["bg_data"])
    assert (
        main(
            [
                "-q",
                "reconstruct",
                str(tmp_path / "cell.npy"),
                "--reference",
                str(tmp_path / "bg.npy"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    with_ref = np.load(tmp_path / "o" / "cell.npy")
    assert json.loads((tmp_path / "o" / "cell.json").read_text())["reference"].endswith("bg.npy")
    assert with_ref.max() > 200


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # The installed console script, as a user runs it.
        [str(Path(sys.executable).with_name("topgan")), "-q", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("topgan reconstruct: error: ")
    return lines[0]


def test_bad_inputs_exit_non_zero_with_one_line(real_dir, tmp_path):
    out = str(tmp_path / "o")
    assert "no such file" in one_line_error(
        run_cli("reconstruct", str(tmp_path / "nope.tif"), "--out", out)
    )
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    assert "bad.tif" in one_line_error(
        run_cli("reconstruct", str(tmp_path / "bad.tif"), "--out", out)
    )
    np.save(tmp_path / "flat.npy", np.full((128, 128), 90, np.uint8))
    assert "no sideband" in one_line_error(
        run_cli("reconstruct", str(tmp_path / "flat.npy"), "--out", out)
    )
    np.save(tmp_path / "nan.npy", np.full((64, 64), np.nan, np.float32))
    assert "NaN" in one_line_error(run_cli("reconstruct", str(tmp_path / "nan.npy"), "--out", out))
    np.save(tmp_path / "line.npy", np.zeros(64, np.uint8))
    assert "shape (64,)" in one_line_error(
        run_cli("reconstruct", str(tmp_path / "line.npy"), "--out", out)
    )
    np.save(
        tmp_path / "small_ref.npy", np.zeros((50, 50), np.uint8) + np.arange(50, dtype=np.uint8) % 4
    )
    msg = one_line_error(
        run_cli(
            "reconstruct",
            str(real_dir / "single_cell_hologram.tif"),
            "--reference",
            str(tmp_path / "small_ref.npy"),
            "--out",
            out,
        )
    )
    assert "differs from the hologram shape" in msg
    assert not (tmp_path / "o" / "single_cell_hologram.npy").exists()


def test_duplicate_names_and_mixed_wavelengths_refused(real_dir, tmp_path):
    (tmp_path / "a").mkdir()
    src = real_dir / "single_cell_hologram.tif"
    (tmp_path / "a" / src.name).write_bytes(src.read_bytes())
    msg = one_line_error(
        run_cli(
            "reconstruct", str(src), str(tmp_path / "a" / src.name), "--out", str(tmp_path / "o")
        )
    )
    assert "share the name" in msg
    msg = one_line_error(
        run_cli(
            "reconstruct",
            str(src),
            str(real_dir / "single_cell_hologram_meta.h5"),
            "--out",
            str(tmp_path / "o"),
            "--crops",
            str(tmp_path / "c.h5"),
        )
    )
    assert "several wavelengths" in msg
    assert not (tmp_path / "o").exists(), "nothing is written when the input is refused"


def test_argument_errors_exit_non_zero(tmp_path):
    result = run_cli("reconstruct", "x.tif")
    assert result.returncode == 2
    assert "--out" in result.stderr
    result = run_cli("reconstruct", "x.tif", "--out", str(tmp_path), "--carrier", "0.2")
    assert result.returncode == 2
    assert "KY,KX" in result.stderr
    result = run_cli("reconstruct", "x.tif", "--out", str(tmp_path), "--sample-margin-px", "-3")
    assert result.returncode == 2
    assert "'whole'" in result.stderr


def test_inputs_are_never_overwritten(real_dir, tmp_path):
    data = np.load(real_dir / "hl60_hologram_with_bg.npz")
    np.save(tmp_path / "cell.npy", data["data"])
    before = (tmp_path / "cell.npy").read_bytes()
    msg = one_line_error(run_cli("reconstruct", str(tmp_path / "cell.npy"), "--out", str(tmp_path)))
    assert "would overwrite the input" in msg
    assert (tmp_path / "cell.npy").read_bytes() == before
    msg = one_line_error(
        run_cli(
            "reconstruct",
            str(tmp_path / "cell.npy"),
            "--out",
            str(tmp_path / "o"),
            "--crops",
            str(tmp_path),
        )
    )
    assert "--crops" in msg


def test_seed_and_quiet_accepted_after_the_command(real_dir, tmp_path):
    result = run_cli(
        "reconstruct",
        str(real_dir / "single_cell_hologram.tif"),
        "--out",
        str(tmp_path),
        "--seed",
        "3",
        "-q",
    )
    assert result.returncode == 0, result.stderr


def test_unavailable_backend_is_one_line(real_dir, tmp_path):
    from acquisition.backend import BackendUnavailableError, get_backend

    try:
        get_backend("cupy")
        pytest.skip("a CUDA device answers here")
    except BackendUnavailableError:
        pass
    msg = one_line_error(
        run_cli(
            "reconstruct",
            str(real_dir / "single_cell_hologram.tif"),
            "--out",
            str(tmp_path),
            "--backend",
            "cupy",
        )
    )
    assert "--backend cupy" in msg


def test_rejections_are_reported_with_their_reason(rejecting_scene, tmp_path, capsys):
    np.save(tmp_path / "frames.npy", rejecting_scene.holograms)
    np.save(tmp_path / "reference.npy", rejecting_scene.reference)
    out = tmp_path / "out"
    args = [str(tmp_path / "frames.npy"), "--reference", str(tmp_path / "reference.npy")]
    code = main(["reconstruct", *args, "--sample-half", "left", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    meta = json.loads((out / "frames.json").read_text())
    assert meta["cells_per_frame"] == [1, 1]
    assert meta["sample_margin_px"] == 128
    assert meta["rejected"] == [{"touching": 1, "clipped": 1}, {}]
    lines = err.splitlines()
    assert any(
        "2 cell(s) (rejected: " in line and "touching 1" in line and "clipped 1" in line
        for line in lines
    ), err
    frame0 = next(line for line in lines if line.startswith("  frame 0: "))
    assert frame0.startswith("  frame 0: 1 cell(s) (rejected: ")
    assert "touching 1" in frame0
    assert "clipped 1" in frame0
    assert "  frame 1: 1 cell(s)" in lines
    # The whole frame transformed finds the same cells, for the same reasons.
    whole = tmp_path / "whole"
    whole_args = [*args, "--sample-half", "left", "--sample-margin-px", "whole"]
    code = main(["reconstruct", *whole_args, "--out", str(whole)])
    assert code == 0
    meta_whole = json.loads((whole / "frames.json").read_text())
    assert meta_whole["sample_margin_px"] is None
    assert meta_whole["rejected"] == meta["rejected"]
    assert meta_whole["shape"] == meta["shape"]
