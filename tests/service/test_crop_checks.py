"""The posted crops' QC: checked on the checker's thread while the model runs, the
results stored exactly for the crops that hold a cell."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import wait

import httpx
import numpy as np
import pytest

from acquisition.segmentation import SegmentationConfig, Segmenter
from service import crop_checks
from service.crop_checks import CropChecker, CropChecks, check_crops
from tests.service import test_api

CONFIG = SegmentationConfig().for_crop(128, 0.25)


def mixed_crops(seed: int) -> np.ndarray:
    """Cells and crops that hold none: empty, cut by the edge, two cells pressed
    together."""
    cells = test_api.crops(4, seed=seed)
    yy, xx = np.mgrid[:128, :128]
    pair = sum(
        400 * np.clip(1 - ((yy - 64) ** 2 + (xx - cx) ** 2) / 20**2, 0, None) ** 0.5
        for cx in (46, 82)
    )
    return np.stack(
        [
            cells[0],
            np.zeros((128, 128)),
            np.roll(cells[1], 64, axis=1),
            cells[2],
            pair + np.random.default_rng(seed).normal(0, 2, (128, 128)),
            cells[3],
        ]
    ).astype(np.float32)


def expected(crops: np.ndarray) -> tuple[list[dict | None], list[str | None]]:
    """Each crop's QC and rejection from ``Segmenter.crop_qc`` called directly."""
    segmenter = Segmenter(CONFIG)
    checked = [segmenter.crop_qc(c, 0.25) for c in crops]
    return [q for q, _ in checked], [r for _, r in checked]


def same_qc(got: dict | None, want: dict | None) -> bool:
    """Equal QC, NaN (not measured) equal to NaN, or to null in JSON."""
    if got is None or want is None:
        return got is want
    return got.keys() == want.keys() and all(
        (got[k] is None or math.isnan(got[k])) and math.isnan(want[k])
        if isinstance(want[k], float) and math.isnan(want[k])
        else got[k] == want[k]
        for k in want
    )


def qc_processes() -> list:
    import multiprocessing

    return [p for p in multiprocessing.active_children() if p.name == "crop-qc"]


def ready_checker(processes: bool) -> CropChecker:
    """A checker whose QC process (if any) has started and answered: it starts at the
    first posted crops (checked on the thread meanwhile)."""
    before = len(qc_processes())
    checker = CropChecker(processes)
    time.sleep(0.2)
    assert len(qc_processes()) == before, "no process before any crop is posted"
    first = checker.submit(mixed_crops(5), CONFIG).result(timeout=60)
    assert first.rejected == expected(mixed_crops(5))[1]
    deadline = time.monotonic() + 60
    while processes and checker._child is None:  # it answers once its imports are done
        assert time.monotonic() < deadline, "the QC process never answered"
        time.sleep(0.1)
    return checker


def test_mixed_crops_hold_cells_and_rejections():
    qc, rejected = expected(mixed_crops(0))
    assert rejected == [None, "empty", "clipped", None, "touching", None]
    assert all(q is not None for q, r in zip(qc, rejected, strict=True) if r is None)


def test_checker_answers_each_request_with_its_crops_checks(monkeypatch):
    """Requests queued while the checker is busy are checked in one go and answered
    together (none before the others are checked); each gets its own crops' checks."""
    calls: list[int] = []
    real = crop_checks.check_crops

    def counted(crops: np.ndarray, config: SegmentationConfig) -> CropChecks:
        calls.append(len(crops))
        return real(crops, config)

    monkeypatch.setattr(crop_checks, "check_crops", counted)
    checker = CropChecker(processes=False)  # counted here: on the thread itself
    try:
        requests = [mixed_crops(seed) for seed in range(4)]
        busy = checker.submit(np.concatenate(requests * 3), CONFIG)  # keeps the thread busy
        futures = [checker.submit(r, CONFIG) for r in requests]
        checked_when_answered: list[int] = []
        futures[0].add_done_callback(lambda f: checked_when_answered.append(len(calls)))
        wait([busy, *futures], timeout=120)
        # Answered once all four were checked (one at a time: once two were).
        assert checked_when_answered == [1 + len(requests)]
        for crops, future in zip(requests, futures, strict=True):
            qc, rejected = expected(crops)
            got = future.result()
            assert got.rejected == rejected
            assert all(same_qc(g, w) for g, w in zip(got.qc, qc, strict=True))
    finally:
        checker.close()


