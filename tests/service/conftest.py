"""A real ``topgan serve`` process on 127.0.0.1, and model directories to serve."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest


@pytest.fixture(autouse=True)
def _served_model_file(tmp_path, monkeypatch):
    """Each test remembers a reloaded model in its own folder, never in the working
    tree's ``data/served-model.json`` (a developer's reload would change what the
    tests' services serve)."""
    monkeypatch.setenv("TOPGAN_SERVED_MODEL_FILE", str(tmp_path / "served-model.json"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    db: Path
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_server(
    tmp: Path, models_root: Path, model: str | None = "m1", db: Path | None = None, **env: str
) -> Server:
    port = free_port()
    db = db or tmp / "results.sqlite"
    log = tmp / f"server-{port}.log"
    environment = {
        **os.environ,
        "TOPGAN_CAMERA": "none",
        "TOPGAN_MODELS_ROOT": str(models_root),
        "TOPGAN_SERVED_MODEL_FILE": str(tmp / "served-model.json"),
        "TOPGAN_DATABASE_URL": f"sqlite:///{db}",
        "TOPGAN_PORT": str(port),
        "TOPGAN_EXECUTION_PROVIDER": "cpu",
        **env,
    }
    if model is not None:
        environment["TOPGAN_MODEL_DIR"] = str(models_root / model)
    topgan = str(Path(sys.executable).with_name("topgan"))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [topgan, "serve"], env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return Server(process, url, db, log)
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not start: {log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_root):
    srv = start_server(tmp_path_factory.mktemp("server"), models_root)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def browser_paths() -> tuple[str, str]:
    """Chromium and chromedriver; the only reason to skip the page's test is their absence."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if not (chromium and driver):
        pytest.skip("chromium and chromedriver are not installed")
    return chromium, driver


def headless_chromium(browser_paths: tuple[str, str]) -> Any:
    """A headless Chromium driven by selenium (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=browser_paths[1]))


def page_wait(driver: Any, timeout: float) -> Any:
    """A WebDriverWait for the live page, which replaces elements as it updates
    (``#frame-id``, the count rows, the crops): its conditions find their elements
    afresh on every try, and one that was replaced meanwhile means another try."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver,
        timeout,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def page_text(driver: Any, selector: str) -> str:
    """The rendered text of the element ``selector`` selects ('' when there is none),
    found and read in one script: nothing the page replaces in between can go stale."""
    script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';"
    return str(driver.execute_script(script, selector))


@contextlib.contextmanager
def in_process(app: Any) -> Iterator[httpx.Client]:
    """``app`` served by uvicorn on 127.0.0.1 in a thread of this process."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off", log_config=None)
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive(), "uvicorn ended before it started"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=30) as c:
            yield c
    finally:
        server.should_exit = True
        thread.join(30)


# -- the camera loop on a replay folder, in this process -------------------------------


def emulator_replay_folder(tmp: Path, frames: int, seed: int = 3) -> Path:
    """Frames of the emulator's simulated SW480/SW620 holograms and their reference,
    as a replay folder (``reference.tiff`` beside the frames)."""
    from acquisition.cameras.emulator import prepare_emulator_images

    images = prepare_emulator_images(tmp / "emulator", ["sw480", "sw620"], frames, seed=seed)
    folder = tmp / "replay"
    shutil.copytree(images.frames, folder)
    shutil.copy(images.reference, folder / "reference.tiff")
    return folder


def replay_settings(folder: Path, tmp: Path, **extra: Any) -> Any:
    """Settings that replay ``folder`` once, as fast as it goes, in worker threads,
    with the bundled model on the CPU and results in ``tmp``."""
    from service.settings import DEFAULT_MODEL, Settings

    values: dict[str, Any] = {
        "camera": f"replay:{folder}",
        "replay_loop": False,
        "frame_rate_hz": 0,
        "worker_processes": False,
        "array_backend": "numpy",
        "database_url": f"sqlite:///{tmp}/results.sqlite",
        "model_dir": DEFAULT_MODEL,
        "execution_provider": "cpu",
    }
    values.update(extra)
    return Settings(**values)


def wait_until_replayed(services: Any, timeout: float = 300.0) -> None:
    """Wait until the camera loop of ``services`` has replayed its folder and stopped."""
    from service.loop.states import RunState

    camera = services.camera
    assert camera is not None
    deadline = time.monotonic() + timeout
    while not (camera.state == RunState.IDLE and camera.status().detail != "not started"):
        assert time.monotonic() < deadline, camera.status()
        time.sleep(0.05)
