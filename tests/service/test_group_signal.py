"""A SIGTERM to the whole process group right after start (a supervisor restarting
the service, Ctrl+C just after launch) reaches the worker processes while they are
still starting; the service must still stop cleanly, without waiting out the stop's
timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.settings import DEFAULT_MODEL, REPO_ROOT
from tests.service.conftest import free_port
from tests.service.test_acquisition import camera_rows

#: Seconds after /ready first answers 200 at which the group gets its SIGTERM: the
#: worker processes are spawned on the first frame and take a second or two to start.
DELAYS_S = (0.0, 0.5, 1.0, 1.5)


@pytest.fixture(scope="module")
def emulator_images(tmp_path_factory) -> Path:
    from acquisition.cameras.emulator import prepare_emulator_images

    folder = tmp_path_factory.mktemp("emulator")
    prepare_emulator_images(folder, ["sw480", "sw620"], 12)
    return folder


@pytest.mark.parametrize("delay_s", DELAYS_S)
def test_a_group_sigterm_while_the_workers_start_stops_cleanly(tmp_path, emulator_images, delay_s):
    port = free_port()
    db = tmp_path / "results.sqlite"
    log = tmp_path / "server.log"
    environment = {
        **os.environ,
        "TOPGAN_CAMERA": "emulator",
        "TOPGAN_MODEL_DIR": str(DEFAULT_MODEL),
        "TOPGAN_MODELS_ROOT": str(REPO_ROOT / "models"),
        "TOPGAN_EMULATOR_IMAGES": str(emulator_images),
        "TOPGAN_EMULATOR_FRAMES": "12",
        "TOPGAN_SIMULATED_FLOW": "false",  # 12 independent frames, as rendered above
        "TOPGAN_DATABASE_URL": f"sqlite:///{db}",
        "TOPGAN_PORT": str(port),
        "TOPGAN_EXECUTION_PROVIDER": "cpu",
    }
    topgan = str(Path(sys.executable).with_name("topgan"))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [topgan, "serve"],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a group of its own, as under a supervisor
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        else:
            raise AssertionError(f"never ready: {log.read_text()}")
        time.sleep(delay_s)
        os.killpg(process.pid, signal.SIGTERM)
        # Bounded only so that a hang fails the test instead of blocking the suite.
        returncode = process.wait(120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log.read_text()
    assert returncode in (0, -signal.SIGTERM), text
    assert "stop timed out" not in text, text
    assert "acquisition idle: " in text, text
    assert "Application shutdown complete" in text, text
    # Every cell the loop cut before the stop was stored.
    stopped = [line for line in text.splitlines() if "acquisition stopped:" in line][-1]
    assert "'cells_lost': 0" in stopped
    cut = int(stopped.split("'cells_cut': ")[1].split(",")[0])
    assert len(camera_rows(db)) == cut