def test_the_qc_process_answers_every_request_with_its_crops_checks_and_is_replaced():
    """In the child process: requests queued together are checked in one call, each
    answered with its own crops' checks; a child killed between calls is replaced."""
    checker = ready_checker(processes=True)
    try:
        requests = [mixed_crops(seed) for seed in range(3)]
        busy = checker.submit(np.concatenate(requests * 3), CONFIG)
        futures = [checker.submit(r, CONFIG) for r in requests]
        wait([busy, *futures], timeout=120)
        for crops, future in zip(requests, futures, strict=True):
            qc, rejected = expected(crops)
            got = future.result()
            assert got.rejected == rejected
            assert all(same_qc(g, w) for g, w in zip(got.qc, qc, strict=True))
        (child,) = qc_processes()
        child.kill()
        child.join()
        again = checker.submit(requests[0], CONFIG).result(timeout=120)
        assert again.rejected == expected(requests[0])[1]  # checked on the thread
        deadline = time.monotonic() + 60
        while not (started := qc_processes()):
            assert time.monotonic() < deadline, "no new QC process"
            time.sleep(0.1)
        assert started[0].pid != child.pid
        while checker._child is None:  # ready: the next request goes to it
            assert time.monotonic() < deadline, "the new QC process never answered"
            time.sleep(0.1)
        last = checker.submit(requests[1], CONFIG).result(timeout=120)
        assert last.rejected == expected(requests[1])[1]
    finally:
        checker.close()
    assert not qc_processes()


@pytest.mark.parametrize("processes", [True, False])
def test_a_failed_check_fails_its_request_only(processes):
    checker = ready_checker(processes)
    try:
        bad = checker.submit(np.array([["not", "opd"]]), CONFIG)
        good = checker.submit(mixed_crops(1), CONFIG)
        with pytest.raises(ValueError, match="could not convert"):
            bad.result(timeout=60)
        assert good.result(timeout=60).rejected == expected(mixed_crops(1))[1]
    finally:
        checker.close()


@pytest.mark.parametrize("processes", [True, False])
def test_close_checks_what_is_queued_and_a_cancelled_request_is_skipped(processes):
    """A request cancelled while it waits is skipped; the ones after it are still
    answered, and close() answers every request queued before it.

    The others are submitted once the checker has taken the busy request (a batch
    takes whatever is queued when it starts: submitted together, they could all
    join the busy one), and their crops are made before, so that they queue and the
    cancel comes while the busy request's 180 crops are still being checked."""
    crops = {seed: mixed_crops(seed) for seed in (0, 1, 2, 3)}
    busy_crops = np.concatenate([mixed_crops(9)] * 30)
    checker = ready_checker(processes)
    busy = checker.submit(busy_crops, CONFIG)
    deadline = time.monotonic() + 60
    while not (busy.running() or busy.done()):
        assert time.monotonic() < deadline, "the checker never took the busy request"
        time.sleep(0.001)
    before = checker.submit(crops[0], CONFIG)
    cancelled = checker.submit(crops[1], CONFIG)
    after = [checker.submit(crops[seed], CONFIG) for seed in (2, 3)]
    assert cancelled.cancel(), "still queued behind the busy request"
    checker.close()
    assert all(f.done() for f in (busy, before, *after))
    assert [f.result().rejected for f in (before, *after)] == [
        check_crops(crops[seed], CONFIG).rejected for seed in (0, 2, 3)
    ]


def test_concurrent_posts_store_exactly_the_crops_that_hold_a_cell(server):
    """Several requests at once (their checks queued together, each overlapping the
    model): every answer carries its own crops' QC, the cells are stored with it, and
    nothing else is stored or counted."""
    batches = [mixed_crops(seed) for seed in range(6)]
    answers: dict[int, dict] = {}

    def post(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            response = c.post("/classify", content=test_api.npy(batches[i]), headers=test_api.NPY)
            assert response.status_code == 200, response.text
            answers[i] = response.json()

    with httpx.Client(base_url=server.url, timeout=60) as client:
        before = client.get("/results/summary").json()["cells"]
        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers) == list(range(len(batches)))
        kept_ids = []
        for i, crops in enumerate(batches):
            qc, rejected = expected(crops)
            cells = answers[i]["cells"]
            assert [c["rejected"] for c in cells] == rejected
            assert all(same_qc(c["qc"] or None, q) for c, q in zip(cells, qc, strict=True))
            assert [c["id"] is None for c in cells] == [r is not None for r in rejected]
            kept_ids += [c["id"] for c in cells if c["id"] is not None]
        assert client.get("/results/summary").json()["cells"] == before + len(kept_ids)
        stored = {
            r["id"]: r
            for r in client.get(
                "/results", params={"order": "desc", "limit": len(kept_ids)}
            ).json()["results"]
        }
        assert sorted(stored) == sorted(kept_ids)
        by_id = {c["id"]: c for a in answers.values() for c in a["cells"] if c["id"] is not None}
        assert all(stored[i]["qc"] == by_id[i]["qc"] for i in kept_ids)
