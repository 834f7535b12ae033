"""``topgan serve`` with the camera loop on the pylon camera emulator: a real server on
127.0.0.1 streaming simulated SW480/SW620 holograms through the bundled model."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tifffile

from acquisition.cameras import GrabbedFrame, ReplayCamera
from acquisition.cropfile import read_crop_dataset
from acquisition.frames import CropGeometry
from acquisition.simulator.flow import FlowConfig
from acquisition.simulator.phantoms import render_cell
from service.app import create_app
from service.camera import CameraLoop
from service.classification import Classification
from service.loop.runner import AcquisitionRunner
from service.loop.workers import WorkerConfig
from service.services import Services
from service.settings import DEFAULT_MODEL, REPO_ROOT, Settings
from tests.service.conftest import (
    Server,
    headless_chromium,
    in_process,
    page_text,
    page_wait,
    start_server,
)

MODELS = REPO_ROOT / "models"


@pytest.fixture(scope="module")
def emulator_images(tmp_path_factory) -> Path:
    """The folder the served emulator streams (rendered once for this module)."""
    from acquisition.cameras.emulator import prepare_emulator_images

    folder = tmp_path_factory.mktemp("emulator")
    prepare_emulator_images(folder, ["sw480", "sw620"], 12)
    return folder


#: The live page's flow: at 20 frames/s and 500 um/s a cell crosses in 5 to 20 frames.
LIVE_FLOW = FlowConfig(flow_speed_um_s=500.0, frame_rate_hz=20.0, cells_per_second=20.0)
LIVE_FLOW_FRAMES = 64


@pytest.fixture(scope="module")
def flow_images(tmp_path_factory) -> Path:
    """The emulator's folder for a continuous flow (a loop of 64 frames)."""
    from acquisition.cameras.emulator import prepare_emulator_images

    folder = tmp_path_factory.mktemp("emulator-flow")
    prepare_emulator_images(folder, ["sw480", "sw620"], LIVE_FLOW_FRAMES, flow=LIVE_FLOW)
    return folder


def serve(tmp: Path, emulator: Path, **env: str) -> Server:
    environment: dict[str, Any] = {
        "TOPGAN_CAMERA": "emulator",
        "TOPGAN_MODEL_DIR": str(DEFAULT_MODEL),
        "TOPGAN_EMULATOR_IMAGES": str(emulator),
        "TOPGAN_EMULATOR_FRAMES": "12",
        "TOPGAN_SIMULATED_FLOW": "false",  # 12 independent frames, as rendered above
        "TOPGAN_RECONNECT_MAX_S": "1",
        **env,
    }
    return start_server(tmp, MODELS, model=None, **environment)


