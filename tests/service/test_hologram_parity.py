"""POST /classify/hologram and the camera loop take the same path: for the same frame
and the same reference they give the same cells, labels and probabilities."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import sqlalchemy as sa
import tifffile

from acquisition.cameras.emulator import prepare_emulator_images
from service.app import create_app
from service.loop.states import Count, RunState
from service.services import Services
from service.settings import DEFAULT_MODEL, Settings
from tests.service.conftest import in_process
from tests.service.test_api import NPY, npy

FRAMES = 4


@pytest.fixture
def replay_folder(tmp_path):
    """Frames of the emulator's simulated SW480/SW620 holograms and their reference,
    as a replay folder (``reference.tiff`` beside the frames)."""
    images = prepare_emulator_images(tmp_path / "emulator", ["sw480", "sw620"], FRAMES, seed=3)
    folder = tmp_path / "replay"
    shutil.copytree(images.frames, folder)
    shutil.copy(images.reference, folder / "reference.tiff")
    return folder


def test_the_hologram_route_and_the_camera_loop_give_the_same_cells(tmp_path, replay_folder):
    settings = Settings(
        camera=f"replay:{replay_folder}",
        replay_loop=False,
        frame_rate_hz=0,
        worker_processes=False,
        array_backend="numpy",
        database_url=f"sqlite:///{tmp_path}/results.sqlite",
        model_dir=DEFAULT_MODEL,
        execution_provider="cpu",
    )
    services = Services.start(settings)
    try:
        camera = services.camera
        assert camera is not None
        deadline = time.monotonic() + 120
        while not (camera.state == RunState.IDLE and camera.status().detail != "not started"):
            assert time.monotonic() < deadline, camera.status()
            time.sleep(0.05)
        assert camera.status().counts[Count.FRAMES_PROCESSED] == FRAMES
        with services.classification.store.engine.connect() as conn:
            rows = [
                dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM results ORDER BY id"))
            ]
        assert rows
        assert {r["source"] for r in rows} == {"camera"}

        app = create_app(settings)
        app.state.services = services  # the lifespan would start services of its own
        compared = 0
        with in_process(app) as client:
            answers = [
                client.post("/classify/hologram", content=npy(tifffile.imread(path)), headers=NPY)
                for path in sorted(replay_folder.glob("frame_*.tif"))
            ]
        for index, answer in enumerate(answers, start=1):
            assert answer.status_code == 200, answer.text
            route = sorted(
                (c["position_px"][0], c["position_px"][1], c["label"], c["probabilities"])
                for c in answer.json()["cells"]
            )
            loop = sorted(
                (r["y_px"], r["x_px"], r["label"], json.loads(r["probabilities"]))
                for r in rows
                if r["frame_id"] == index
            )
            assert len(route) == len(loop)
            for (ry, rx, rlabel, rp), (ly, lx, llabel, lp) in zip(route, loop, strict=True):
                assert (ry, rx, rlabel) == pytest.approx((ly, lx, llabel))
                assert rp.keys() == lp.keys()
                np.testing.assert_allclose([rp[k] for k in rp], [lp[k] for k in rp], atol=1e-6)
            compared += len(route)
        assert compared == len(rows)
    finally:
        services.close()
