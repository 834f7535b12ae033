"""``topgan export rtdc``: a real served run on the emulator exported with dclab's writer,
read back with dclab and checked by dclab's own checker; the phase conversion; bad input."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from acquisition.commandline import run_command
from acquisition.rtdcfile import phase_rad, score_codes
from service.cli import build_parser
from service.export_rtdc import COMMAND
from tests.service.test_acquisition import serve, stopped_cleanly, wait_for

dclab = pytest.importorskip("dclab")

CAMERA_PIXEL_UM = 0.12  # the service's default pixel_size_um
WAVELENGTH_NM = 632.8


def export(*argv: str) -> int:
    """``topgan export ...`` in this process, as the entry point runs it."""
    args = build_parser([COMMAND]).parse_args(["export", *argv])
    return run_command(args.run, args, args.command_prog)


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    checker = str(Path(sys.executable).with_name("dclab-verify-dataset"))
    return subprocess.run([checker, str(path)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def emulator_images(tmp_path_factory) -> Path:
    from acquisition.cameras.emulator import prepare_emulator_images

    folder = tmp_path_factory.mktemp("emulator")
    prepare_emulator_images(folder, ["sw480", "sw620"], 12)
    return folder


def page(client: httpx.Client, route: str, key: str) -> list[dict]:
    rows: list[dict] = []
    after = 0
    while True:
        got = client.get(route, params={"after_id": after, "limit": 1000}).json()
        rows += got[key]
        if not got[key]:
            return rows
        after = got[key][-1]["id"]


def test_a_served_run_exports_one_row_per_cell_that_dclab_reads_and_verifies(
    tmp_path, emulator_images, monkeypatch
):
    archive = tmp_path / "archive"
    server = serve(tmp_path, emulator_images, TOPGAN_CROP_ARCHIVE=str(archive))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            wait_for(
                lambda: c.get("/results/summary").json(),
                lambda s: s["events"]["total"] >= 10,
            )
            assert c.post("/acquisition/stop").status_code == 200  # every event stored
            results = page(c, "/results", "results")
            events = page(c, "/events", "events")
    finally:
        stopped_cleanly(server)  # the archive completes its file
    assert events
    out = tmp_path / "cells.rtdc"
    assert (
        export(
            "rtdc", "--out", str(out), "--archive", str(archive), "--db", f"sqlite:///{server.db}"
        )
        == 0
    )

    # the crops as archived, by result id
    crops: dict[int, np.ndarray] = {}
    for path in sorted(archive.glob("*.h5")):
        with h5py.File(path) as h5:
            for rid, opd in zip(h5["result_id"][()], h5["opd"][()], strict=True):
                crops[int(rid)] = opd
    views: dict[int, list[dict]] = {}
    for r in results:
        views.setdefault(r["event_id"], []).append(r)

    with dclab.new_dataset(out) as ds:
        assert len(ds) == len(events), "one row per cell"
        codes = score_codes(["sw480", "sw620"])
        assert codes == {"sw480": "sw4", "sw620": "sw6"}
        for name in (
            "qpi_pha",
            "qpi_amp",
            "frame",
            "time",
            "pos_x",
            "pos_y",
            "area_um",
            "qpi_dm",
            "circ",
            "area_ratio",
            "ml_score_sw4",
            "ml_score_sw6",
            "ml_class",
            *(f"userdef{i}" for i in range(1, 10)),
        ):
            assert name in ds.features_innate, name
        np.testing.assert_array_equal(ds["userdef1"], [e["id"] for e in events])
        np.testing.assert_array_equal(ds["userdef2"], [e["views"] for e in events])
        for cls, code in codes.items():
            np.testing.assert_allclose(
                ds[f"ml_score_{code}"], [e["probabilities"][cls] for e in events]
            )
        labels = [["sw480", "sw620"][i] for i in ds["ml_class"]]
        assert labels == [e["label"] for e in events]
        # dclab's own ml_class (from the scores) agrees with the written one
        assert (
            dclab.rtdc_dataset.feat_anc_core.af_ml_class.compute_ml_class(ds) == ds["ml_class"]
        ).all()
        for name, dclab_name in (("area_um2", "area_um"), ("dry_mass_pg", "qpi_dm")):
            np.testing.assert_allclose(ds[dclab_name], [e["qc"][name] for e in events], rtol=1e-6)
        np.testing.assert_allclose(
            ds["circ"], [math.sqrt(e["qc"]["circularity"]) for e in events], rtol=1e-6
        )
        np.testing.assert_allclose(
            ds["area_ratio"], [1 / e["qc"]["solidity"] for e in events], rtol=1e-6
        )
        middles = []
        for e in events:
            own = sorted(views[e["id"]], key=lambda v: (v["frame_id"], v["id"]))
            assert len(own) == e["views"]
            middles.append(own[(len(own) - 1) // 2])
        np.testing.assert_array_equal(ds["frame"], [v["frame_id"] for v in middles])
        np.testing.assert_allclose(ds["pos_x"], [v["x_px"] * CAMERA_PIXEL_UM for v in middles])
        np.testing.assert_allclose(ds["pos_y"], [v["y_px"] * CAMERA_PIXEL_UM for v in middles])
        created = np.asarray([v["created"] for v in middles])
        np.testing.assert_allclose(ds["time"], created - created.min(), atol=1e-6)
        assert ds["time"].min() == 0
        for i, v in enumerate(middles):
            expected = (2 * np.pi * crops[v["id"]].astype(np.float64) / WAVELENGTH_NM).astype(
                np.float32
            )
            np.testing.assert_array_equal(ds["qpi_pha"][i], expected)
        assert (ds["qpi_amp"][0] == 1).all()
        assert ds.config["qpi"]["wavelength"] == WAVELENGTH_NM
        assert ds.config["imaging"]["pixel size"] == 0.25
        assert ds.config["qpi"]["pixel size raw"] == CAMERA_PIXEL_UM
        assert ds.config["imaging"]["frame rate"] > 0
        assert ds.config["experiment"]["event count"] == len(events)
        log = "\n".join(ds.logs["topgan-export"])
        assert "model: sw480-sw620 version" in log
        assert "userdef1: event_id" in log

    checked = verify(out)
    print(checked.stdout)
    assert checked.returncode in (0, 1), checked.stdout + checked.stderr  # alerts at most
    assert "Check Complete: 0 violations" in checked.stdout

    # ... and back: topgan dataset import --rtdc, labels from ml_class (named by the
    # export's log), one label for the file, or a CSV of event indices
    from acquisition.commands.dataset import COMMAND as DATASET
    from acquisition.cropfile import read_crop_dataset

    def dataset(*argv: str) -> int:
        args = build_parser([DATASET]).parse_args(["dataset", "import", *argv])
        return run_command(args.run, args, args.command_prog)

    back = tmp_path / "back.h5"
    assert dataset("--rtdc", str(out), "--out", str(back)) == 0
    imported = read_crop_dataset(back)
    assert imported.class_names == ["sw480", "sw620"]
    assert [imported.class_names[i] for i in imported.label] == [e["label"] for e in events]
    assert (imported.pixel_size_um, imported.wavelength_nm) == (0.25, WAVELENGTH_NM)
    for i, v in enumerate(middles):
        np.testing.assert_allclose(imported.opd[i], crops[v["id"]], atol=1e-3)  # nm
    np.testing.assert_allclose(
        imported.qc["dry_mass_pg"], [e["qc"]["dry_mass_pg"] for e in events], rtol=1e-6
    )
    assert dataset("--rtdc", str(out), "--label", "sw620", "--out", str(back)) == 0
    assert read_crop_dataset(back).class_names == ["sw620"]
    assert (read_crop_dataset(back).label == 0).all()
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\n0,sw480\n2,sw620\n")
    assert dataset("--rtdc", str(out), "--labels", str(csv), "--out", str(back)) == 0
    some = read_crop_dataset(back)
    assert some.label[0] == some.class_names.index("sw480")
    assert some.label[2] == some.class_names.index("sw620")
    assert (some.label[[1, *range(3, len(events))]] == -1).all()

    # the database alone: the same cells, without images
    monkeypatch.delenv("TOPGAN_CROP_ARCHIVE", raising=False)
    db_out = tmp_path / "db-only.rtdc"
    assert export("rtdc", "--out", str(db_out), "--db", f"sqlite:///{server.db}") == 0
    with dclab.new_dataset(db_out) as ds:
        assert len(ds) == len(events)
        assert "qpi_pha" not in ds.features_innate
        np.testing.assert_array_equal(ds["userdef1"], [e["id"] for e in events])
    # a file without phase images cannot be imported: one line, exit 2
    assert dataset("--rtdc", str(db_out), "--out", str(tmp_path / "none.h5")) == 2
    assert not (tmp_path / "none.h5").exists()
    assert "Check Complete: 0 violations" in verify(db_out).stdout
    future = ("--since", "2999-01-01T00:00")
    assert export("rtdc", "--out", str(db_out), "--db", f"sqlite:///{server.db}", *future) == 2

    # the archive alone (the service's database is not there): one row per view
    monkeypatch.setenv("TOPGAN_DATABASE_URL", f"sqlite:///{tmp_path}/none.sqlite")
    views_out = tmp_path / "views.rtdc"
    assert export("rtdc", "--out", str(views_out), "--archive", str(archive)) == 0
    by_id = {r["id"]: r for r in results}
    with dclab.new_dataset(views_out) as ds:
        assert len(ds) == len(results) == len(crops)
        assert sorted(np.asarray(ds["frame"]).tolist()) == sorted(r["frame_id"] for r in results)
        np.testing.assert_allclose(
            np.sort(ds["ml_score_sw4"]), np.sort([r["probabilities"]["sw480"] for r in results])
        )
        assert (ds["userdef1"] == -1).all()
        assert "pos_x" not in ds.features_innate  # the archive has no positions
        assert "one per view" in "\n".join(ds.logs["topgan-export"])
    assert set(by_id) == set(crops)
    assert verify(views_out).returncode in (0, 1)


def test_phase_is_two_pi_opd_over_the_wavelength():
    opd = np.asarray([[0.0, 632.8], [316.4, -158.2]], dtype=np.float32)
    np.testing.assert_allclose(
        phase_rad(opd, 632.8), [[0, 2 * np.pi], [np.pi, -np.pi / 2]], rtol=1e-6
    )
    assert phase_rad(opd, 632.8).dtype == np.float32
    np.testing.assert_allclose(
        phase_rad(np.asarray(532.0, np.float32), 532.0), 2 * np.pi, rtol=1e-6
    )
    with pytest.raises(ValueError, match="wavelength must be positive"):
        phase_rad(opd, 0)


def test_score_codes_follow_dclabs_rule():
    assert score_codes(["hs895-sk", "hs895-t"]) == {"hs895-sk": "hsk", "hs895-t": "hst"}
    assert score_codes(["a", "b"]) == {"a": "c00", "b": "c01"}
    for code in score_codes(["SW480", "sw620", "x"]).values():
        assert dclab.definitions.feature_exists(f"ml_score_{code}")


def one_line_error(capsys, *argv: str) -> str:
    assert export(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("topgan export rtdc: error: ")
    return err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TOPGAN_CROP_ARCHIVE", raising=False)
    monkeypatch.setenv("TOPGAN_DATABASE_URL", f"sqlite:///{tmp_path}/not-there.sqlite")
    out = str(tmp_path / "x.rtdc")
    err = one_line_error(capsys, "rtdc", "--out", out, "--archive", str(tmp_path / "nope"))
    assert "no such folder" in err
    assert "no database at" in one_line_error(capsys, "rtdc", "--out", out)
    db = f"sqlite:///{tmp_path}/missing.sqlite"
    assert "no such database file" in one_line_error(capsys, "rtdc", "--out", out, "--db", db)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    err = one_line_error(capsys, "rtdc", "--out", out, "--db", f"sqlite:///{garbage}")
    assert "cannot read the database" in err
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    from service.store import ResultStore

    ResultStore(f"sqlite:///{empty}").close()
    err = one_line_error(capsys, "rtdc", "--out", out, "--db", f"sqlite:///{empty}")
    assert "nothing to export" in err
    err = one_line_error(
        capsys, "rtdc", "--out", str(tmp_path / "x.h5"), "--db", f"sqlite:///{empty}"
    )
    assert "must end in .rtdc" in err
    err = one_line_error(capsys, "rtdc", "--out", out, "--db", "sqlite:///x", "--since", "soon")
    assert "--since" in err or "ISO 8601" in err
