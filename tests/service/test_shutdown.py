"""SIGTERM under load: every result the server acknowledged is in the database."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import httpx

from tests.service.conftest import start_server
from tests.service.test_api import NPY, crops, npy

CLIENTS = 6
MAX_REQUESTS_PER_CLIENT = 400  # bounded load, loopback only


def test_sigterm_under_load_loses_nothing_acknowledged(tmp_path, models_root):
    srv = start_server(tmp_path, models_root)
    body = npy(crops(2))
    acknowledged: list[int] = []
    lock = threading.Lock()
    started = threading.Barrier(CLIENTS + 1)

    def client() -> None:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            started.wait()
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                try:
                    answer = c.post("/classify", content=body, headers=NPY)
                except httpx.HTTPError:
                    return  # the server is gone
                if answer.status_code != 200:
                    return
                with lock:
                    acknowledged.extend(cell["id"] for cell in answer.json()["cells"])

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(1.0)
    with lock:
        before_signal = len(acknowledged)
    srv.process.send_signal(signal.SIGTERM)
    srv.process.wait(30)
    for t in threads:
        t.join(30)
    assert before_signal > 20, "the load was running when the signal came"
    with sqlite3.connect(srv.db) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM results")}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged results were lost"
    assert "Finished server process" in srv.log.read_text()
