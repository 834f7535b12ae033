"""POST /classify/hologram and the camera loop take the same path: for the same frame
and the same reference they give the same cells, labels and probabilities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
import tifffile

from service.app import create_app
from service.loop.states import Count
from service.services import Services
from tests.service.conftest import (
    emulator_replay_folder,
    in_process,
    replay_settings,
    wait_until_replayed,
)
from tests.service.test_api import NPY, npy

FRAMES = 4


@pytest.fixture
def replay_folder(tmp_path):
    return emulator_replay_folder(tmp_path, FRAMES)


def test_the_hologram_route_and_the_camera_loop_give_the_same_cells(tmp_path, replay_folder):
    settings = replay_settings(replay_folder, tmp_path)
    services = Services.start(settings)
    try:
        camera = services.camera
        assert camera is not None
        wait_until_replayed(services, timeout=120)
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
