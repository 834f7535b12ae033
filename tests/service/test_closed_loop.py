"""The closed loop, as a lab runs it (README, "From unlabeled cells to a served model"):
the served camera loop archives every crop; one run per pure cell line becomes a
labelled set; a GAN pretrains (and keeps pretraining) on the whole archive; a
classifier is fine-tuned on the labels into the models root; a running service
reloads it, and serves it again after a restart. Real parts throughout: ``topgan
serve`` on pylon's camera emulator, the commands as a user types them (dry-run
training: a couple of steps)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from acquisition.cropfile import read_crop_dataset
from service.cli import main
from service.settings import DEFAULT_MODEL
from tests.service.conftest import Server, start_server

#: Views each run stores before it stops (its file holds them all once it stopped).
VIEWS_PER_RUN = 30


def camera_run(tmp: Path, models: Path, line: str, archive: Path) -> Server:
    """``topgan serve`` on the emulator streaming one pure cell line into ``archive``,
    until it has stored :data:`VIEWS_PER_RUN` views; then its acquisition is stopped."""
    server = start_server(
        tmp,
        models,
        model=None,
        db=tmp / "results.sqlite",
        TOPGAN_CAMERA="emulator",
        TOPGAN_MODEL_DIR=str(DEFAULT_MODEL),
        TOPGAN_SIMULATED_LINES=line,
        TOPGAN_EMULATOR_IMAGES=str(tmp / f"emulator-{line}"),
        TOPGAN_EMULATOR_FRAMES="12",
        TOPGAN_SIMULATED_FLOW="false",
        TOPGAN_CROP_ARCHIVE=str(archive),
    )
    with httpx.Client(base_url=server.url, timeout=60) as c:
        deadline = time.monotonic() + 180
        while c.get("/results/summary").json()["sources"].get("camera", 0) < VIEWS_PER_RUN:
            assert time.monotonic() < deadline, c.get("/acquisition").json()
            time.sleep(0.2)
        stopped = c.post("/acquisition/stop")
        assert stopped.status_code == 200, stopped.text
    return server


def test_from_unlabeled_cells_to_a_served_model(tmp_path, capsys):
    archive, models = tmp_path / "archive", tmp_path / "models"
    run_a = camera_run(tmp_path, models, "sw480", archive)
    run_a.stop()
    between = time.time()  # run A was grabbed before, run B after
    run_b = camera_run(tmp_path, models, "sw620", archive)
    try:
        assert not list(archive.glob("*.part")), "a stopped run's crops are in complete files"
        # One labelled file from the two pure runs of the one archive.
        a, b, lab = (tmp_path / name for name in ("sw480.h5", "sw620.h5", "lab.h5"))
        imp = ["-q", "dataset", "import", "--archive", str(archive)]
        assert main([*imp, "--label", "sw480", "--until", str(between), "--out", str(a)]) == 0
        assert main([*imp, "--label", "sw620", "--since", str(between), "--out", str(b)]) == 0
        assert main(["-q", "dataset", "merge", str(a), str(b), "--out", str(lab)]) == 0
        err = capsys.readouterr().err
        assert "(sw480) of " in err
        assert "(sw620) of " in err
        labelled = read_crop_dataset(lab)
        assert labelled.class_names == ["sw480", "sw620"]
        counts = np.bincount(labelled.label, minlength=2)
        assert (counts > 0).all(), counts
        events = labelled.qc["event_id"][labelled.qc["event_id"] >= 0]
        assert len(np.unique(events)) == len(events), "one view per cell"
        # Each crop came from its own run: the store says when it was grabbed.
        with httpx.Client(base_url=run_b.url, timeout=60) as c:
            stored = {
                r["id"]: r
                for r in c.get("/results", params={"limit": 1000, "source": "camera"}).json()[
                    "results"
                ]
            }
        for i, rid in enumerate(labelled.qc["result_id"].tolist()):
            created = stored[rid]["created"]
            assert (created < between) == (labelled.label[i] == 0), (rid, created, between)

        # Pretraining on everything archived, then keep pretraining.
        gan = tmp_path / "gan"
        train_gan = ["-q", "train", "gan", "--data", str(archive), "--out", str(gan), "--dry-run"]
        assert main(train_gan) == 0
        assert main([*train_gan, "--resume"]) == 0
        state = torch.load(gan / "checkpoint.pt", weights_only=False)
        assert state["epoch"] == 2
        archived = sum(len(read_crop_dataset(p)) for p in archive.glob("*.h5"))
        assert [r["crops"] for r in state["runs"]] == [archived, archived]

        # Fine-tuning on the few labels, into the models root.
        model = models / "loop-topgan"
        assert (
            main(
                [
                    "-q",
                    "train",
                    "classifier",
                    "--method",
                    "topgan",
                    "--data",
                    str(lab),
                    "--gan",
                    str(gan),
                    "--out",
                    str(model),
                    "--name",
                    "loop",
                    "--dry-run",
                ]
            )
            == 0
        )

        with httpx.Client(base_url=run_b.url, timeout=60) as c:
            reloaded = c.post("/model/reload", json={"path": "loop-topgan"})
            assert reloaded.status_code == 200, reloaded.text
            served = c.get("/model").json()
            assert Path(served["directory"]) == model.resolve()
            assert served["manifest"]["name"] == "loop"
            assert served["manifest"]["classes"] == ["sw480", "sw620"]
            crop = io.BytesIO()
            np.save(crop, labelled.opd[:2])
            answer = c.post(
                "/classify",
                content=crop.getvalue(),
                headers={"Content-Type": "application/x-npy"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"]["name"] == "loop"
            assert [set(cell["probabilities"]) for cell in answer.json()["cells"]] == [
                {"sw480", "sw620"}
            ] * 2
    finally:
        run_b.stop()

    # A restart (the configuration unchanged) serves the reloaded model.
    again = start_server(
        tmp_path,
        models,
        model=None,
        db=tmp_path / "results.sqlite",
        TOPGAN_CAMERA="none",
        TOPGAN_MODEL_DIR=str(DEFAULT_MODEL),
    )
    try:
        served = httpx.get(f"{again.url}/model", timeout=30).json()
        assert Path(served["directory"]) == model.resolve()
        assert served["manifest"]["name"] == "loop"
    finally:
        again.stop()
    memory = json.loads((tmp_path / "served-model.json").read_text())
    assert memory["directory"] == str(model.resolve())
