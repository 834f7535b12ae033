"""The crop archive in dclab's format (``TOPGAN_CROP_ARCHIVE_FORMAT=rtdc``) on a real
served run of the emulator: rotating files that dclab opens and its checker passes,
rows equal to what ``/results`` served, the disk bound, and the readers of the
archive (``export rtdc``, ``dataset import --archive``, ``train gan``) on them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from acquisition.rtdcfile import score_codes
from service.cli import main
from tests.service.test_acquisition import serve, stopped_cleanly, wait_for
from tests.service.test_export_rtdc import CAMERA_PIXEL_UM, WAVELENGTH_NM, export, page, verify

dclab = pytest.importorskip("dclab")

FILE_CROPS = 8
MAX_BYTES = 1_200_000  # about two files of 8 crops (~0.5 MB each)
FLAGS = ("clipped", "touching", "out_of_focus")


@pytest.fixture(scope="module")
def emulator_images(tmp_path_factory) -> Path:
    from acquisition.cameras.emulator import prepare_emulator_images

    folder = tmp_path_factory.mktemp("emulator")
    prepare_emulator_images(folder, ["sw480", "sw620"], 12)
    return folder


def test_a_served_run_archives_rotating_rtdc_files_equal_to_its_results(tmp_path, emulator_images):
    archive = tmp_path / "archive"
    server = serve(
        tmp_path,
        emulator_images,
        TOPGAN_CROP_ARCHIVE=str(archive),
        TOPGAN_CROP_ARCHIVE_FORMAT="rtdc",
        TOPGAN_CROP_ARCHIVE_FILE_CROPS=str(FILE_CROPS),
        TOPGAN_CROP_ARCHIVE_MAX_BYTES=str(MAX_BYTES),
    )
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            wait_for(
                lambda: c.get("/results/summary").json(),
                lambda s: s["sources"].get("camera", 0) >= 6 * FILE_CROPS,
            )
            assert c.post("/acquisition/stop").status_code == 200  # the file completed
            status = c.get("/acquisition").json()["archive"]
            results = page(c, "/results", "results")
    finally:
        stopped_cleanly(server)
    assert (status["errors"], status["skipped"]) == (0, 0), status
    assert status["archived"] == len(results)
    assert status["files_deleted"] >= 3, status

    assert not list(archive.glob("*.part"))
    files = sorted(archive.glob("*.rtdc"))
    sizes = [p.stat().st_size for p in files]
    print(f"{len(results)} views, {len(files)} files kept of {sizes} bytes, status {status}")
    assert len(files) >= 2, sizes
    assert sum(sizes) <= MAX_BYTES, sizes

    served = {r["id"]: r for r in results}
    codes = score_codes(["sw480", "sw620"])
    rows = 0
    kept: list[int] = []
    for path in files:
        assert "Check Complete: 0 violations" in verify(path).stdout, path
        with dclab.new_dataset(path) as ds:
            n = len(ds)
            assert 1 <= n <= FILE_CROPS
            rows += n
            ids = np.asarray(ds["userdef0"]).astype(int).tolist()
            kept += ids
            views = [served[i] for i in ids]
            assert ds.config["experiment"]["event count"] == n
            assert ds.config["qpi"]["wavelength"] == WAVELENGTH_NM
            assert ds.config["qpi"]["pixel size raw"] == CAMERA_PIXEL_UM
            assert ds.config["imaging"]["pixel size"] == 0.25
            assert ds.config["imaging"]["roi size x"] == ds["qpi_pha"].shape[2] == 128
            assert "model: sw480-sw620 version" in "\n".join(ds.logs["topgan-export"])
            np.testing.assert_array_equal(ds["frame"], [v["frame_id"] for v in views])
            created = np.asarray([v["created"] for v in views])
            t0 = ds.config["experiment"]["timestamp"]
            assert t0 == created.min()
            np.testing.assert_allclose(ds["time"] + t0, created, rtol=0, atol=1e-6)
            np.testing.assert_allclose(ds["pos_x"], [v["x_px"] * CAMERA_PIXEL_UM for v in views])
            np.testing.assert_allclose(ds["pos_y"], [v["y_px"] * CAMERA_PIXEL_UM for v in views])
            np.testing.assert_array_equal(ds["userdef1"], [v["event_id"] for v in views])
            for cls, code in codes.items():
                np.testing.assert_allclose(
                    ds[f"ml_score_{code}"], [v["probabilities"][cls] for v in views], rtol=1e-6
                )
            assert [["sw480", "sw620"][i] for i in ds["ml_class"]] == [v["label"] for v in views]
            for name, dclab_name, convert in (
                ("area_um2", "area_um", float),
                ("dry_mass_pg", "qpi_dm", float),
                ("circularity", "circ", math.sqrt),
                ("solidity", "area_ratio", lambda s: 1 / s),
                ("mean_opd_nm", "userdef4", float),
                ("peak_opd_nm", "userdef5", float),
                ("amplitude_std", "userdef6", float),
            ):
                expected = [convert(v["qc"][name]) for v in views]
                np.testing.assert_allclose(ds[dclab_name], expected, rtol=1e-6, err_msg=name)
            for slot, flag in enumerate(FLAGS, start=7):
                flags = np.asarray(ds[f"userdef{slot}"]).tolist()
                assert flags == [float(v["qc"][flag]) for v in views]
            phase = ds["qpi_pha"][:]
            assert phase.dtype == np.float32
            assert np.isfinite(phase).all()
            assert (phase.max(axis=(1, 2)) > 0).all()  # each a cell, OPD positive
            assert (ds["qpi_amp"][:] == 1).all()
    # the bound deleted the oldest files: every view from the oldest kept on is there
    assert sorted(kept) == [i for i in sorted(served) if i >= min(kept)]
    assert max(kept) == max(served)
    assert min(kept) > min(served)

    # the readers of the archive read it as it is: dataset import --archive ...
    pool = tmp_path / "sw480.h5"
    assert main(["-q", "dataset", "import", "--archive", str(archive), "--label", "sw480",
                 "--all-views", "--keep-flagged", "--out", str(pool)]) == 0  # fmt: skip
    from acquisition.cropfile import read_crop_dataset

    imported = read_crop_dataset(pool)
    assert sorted(imported.qc["result_id"].astype(int).tolist()) == sorted(kept)
    with dclab.new_dataset(files[-1]) as ds:
        last = np.asarray(ds["userdef0"]).astype(int)
        first = int(np.flatnonzero(imported.qc["result_id"] == last[0])[0])
        np.testing.assert_allclose(  # OPD back from the phase at 632.8 nm
            imported.opd[first],
            ds["qpi_pha"][0].astype(np.float64) * WAVELENGTH_NM / (2 * np.pi),
            rtol=1e-6,
            atol=1e-4,
        )

    # ... topgan export rtdc: the cells whose views are still archived, with their crops
    out = tmp_path / "cells.rtdc"
    db = f"sqlite:///{server.db}"
    assert export("rtdc", "--out", str(out), "--archive", str(archive), "--db", db) == 0
    assert "Check Complete: 0 violations" in verify(out).stdout
    phases: dict[int, np.ndarray] = {}
    for path in files:
        with dclab.new_dataset(path) as ds:
            phases |= dict(
                zip(np.asarray(ds["userdef0"]).astype(int), ds["qpi_pha"][:], strict=True)
            )
    with dclab.new_dataset(out) as ds:
        assert 0 < len(ds) <= len(kept)
        for rid, image in zip(
            np.asarray(ds["userdef0"]).astype(int), ds["qpi_pha"][:], strict=True
        ):
            assert rid in phases  # the event's middle archived view
            np.testing.assert_allclose(image, phases[rid], rtol=1e-6, atol=1e-7)

    # ... and training: train gan --dry-run on the folder
    gan = tmp_path / "gan"
    assert main(["-q", "train", "gan", "--data", str(archive), "--out", str(gan), "--dry-run"]) == 0
    info = json.loads((gan / "gan.json").read_text())
    assert info["crops"] == rows == len(kept)
    assert sorted(Path(d["file"]).name for d in info["data"]) == [p.name for p in files]
