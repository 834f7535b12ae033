"""The camera loop in-process on real parts: pylon's emulator and replayed simulated
holograms, worker processes, the bundled model, a SQLite file."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import tifffile

from acquisition.cameras import (
    BaslerCamera,
    Camera,
    CameraConfig,
    CameraLost,
    GrabbedFrame,
    ReplayCamera,
)
from acquisition.cameras.emulator import prepare_emulator_images
from acquisition.reconstruction import ReconstructionConfig, Reconstructor
from acquisition.segmentation import SegmentationConfig, Segmenter
from models.runtime import ModelRuntime
from service.loop.frame_queue import FrameQueue
from service.loop.runner import AcquisitionRunner
from service.loop.states import Count, ErrorReason
from service.loop.workers import WorkerConfig
from service.services import Services
from service.settings import DEFAULT_MODEL, Settings

PROCESSING = WorkerConfig(
    ReconstructionConfig(wavelength_nm=632.8, pixel_size_um=0.12, sample_half="left"),
    SegmentationConfig(),
    backend="numpy",
    fft_workers=1,
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return prepare_emulator_images(tmp_path_factory.mktemp("emu"), ["sw480", "sw620"], 6, seed=5)


@pytest.fixture
def state(tmp_path):
    settings = Settings(
        camera="none",
        database_url=f"sqlite:///{tmp_path}/r.sqlite",
        model_dir=DEFAULT_MODEL,
        execution_provider="cpu",
    )
    service = Services.start(settings)
    yield service
    service.close()


def _runner(
    state: Services,
    factory: Callable[[], Camera],
    reference: np.ndarray | None,
    processing: WorkerConfig = PROCESSING,
    **kwargs: Any,
) -> AcquisitionRunner:
    kwargs.setdefault("reconnect_min_s", 0.1)
    kwargs.setdefault("reconnect_max_s", 0.2)
    return AcquisitionRunner(
        "test",
        lambda: (factory(), reference),
        processing,
        state.classification,
        state.metrics,
        **kwargs,
    )


def _wait(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            import faulthandler
            import sys

            faulthandler.dump_traceback(sys.stderr)
            raise AssertionError("timed out")
        time.sleep(0.05)


def _rows(state: Services) -> list[dict[str, Any]]:
    with state.classification.store.engine.connect() as conn:
        result = conn.execute(sa.text("SELECT * FROM results ORDER BY id"))
        return [dict(r._mapping) for r in result]


def _reference(images) -> np.ndarray:
    return tifffile.imread(images.reference)


def test_frame_queue_drops_the_oldest():
    queue = FrameQueue(2)
    frames = [GrabbedFrame(np.zeros((2, 2), np.uint8), i, 8) for i in range(4)]
    assert [queue.put(f) for f in frames] == [0, 0, 1, 1]
    got = [queue.get(0), queue.get(0)]
    assert [f.index for f in got if f is not None] == [2, 3]
    assert queue.get(0.01) is None
    queue.put(frames[0])
    queue.close()
    last = queue.get()
    assert last is not None
    assert last.index == 0
    assert queue.get() is None


def test_every_cut_cell_is_classified_and_stored(state, images):
    runner = _runner(state, lambda: ReplayCamera(images.frames, loop=False), _reference(images))
    runner.start()
    _wait(lambda: runner.state == "idle")
    status = runner.status()
    assert status.detail.startswith("replay of")
    assert status.detail.endswith("finished after 6 frames")
    counts = status.counts
    assert counts[Count.FRAMES_GRABBED] == counts[Count.FRAMES_PROCESSED] == 6
    assert counts.get(Count.FRAMES_DROPPED, 0) == 0
    assert counts[Count.CELLS_CUT] >= 12  # about 4 cells a frame
    assert counts[Count.CELLS_STORED] == counts[Count.CELLS_CUT]
    rows = _rows(state)
    assert len(rows) == counts[Count.CELLS_CUT]
    assert {r["source"] for r in rows} == {"camera"}
    assert all(r["latency_s"] > 0 for r in rows)

    # The same frames through reconstruction, segmentation and ONNX Runtime directly.
    runtime = ModelRuntime(DEFAULT_MODEL, "cpu")
    reconstructor = Reconstructor(PROCESSING.reconstruction, reference=_reference(images))
    segmenter = Segmenter(SegmentationConfig())
    expected = []
    for index, path in enumerate(sorted(images.frames.glob("*.tif")), start=1):
        cells = segmenter.segment(reconstructor.reconstruct(tifffile.imread(path)))[0].cells
        if not cells:
            continue
        probabilities = runtime.predict(np.stack([c.crop_nm for c in cells]))
        for cell, p in zip(cells, probabilities, strict=True):
            expected.append(
                (
                    index,
                    round(cell.position_px[0], 3),
                    round(cell.position_px[1], 3),
                    runtime.manifest.classes[int(p.argmax())],
                    p,
                )
            )
    got = sorted(
        (r["frame_id"], round(r["y_px"], 3), round(r["x_px"], 3), r["label"], r) for r in rows
    )
    assert [g[:4] for g in got] == [e[:4] for e in sorted(expected, key=lambda e: e[:3])]
    import json

    for (*_, row), (*_, p) in zip(got, sorted(expected, key=lambda e: e[:3]), strict=True):
        stored = json.loads(row["probabilities"])
        np.testing.assert_allclose([stored[c] for c in runtime.manifest.classes], p, atol=1e-5)


def test_a_full_queue_drops_the_oldest_and_counts_it(state, images):
    slow = WorkerConfig(
        PROCESSING.reconstruction, PROCESSING.segmentation, "numpy", 1, processes=False
    )
    runner = _runner(
        state,
        lambda: ReplayCamera(images.frames, loop=False),
        _reference(images),
        slow,
        workers=1,
        queue_size=1,
    )
    runner.start()
    _wait(lambda: runner.state == "idle")
    counts = runner.status().counts
    assert counts[Count.FRAMES_DROPPED] >= 1
    assert counts[Count.FRAMES_GRABBED] == 6
    assert counts[Count.FRAMES_PROCESSED] + counts[Count.FRAMES_DROPPED] == 6
    assert counts[Count.CELLS_STORED] == counts[Count.CELLS_CUT] == len(_rows(state))
    dropped = state.metrics.frames_dropped._value.get()
    assert dropped == counts[Count.FRAMES_DROPPED]


def test_a_bad_frame_is_counted_and_skipped(state, images, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted(images.frames.glob("*.tif"))[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    # A frame of another size (an ROI changed under the loop) does not fit the reference.
    tifffile.imwrite(folder / "frame_00001b.tif", np.full((512, 640), 100, np.uint8))
    runner = _runner(state, lambda: ReplayCamera(folder, loop=False), _reference(images))
    runner.start()
    _wait(lambda: runner.state == "idle")
    status = runner.status()
    assert status.errors == {"reconstruction": 1}
    assert "frame 3: reference hologram shape" in (status.last_error or "")
    assert status.counts[Count.FRAMES_PROCESSED] == 2
    assert status.counts[Count.CELLS_STORED] == status.counts[Count.CELLS_CUT] > 0


def test_failed_buffers_are_counted_and_the_loop_goes_on(state, images):
    cameras: list[BaslerCamera] = []

    def factory() -> Camera:
        config = CameraConfig(image_source=images.frames, frame_rate_hz=30)
        cameras.append(BaslerCamera(config, "emulator"))
        return cameras[-1]

    runner = _runner(state, factory, _reference(images))
    runner.start()
    try:
        _wait(
            lambda: (
                runner.state == "running" and runner.status().counts[Count.FRAMES_PROCESSED] >= 3
            )
        )
        cameras[0].force_failed_buffers(4)
        _wait(lambda: runner.status().errors.get(ErrorReason.GRAB_FAILED, 0) >= 4)
        before = runner.status().counts[Count.FRAMES_PROCESSED]
        _wait(lambda: runner.status().counts[Count.FRAMES_PROCESSED] >= before + 3)
        assert runner.state == "running"
        assert runner.status().errors.get(ErrorReason.GRAB_FAILED, 0) == 4
        assert len(cameras) == 1, "failed buffers do not reopen the camera"
    finally:
        runner.stop()
    assert runner.state == "idle"
    counts = runner.status().counts
    assert counts[Count.CELLS_STORED] == counts[Count.CELLS_CUT] == len(_rows(state))
    metric = state.metrics.frame_errors.labels("grab_failed")._value.get()
    assert metric == 4


def test_grab_timeouts_are_counted_and_a_silent_camera_is_reopened(state, images):
    # One frame every 2 s against a 0.1 s grab timeout: five timeouts in a row in free
    # run mean a stalled link, and the camera is closed and opened again.
    config = CameraConfig(image_source=images.frames, frame_rate_hz=0.5, grab_timeout_s=0.1)
    runner = _runner(state, lambda: BaslerCamera(config, "emulator"), _reference(images))
    runner.start()
    try:
        _wait(lambda: runner.status().counts[Count.RECONNECTS] >= 1, timeout=20)
        status = runner.status()
        assert status.errors[ErrorReason.GRAB_TIMEOUT] >= 5
        assert "no frame within 0.1 s" in (status.last_error or "")
        assert state.metrics.frame_errors.labels("grab_timeout")._value.get() >= 5
    finally:
        runner.stop()
    assert runner.state == "idle"


class VanishingCamera:
    """The emulator, but the device disappears after a few frames the first time: a
    USB camera pulled out (a real removal cannot be made on this machine)."""

    kind = "emulator"
    opened = 0

    def __init__(
        self, inner: BaslerCamera, vanish_after: int | None, error: Exception | None = None
    ) -> None:
        self.inner = inner
        self.vanish_after = vanish_after
        self.error = error or CameraLost("the camera was removed")
        self.grabs = 0

    def open(self) -> None:
        VanishingCamera.opened += 1
        self.inner.open()

    def grab(self) -> GrabbedFrame:
        self.grabs += 1
        if self.vanish_after is not None and self.grabs > self.vanish_after:
            raise self.error
        return self.inner.grab()

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


@pytest.mark.parametrize(
    "error", [CameraLost("the camera was removed"), RuntimeError("an unforeseen driver error")]
)
def test_a_lost_camera_is_reopened(state, images, error):
    VanishingCamera.opened = 0

    def factory() -> Camera:
        inner = BaslerCamera(CameraConfig(image_source=images.frames, frame_rate_hz=30), "emulator")
        return VanishingCamera(inner, 5 if VanishingCamera.opened == 0 else None, error)

    runner = _runner(state, factory, _reference(images))
    runner.start()
    try:
        _wait(lambda: runner.status().counts[Count.RECONNECTS] == 1 and runner.state == "running")
        before = runner.status().counts[Count.FRAMES_GRABBED]
        _wait(lambda: runner.status().counts[Count.FRAMES_GRABBED] >= before + 5)
        assert runner.status().errors.get(ErrorReason.CAMERA_LOST, 0) == 1
        assert VanishingCamera.opened == 2
    finally:
        runner.stop()
    assert runner.status().counts[Count.CELLS_STORED] == runner.status().counts[Count.CELLS_CUT]


def test_a_camera_that_cannot_open_is_retried_with_backoff(state, images):
    config = CameraConfig(serial="no-such-camera", image_source=images.frames)
    runner = _runner(state, lambda: BaslerCamera(config, "emulator"), None)
    runner.start()
    try:
        _wait(lambda: runner.status().errors.get(ErrorReason.CAMERA_OPEN, 0) >= 3, timeout=10)
        status = runner.status()
        assert status.state == "failed"
        assert "no emulator camera with serial no-such-camera" in status.detail
        assert "retry" in status.detail
    finally:
        runner.stop()
    assert runner.state == "idle"


def test_a_dead_worker_process_is_replaced(state, images):
    import multiprocessing

    runner = _runner(
        state, lambda: ReplayCamera(images.frames, rate_hz=20), _reference(images), workers=1
    )
    runner.start()
    try:
        _wait(lambda: runner.status().counts[Count.FRAMES_PROCESSED] >= 3)
        children = [p for p in multiprocessing.active_children() if p.name == "pipeline-worker"]
        assert len(children) == 1
        children[0].kill()
        _wait(lambda: runner.status().errors.get(ErrorReason.WORKER, 0) >= 1)
        before = runner.status().counts[Count.FRAMES_PROCESSED]
        _wait(lambda: runner.status().counts[Count.FRAMES_PROCESSED] >= before + 3)
    finally:
        runner.stop()
    assert runner.state == "idle"
    assert runner.status().counts[Count.CELLS_STORED] == runner.status().counts[Count.CELLS_CUT]


def test_start_twice_is_refused_and_stop_is_idempotent(state, images):
    runner = _runner(state, lambda: ReplayCamera(images.frames, rate_hz=20), _reference(images))
    runner.start()
    try:
        with pytest.raises(RuntimeError, match="already"):
            runner.start()
    finally:
        runner.stop()
    runner.stop()
    assert runner.state == "idle"
    runner.start()  # and it starts again
    _wait(lambda: runner.status().counts[Count.FRAMES_PROCESSED] >= 10)
    runner.stop()
    counts = runner.status().counts
    assert counts[Count.CELLS_STORED] == counts[Count.CELLS_CUT] == len(_rows(state))
