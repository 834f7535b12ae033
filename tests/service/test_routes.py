"""The routes in process, each capability handed in through ``app.dependency_overrides``
(fast; the real-server tests cover SIGTERM, durability and load)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from acquisition.cameras import Camera, CameraError
from acquisition.reconstruction import ReconstructionConfig
from acquisition.segmentation import SegmentationConfig
from models.runtime import MicroBatcher, ModelHolder
from service.api import deps
from service.app import create_app
from service.camera import CameraLoop
from service.classification import Classification
from service.live import LiveView
from service.loop.runner import AcquisitionRunner
from service.loop.workers import WorkerConfig
from service.metrics import Metrics
from service.settings import DEFAULT_MODEL, Settings
from service.store import ResultStore
from tests.service.conftest import in_process


class Capabilities:
    """Real capabilities built by hand, as a test would wire them."""

    def __init__(self, tmp: Path, model: Path | None) -> None:
        self.settings = Settings(
            camera="none", model_dir=model, database_url=f"sqlite:///{tmp}/r.db"
        )
        self.metrics = Metrics()
        holder = ModelHolder("cpu", 1)
        if model is not None:
            holder.load(model)
        self.classification = Classification(
            holder,
            MicroBatcher(holder, 8, 0.001),
            ResultStore(self.settings.database_url),
            self.metrics,
        )
        self.live = LiveView()
        self.camera: CameraLoop | None = None

    def close(self) -> None:
        if self.camera is not None:
            self.camera.close()
        self.classification.close()


def _never_opens() -> tuple[Camera, np.ndarray | None]:
    raise CameraError("no camera on this bench")


def _camera(capabilities: Capabilities) -> CameraLoop:
    config = WorkerConfig(ReconstructionConfig(), SegmentationConfig(), "numpy", 1, processes=False)
    runner = AcquisitionRunner(
        "basler",
        _never_opens,
        config,
        capabilities.classification,
        capabilities.metrics,
        workers=1,
        reconnect_min_s=0.05,
        reconnect_max_s=0.05,
    )
    return CameraLoop(runner, capabilities.live)


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Capabilities, httpx.Client]]:
    capabilities = Capabilities(tmp_path, DEFAULT_MODEL)
    app = create_app(capabilities.settings)
    app.dependency_overrides.update(
        {
            deps.get_settings: lambda: capabilities.settings,
            deps.get_metrics: lambda: capabilities.metrics,
            deps.get_classification: lambda: capabilities.classification,
            deps.get_live: lambda: capabilities.live,
            deps.get_camera: lambda: capabilities.camera,
            deps.get_started: lambda: 0.0,
        }
    )
    try:
        with in_process(app) as client:
            yield capabilities, client
    finally:
        capabilities.close()


def test_without_a_camera_the_loop_is_disabled_and_cannot_be_controlled(served):
    _, client = served
    status = client.get("/acquisition").json()
    assert status["state"] == "disabled"
    for action in ("start", "stop"):
        answer = client.post(f"/acquisition/{action}")
        assert answer.status_code == 409
        assert f"nothing to {action}" in answer.json()["detail"]
    assert client.get("/ready").status_code == 200


def test_a_camera_that_cannot_open_is_failed_and_not_ready(served):
    capabilities, client = served
    capabilities.camera = _camera(capabilities)
    assert client.get("/acquisition").json()["state"] == "idle"
    before = client.get("/ready")  # never started: nothing has failed, /classify serves
    assert before.status_code == 200
    body = before.json()
    assert body.pop("model")["classes"] == ["sw480", "sw620"]
    assert body == {
        "ready": True,
        "reasons": [],
        "camera": "none",
        "serving": True,
        "acquiring": False,
        "acquisition": "idle",
    }
    assert client.post("/acquisition/stop").status_code == 409
    assert client.post("/acquisition/start").status_code == 200
    assert client.post("/acquisition/start").status_code == 409
    deadline = time.monotonic() + 30
    while client.get("/acquisition").json()["errors"].get("camera_open", 0) < 2:
        assert time.monotonic() < deadline, "the camera was not retried"
        time.sleep(0.05)
    status = client.get("/acquisition").json()
    assert status["state"] == "failed"
    assert status["errors"]["camera_open"] >= 2
    assert "no camera on this bench" in status["last_error"]
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert any(
        r.startswith("camera failed: camera: no camera on this bench")
        for r in ready.json()["reasons"]
    )
    assert ready.json()["serving"] is True
    assert ready.json()["acquiring"] is False
    assert ready.json()["acquisition"] == "failed"
    # /metrics reads the same count as /acquisition: one count.
    text = client.get("/metrics").text
    name = 'topgan_frame_errors_total{reason="camera_open"}'
    line = next(row for row in text.splitlines() if row.startswith(name))
    assert float(line.rsplit(" ", 1)[1]) >= status["errors"]["camera_open"]
    stopped = client.post("/acquisition/stop").json()
    assert stopped["state"] == "idle"
    # The operator stopped the failing camera: a deliberate stop is ready again.
    after = client.get("/ready")
    assert after.status_code == 200
    assert after.json()["reasons"] == []
    assert (after.json()["acquisition"], after.json()["acquiring"]) == ("idle", False)


def test_a_camera_being_opened_is_not_ready_yet(served):
    capabilities, client = served
    opening, release = threading.Event(), threading.Event()

    def slow_to_open() -> tuple[Camera, np.ndarray | None]:
        opening.set()
        release.wait(30)
        raise CameraError("gave up opening")

    capabilities.camera = _camera(capabilities)
    capabilities.camera.runner.camera_factory = slow_to_open
    try:
        assert client.post("/acquisition/start").status_code == 200
        assert opening.wait(30)
        ready = client.get("/ready")
        status = client.get("/acquisition").json()
    finally:
        release.set()
    assert status["state"] == "starting"
    assert status["frames_per_second"] == 0
    assert ready.status_code == 503
    assert ready.json()["reasons"] == ["camera starting: opening the camera"]
    assert (ready.json()["serving"], ready.json()["acquiring"]) == (True, False)
    assert ready.json()["acquisition"] == "starting"


def test_no_model_answers_503_and_404(tmp_path):
    capabilities = Capabilities(tmp_path, None)
    app = create_app(capabilities.settings)
    app.dependency_overrides[deps.get_classification] = lambda: capabilities.classification
    app.dependency_overrides[deps.get_settings] = lambda: capabilities.settings
    app.dependency_overrides[deps.get_camera] = lambda: None
    try:
        with in_process(app) as client:
            assert client.get("/model").status_code == 404
            crops = np.zeros((128, 128), np.float32).tolist()
            answer = client.post("/classify", json={"opd": crops})
            assert answer.status_code == 503
            assert "no model is loaded" in answer.json()["detail"]
            ready = client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["reasons"][0].startswith("no model loaded")
    finally:
        capabilities.close()


def test_classify_commits_through_the_overridden_store(served):
    capabilities, client = served
    crops = np.full((2, 128, 128), 5.0, np.float32)
    answer = client.post("/classify", json={"opd": crops.tolist()})
    assert answer.status_code == 200, answer.text
    ids = [cell["id"] for cell in answer.json()["cells"]]
    page = client.get("/results").json()["results"]
    assert [r["id"] for r in page] == ids
    stored = capabilities.classification.store.list()
    assert [r["id"] for r in stored] == ids
