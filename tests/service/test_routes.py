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
from service.store import EventRow, ResultRow, ResultStore
from tests.service import test_api
from tests.service.conftest import headless_chromium, in_process, page_text, page_wait


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
    cells = test_api.crops(2)  # real cells: a crop without one is not stored
    answer = client.post("/classify", json={"opd": cells.tolist()})
    assert answer.status_code == 200, answer.text
    ids = [cell["id"] for cell in answer.json()["cells"]]
    assert None not in ids
    page = client.get("/results").json()["results"]
    assert [r["id"] for r in page] == ids
    stored = capabilities.classification.store.list()
    assert [r["id"] for r in stored] == ids


def _stored_camera_views(store: ResultStore, rows: list[tuple[str, str, float]]) -> list[int]:
    """Camera views (label, model version, created) stored as the loop stores them."""
    views = [
        ResultRow(
            source="camera",
            label=label,
            probabilities={"sw480": 0.9, "sw620": 0.1}
            if label == "sw480"
            else {"sw480": 0.1, "sw620": 0.9},
            model_name="sw480-sw620",
            model_version=version,
            frame_id=i,
            created=created,
            event_id=100 + i,
        )
        for i, (label, version, created) in enumerate(rows)
    ]
    return store.add(views).result(timeout=10)


def test_results_newest_first_filtered_and_split_by_source_and_model(served):
    capabilities, client = served
    store = capabilities.classification.store
    now = time.time()
    camera = _stored_camera_views(
        store,
        [
            ("sw480", "old", now - 100),
            ("sw620", "old", now - 100),
            ("sw480", "new", now),
            ("sw480", "new", now),
        ],
    )
    posted = client.post("/classify", json={"opd": test_api.crops(2).tolist()}).json()
    api = [cell["id"] for cell in posted["cells"]]
    api_labels = [cell["label"] for cell in posted["cells"]]
    version = posted["model"]["version"]
    everything = camera + api

    def ids(**params: object) -> list[int]:
        answer = client.get("/results", params=params)
        assert answer.status_code == 200, answer.text
        return [r["id"] for r in answer.json()["results"]]

    assert ids() == everything  # oldest first, as before
    assert ids(order="asc", after_id=camera[1]) == everything[2:]
    newest = client.get("/results", params={"order": "desc", "limit": 4}).json()
    assert [r["id"] for r in newest["results"]] == everything[::-1][:4]
    assert newest["next_before_id"] == everything[2]
    assert newest["next_after_id"] == everything[-1]
    older = client.get(
        "/results", params={"order": "desc", "limit": 4, "before_id": newest["next_before_id"]}
    ).json()
    assert [r["id"] for r in older["results"]] == everything[1::-1]
    end = client.get(
        "/results", params={"order": "desc", "before_id": older["next_before_id"]}
    ).json()
    assert end["results"] == []
    assert end["next_before_id"] is None
    assert client.get("/results").json()["next_before_id"] is None

    assert ids(source="camera") == camera
    assert ids(source="api") == api
    assert ids(source="camera", label="sw480") == [camera[0], camera[2], camera[3]]
    assert ids(model_version="old", order="desc") == camera[1::-1]
    assert ids(model_version=version) == api
    assert ids(since=now - 50, source="camera") == camera[2:]
    assert ids(label="no-such-class") == []

    for params, word in [
        ({"order": "sideways"}, "order"),
        ({"before_id": 3}, "before_id"),
        ({"order": "asc", "before_id": 3}, "before_id"),
        ({"order": "desc", "after_id": 3}, "after_id"),
        ({"source": "bench"}, "source"),
        ({"since": -1}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"order": "desc", "before_id": 0}, "before_id"),
        ({"label": ""}, "label"),
    ]:
        answer = client.get("/results", params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert word in answer.json()["detail"], (params, answer.json())

    summary = client.get("/results/summary").json()
    assert summary["cells"] == 6  # every view, as before
    assert sum(summary["counts"].values()) == 6
    assert summary["sources"] == {"camera": 4, "api": 2}
    assert summary["by_source"]["camera"] == {
        "cells": 4,
        "counts": {"sw480": 3, "sw620": 1},
        "fractions": {"sw480": 0.75, "sw620": 0.25},
        "uncertain": 0,
    }
    expected_api = {label: api_labels.count(label) for label in set(api_labels)}
    assert summary["by_source"]["api"]["cells"] == 2
    assert summary["by_source"]["api"]["counts"] == expected_api
    assert summary["by_model"]["old"] == {
        "cells": 2,
        "counts": {"sw480": 1, "sw620": 1},
        "fractions": {"sw480": 0.5, "sw620": 0.5},
        "uncertain": 0,
    }
    assert summary["by_model"]["new"]["counts"] == {"sw480": 2}
    assert summary["by_model"][version]["counts"] == expected_api
    assert set(summary["by_model"]) == {"old", "new", version}


def test_events_newest_first_and_filtered(served):
    capabilities, client = served
    store = capabilities.classification.store
    now = time.time()
    for label, version, created in [
        ("sw480", "old", now - 100),
        ("sw620", "old", now - 100),
        ("sw620", "new", now),
    ]:
        store.add_event(
            EventRow(
                id=store.new_event_id(),
                created=created,
                ended=created + 0.1,
                first_frame=1,
                last_frame=3,
                views=2,
                sightings=3,
                label=label,
                probabilities={"sw480": 0.5, "sw620": 0.5},
                model_name="sw480-sw620",
                model_version=version,
            )
        ).result(timeout=10)
    everything = [e["id"] for e in store.list_events()]
    assert len(everything) == 3

    def ids(**params: object) -> list[int]:
        answer = client.get("/events", params=params)
        assert answer.status_code == 200, answer.text
        return [e["id"] for e in answer.json()["events"]]

    assert ids() == everything
    assert ids(order="desc") == everything[::-1]
    page = client.get("/events", params={"order": "desc", "limit": 2}).json()
    assert page["next_before_id"] == everything[1]
    assert ids(order="desc", before_id=page["next_before_id"]) == everything[:1]
    assert ids(label="sw620") == everything[1:]
    assert ids(model_version="old", label="sw620") == everything[1:2]
    assert ids(since=now - 50) == everything[2:]
    for params in ({"order": "up"}, {"before_id": 2}, {"order": "desc", "after_id": 1}):
        answer = client.get("/events", params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert answer.json()["detail"]


def test_live_page_counts_the_cameras_views_not_posted_crops(served, browser_paths):
    """Before the camera's first cell (event) is stored, the page counts the camera's
    views; crops posted to /classify do not mix into the operator's figures."""
    capabilities, client = served
    _stored_camera_views(
        capabilities.classification.store,
        [("sw480", "1", time.time()), ("sw480", "1", time.time()), ("sw620", "1", time.time())],
    )
    posted = client.post("/classify", json={"opd": test_api.crops(4).tolist()})
    assert posted.status_code == 200, posted.text
    assert client.get("/results/summary").json()["cells"] == 7
    driver = headless_chromium(browser_paths)
    try:
        driver.get(f"{client.base_url}/")
        wait = page_wait(driver, 20)
        wait.until(lambda d: page_text(d, "#total-cells") == "3")
        assert page_text(driver, "#total-views") == "3"
        assert page_text(driver, "#cells-kind") == "cells"
        assert page_text(driver, '#counts tr[data-class="sw480"] .count') == "2"
        assert page_text(driver, '#counts tr[data-class="sw620"] .count') == "1"
    finally:
        driver.quit()