def wait_for(get: Callable[[], Any], test: Callable[[Any], bool], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if test(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last value: {value}")
        time.sleep(0.2)


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stopped_cleanly(server: Server) -> None:
    """SIGTERM; uvicorn shuts down, then re-raises the signal (exit status -15)."""
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log.read_text()


def camera_rows(db: Path) -> list[tuple[int, int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT id, frame_id, label FROM results WHERE source = 'camera' ORDER BY id"
        ).fetchall()


def test_the_emulator_streams_and_every_cell_is_stored_and_archived(tmp_path, emulator_images):
    archive = tmp_path / "archive"
    server = serve(tmp_path, emulator_images, TOPGAN_CROP_ARCHIVE=str(archive))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            status = wait_for(
                lambda: c.get("/acquisition").json(), lambda s: s["state"] == "running"
            )
            assert status["camera_info"]["model"] == "Emulation"
            assert (status["camera_info"]["width"], status["camera_info"]["height"]) == (1280, 1024)
            summary = wait_for(
                lambda: c.get("/results/summary").json(),
                lambda s: s["sources"].get("camera", 0) >= 40,
            )
            assert set(summary["counts"]) == {"sw480", "sw620"}
            ready = c.get("/ready")
            assert ready.status_code == 200
            assert (ready.json()["acquisition"], ready.json()["acquiring"]) == ("running", True)
            assert c.get("/acquisition").json()["frames_per_second"] > 0
            metrics = c.get("/metrics").text
            assert metric(metrics, "topgan_frames_grabbed_total") >= 10
            assert metric(metrics, "topgan_camera_up") == 1
            assert metric(metrics, 'topgan_cells_total{label="sw480",source="camera"}') > 0
            assert metric(metrics, 'topgan_cell_latency_seconds_count{source="camera"}') > 0
            live = c.get("/live/state").json()
            assert live["frame"]["source"] == "camera"
            assert live["frame"]["frame_id"] > 0
            assert live["crops"]
            assert c.get("/live/opd.png").headers["content-type"] == "image/png"

            stopped = c.post("/acquisition/stop")
            assert stopped.status_code == 200, stopped.text
            status = stopped.json()
            assert status["state"] == "idle"
            counts = status["counts"]
            assert counts["cells_stored"] == counts["cells_cut"]
            assert (
                counts["frames_processed"] + counts.get("frames_dropped", 0)
                == (counts["frames_grabbed"])
            )
            rows = camera_rows(server.db)
            assert len(rows) == counts["cells_stored"]
            assert status["frames_per_second"] == 0
            assert c.get("/acquisition").json()["frames_per_second"] == 0
            # A deliberate stop: the service still serves /classify, so it is ready,
            # and says it is not acquiring.
            ready = c.get("/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["reasons"] == []
            assert ready.json()["serving"] is True
            assert (ready.json()["acquisition"], ready.json()["acquiring"]) == ("idle", False)
            assert c.post("/acquisition/stop").status_code == 409
            grabbed = counts["frames_grabbed"]

            again = c.post("/acquisition/start")
            assert again.status_code == 200, again.text
            assert c.post("/acquisition/start").status_code == 409
            wait_for(
                lambda: c.get("/acquisition").json()["counts"]["frames_grabbed"],
                lambda n: n >= grabbed + 20,
            )
    finally:
        stopped_cleanly(server)  # SIGTERM: drains the loop, flushes store and archive
    rows = camera_rows(server.db)
    archived = [read_crop_dataset(p) for p in sorted(archive.glob("*.h5"))]
    assert not list(archive.glob("*.part"))
    import h5py

    ids = []
    for path in sorted(archive.glob("*.h5")):
        with h5py.File(path) as h5:
            ids.extend(h5["result_id"][()].tolist())
            assert set(h5["probability"].shape[1:]) == {2}
    assert sorted(ids) == [r[0] for r in rows], "every stored camera cell is archived"
    assert sum(len(d) for d in archived) == len(rows)
    assert all((d.label == -1).all() for d in archived)
    assert archived[0].opd.shape[1:] == (128, 128)


def test_a_camera_that_is_not_there_keeps_the_api_up(tmp_path, emulator_images):
    server = serve(tmp_path, emulator_images, TOPGAN_CAMERA_SERIAL="not-plugged-in")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            status = wait_for(
                lambda: c.get("/acquisition").json(),
                lambda s: s["errors"].get("camera_open", 0) >= 2,
            )
            assert status["state"] == "failed"
            assert "not-plugged-in" in status["detail"]
            ready = c.get("/ready")
            assert ready.status_code == 503
            assert any(
                "no emulator camera with serial not-plugged-in" in r
                for r in ready.json()["reasons"]
            )
            crop = render_cell("sw480", np.random.default_rng(0), 0.25).opd_nm
            square = np.zeros((128, 128), np.float32)
            h, w = min(crop.shape[0], 128), min(crop.shape[1], 128)
            square[:h, :w] = crop[:h, :w]
            answer = c.post("/classify", json={"opd": square.tolist()})
            assert answer.status_code == 200, answer.text
            assert metric(c.get("/metrics").text, "topgan_camera_up") == 0
            assert c.post("/acquisition/stop").json()["state"] == "idle"
    finally:
        stopped_cleanly(server)


def test_unknown_camera_kind_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    topgan = str(Path(sys.executable).with_name("topgan"))
    done = subprocess.run(
        [topgan, "serve", "--camera", "webcam"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "camera must be one of" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


class HeldBack:
    """The service side of the runner, holding the worker on its first frame until
    released: a worker asks for the model's crop geometry before it reconstructs."""

    def __init__(self, service: Classification) -> None:
        self.service = service
        self.holding = threading.Event()
        self.release = threading.Event()

    def crop_geometry(self) -> CropGeometry:
        if not self.release.is_set():
            self.holding.set()
            self.release.wait(120)
        return self.service.crop_geometry()

    def __getattr__(self, name: str) -> Any:  # the rest as the service does it
        return getattr(self.service, name)


class SecondFrameWhenHeld(ReplayCamera):
    """A replay that hands over its second frame only once the worker holds the first."""

    def __init__(self, path: Path, holding: threading.Event) -> None:
        super().__init__(path, rate_hz=None, loop=False)
        self.holding = holding

    def grab(self) -> GrabbedFrame:
        frame = super().grab()
        if frame.index == 2:
            assert self.holding.wait(120), "the worker never took the first frame"
        return frame


def test_a_full_queue_drops_exactly_the_frames_it_cannot_hold(tmp_path, emulator_images):
    """12 frames, one worker held on the first, a queue of 2: each of the other frames
    that finds the queue full pushes the oldest out, so exactly 12 - 1 - 2 = 9 drop,
    and /acquisition and /metrics both say 9; the frames kept are all processed."""
    settings = Settings(
        camera="none",
        database_url=f"sqlite:///{tmp_path}/results.sqlite",
        model_dir=DEFAULT_MODEL,
        execution_provider="cpu",
    )
    state = Services.start(settings)
    held = HeldBack(state.classification)
    processing = WorkerConfig(
        settings.reconstruction_config(),
        settings.segmentation_config(),
        backend="numpy",
        fft_workers=1,
        processes=False,
    )
    from acquisition.cameras.emulator import prepare_emulator_images

    images = prepare_emulator_images(emulator_images, ["sw480", "sw620"], 12)  # as rendered
    reference = tifffile.imread(images.reference)
    runner = AcquisitionRunner(
        "replay",
        lambda: (SecondFrameWhenHeld(images.frames, held.holding), reference),
        processing,
        held,
        state.metrics,
        workers=1,
        queue_size=2,
    )
    processed: list[int] = []
    runner.on_frame.append(lambda result: processed.append(result.frame.index))
    state.camera = CameraLoop(runner, state.live)
    app = create_app(settings)
    app.state.services = state  # served without the lifespan, which would start its own
    try:
        with in_process(app) as client:
            assert client.post("/acquisition/start").status_code == 200
            status = wait_for(
                lambda: client.get("/acquisition").json(),
                lambda s: s["counts"].get("frames_grabbed") == 12 and s["state"] == "stopping",
            )
            assert held.holding.is_set()
            assert not processed
            assert status["counts"]["frames_dropped"] == 9
            assert status["queue_depth"] == 2
            metrics = client.get("/metrics").text
            assert metric(metrics, "topgan_frames_grabbed_total") == 12
            assert metric(metrics, "topgan_frames_dropped_total") == 9
            assert metric(metrics, "topgan_queue_depth") == 2

            held.release.set()
            status = wait_for(
                lambda: client.get("/acquisition").json(), lambda s: s["state"] == "idle"
            )
    finally:
        held.release.set()
        state.close()
    assert status["detail"].endswith("finished after 12 frames")
    counts = status["counts"]
    assert counts["frames_dropped"] == 9
    assert counts["frames_processed"] == 3
    assert processed == [1, 11, 12], "the first frame and the two newest"
    assert status["errors"] == {}
    assert (
        counts["cells_stored"]
        == counts["cells_cut"]
        == len(camera_rows(tmp_path / "results.sqlite"))
    )
    assert counts["cells_cut"] > 0


def test_at_a_gentle_rate_nothing_is_dropped(tmp_path, emulator_images):
    """The served emulator at 10 frames/s, stopped after 30 frames: the queue holds
    more frames than the run grabs, so a drop here is a bug, not a slow machine;
    stopping processes every frame and stores every cut cell."""
    server = serve(
        tmp_path,
        emulator_images,
        TOPGAN_FRAME_RATE_HZ="10",
        TOPGAN_FRAME_QUEUE="128",
        TOPGAN_GRAB_TIMEOUT_S="10",
    )
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            wait_for(
                lambda: c.get("/acquisition").json()["counts"].get("frames_grabbed", 0),
                lambda n: n >= 30,
            )
            stopped = c.post("/acquisition/stop")
            assert stopped.status_code == 200, stopped.text
            status = stopped.json()
            metrics = c.get("/metrics").text
    finally:
        stopped_cleanly(server)
    counts = status["counts"]
    assert counts.get("frames_dropped", 0) == 0
    assert metric(metrics, "topgan_frames_dropped_total") == 0
    assert counts["frames_processed"] == counts["frames_grabbed"] >= 30
    assert metric(metrics, "topgan_frames_grabbed_total") == counts["frames_grabbed"]
    assert status["errors"] == {}
    assert counts["cells_stored"] == counts["cells_cut"] == len(camera_rows(server.db))
    assert counts["cells_cut"] > 0


def test_live_page_in_chromium_follows_the_camera(tmp_path, flow_images, browser_paths):
    """The emulator streams cells in flow; the page follows the frames, draws each
    tracked cell's path with its event id, and counts each cell once."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    server = serve(
        tmp_path,
        flow_images,
        TOPGAN_FRAME_RATE_HZ=str(LIVE_FLOW.frame_rate_hz),
        TOPGAN_EMULATOR_FRAMES=str(LIVE_FLOW_FRAMES),
        TOPGAN_SIMULATED_FLOW="true",
        TOPGAN_SIMULATED_FLOW_SPEED_UM_S=str(LIVE_FLOW.flow_speed_um_s),
        TOPGAN_SIMULATED_CELLS_PER_SECOND=str(LIVE_FLOW.cells_per_second),
    )
    driver = headless_chromium(browser_paths)
    try:
        driver.get(server.url + "/")
        wait = page_wait(driver, 30)
        wait.until(lambda d: page_text(d, "#acq-state").lower() == "running")
        loaded = "const i = document.getElementById(arguments[0]);"
        loaded += "return i.complete && i.naturalWidth"
        wait.until(lambda d: all(d.execute_script(loaded, i) for i in ("hologram", "opd")))
        assert driver.execute_script(loaded, "hologram") == 640  # 1280 px, shown at half
        first = int(page_text(driver, "#frame-id"))  # rebuilt on every frame: read in one go
        assert first > 0
        wait.until(lambda d: int(page_text(d, "#frame-id")) > first)  # it follows
        # The crops are redrawn as results arrive: read them in one go.
        read = (
            "return [...document.querySelectorAll('.crop')].map(c => "
            "[c.dataset.resultId, c.querySelector('.label').textContent])"
        )
        crops = wait.until(lambda d: d.execute_script(read))
        assert {label for _, label in crops} <= {"sw480", "sw620"}
        with httpx.Client(base_url=server.url, timeout=30) as c:
            ids = sorted(int(i) for i, _ in crops)
            page = c.get("/results", params={"after_id": ids[0] - 1, "limit": 1000}).json()
        stored = {r["id"]: r["label"] for r in page["results"]}
        assert all(stored[int(i)] == label for i, label in crops), "the stored labels"

        # Tracked cells: a path each, and the event id of those classified.
        read_tracks = (
            "return [...document.querySelectorAll('#tracks text')]"
            ".map(t => parseInt(t.dataset.eventId))"
        )
        drawn = wait.until(lambda d: d.execute_script(read_tracks))
        assert driver.find_elements(By.CSS_SELECTOR, "#tracks polyline")
        with httpx.Client(base_url=server.url, timeout=30) as c:

            def view_events() -> set[int]:
                page = c.get("/results", params={"after_id": 0, "limit": 1000}).json()
                return {r["event_id"] for r in page["results"]}

            # the ids drawn are those the views are stored with, and the events' ids
            wait_for(view_events, lambda ids: set(drawn) <= ids)
            event = wait_for(
                lambda: c.get("/events", params={"after_id": min(drawn) - 1}).json()["events"],
                lambda events: any(e["id"] in drawn for e in events),
            )
            summary = c.get("/results/summary").json()
        assert event
        assert summary["events"]["total"] > 0
        assert summary["cells"] > summary["events"]["total"], "a cell is seen in several frames"
        wait.until(lambda d: int(page_text(d, "#total-cells")) > 0)
        assert page_text(driver, "#cells-kind") == "cells (each counted once)"
        assert not driver.find_element(By.ID, "banner").is_displayed()

        # The last minutes: rates, class fractions and quality, second by second.
        points = "return document.querySelector(arguments[0])?.getAttribute('points') || ''"
        line = '#chart-frames polyline[data-series="frames_per_s"]'
        wait.until(lambda d: len(d.execute_script(points, line).split()) >= 2)
        wait.until(lambda d: float(page_text(d, "#chart-frames .now")) > 0)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-fractions rect"))
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-background line.threshold")
        assert page_text(driver, "#opd-lo") == "0"
        assert page_text(driver, "#opd-hi") == "800"

        # A cell's QC: click its card. The page redraws its cards as cells arrive, so a
        # card found may be replaced before the click lands: find it again then.
        def click_a_card(d: Any) -> bool:
            try:
                d.find_element(By.CSS_SELECTOR, ".crop").click()
            except StaleElementReferenceException:
                return False
            return True

        wait.until(click_a_card)
        area = '#selected-qc tr[data-key="area_um2"] .value'
        wait.until(lambda d: page_text(d, area).endswith("µm²"))
        assert float(page_text(driver, area).split()[0]) > 20

        # Stop and start from the page.
        driver.find_element(By.ID, "acq-stop").click()
        wait.until(lambda d: page_text(d, "#acq-state").lower() == "idle")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/acquisition").json()["state"] == "idle"
        wait.until(lambda d: d.find_element(By.ID, "acq-start").is_enabled())
        driver.find_element(By.ID, "acq-start").click()
        wait.until(lambda d: page_text(d, "#acq-state").lower() == "running")
        assert not driver.find_element(By.ID, "banner").is_displayed()
    finally:
        driver.quit()
        stopped_cleanly(server)
