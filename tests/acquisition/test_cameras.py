"""The cameras on real parts: pylon's camera emulator (PYLON_CAMEMU, shipped in the
pypylon wheel) streaming simulated holograms, replay from files, the simulator."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from acquisition.cameras import (
    BaslerCamera,
    CameraConfig,
    CameraError,
    EndOfStream,
    GrabFailed,
    ReplayCamera,
    SimulatedCamera,
)
from acquisition.cameras.emulator import prepare_emulator_images
from acquisition.simulator.scene import SceneConfig

SMALL = SceneConfig(shape=(256, 320))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return prepare_emulator_images(tmp_path_factory.mktemp("emu"), ["sw480", "sw620"], 5, seed=3)


def _files(folder: Path) -> list[np.ndarray]:
    return [tifffile.imread(p) for p in sorted(folder.glob("*.tif"))]


def test_emulator_images_are_reused_when_the_request_is_the_same(images, caplog):
    stamp = (images.frames.parent / "emulator.json").stat().st_mtime_ns
    again = prepare_emulator_images(images.frames.parent, ["sw480", "sw620"], 5, seed=3)
    assert again == images
    assert (images.frames.parent / "emulator.json").stat().st_mtime_ns == stamp
    assert len(list(images.frames.iterdir())) == 5
    assert not (images.frames / "reference.tiff").exists()  # never streamed as a frame


def test_emulator_streams_the_files_in_name_order(images):
    files = _files(images.frames)
    camera = BaslerCamera(CameraConfig(image_source=images.frames, frame_rate_hz=100), "emulator")
    camera.open()
    try:
        info = camera.describe()
        assert (info["model"], info["width"], info["height"]) == ("Emulation", 1280, 1024)
        grabbed = [camera.grab() for _ in range(7)]
    finally:
        camera.close()
    camera.close()  # idempotent
    first = next(i for i, f in enumerate(files) if np.array_equal(f, grabbed[0].image))
    for k, frame in enumerate(grabbed):
        assert frame.image.dtype == np.uint8
        assert frame.bit_depth == 8
        np.testing.assert_array_equal(frame.image, files[(first + k) % len(files)])
    assert [f.index for f in grabbed] == list(range(grabbed[0].index, grabbed[0].index + 7))
    assert all(b.monotonic >= a.monotonic for a, b in itertools.pairwise(grabbed))


def test_emulator_mono12_delivers_the_12_bit_values(tmp_path):
    values = (np.arange(64 * 96).reshape(64, 96) * 7 % 4096).astype(np.uint16)
    tifffile.imwrite(tmp_path / "f.tif", values << 4)  # pylon reads 16-bit TIFF MSB-aligned
    config = CameraConfig(image_source=tmp_path, pixel_format="Mono12")
    camera = BaslerCamera(config, "emulator")
    camera.open()
    try:
        frame = camera.grab()
    finally:
        camera.close()
    assert frame.bit_depth == 12
    assert frame.image.dtype == np.uint16
    np.testing.assert_array_equal(frame.image, values)


def test_failed_buffers_are_reported_and_the_stream_goes_on(images):
    camera = BaslerCamera(CameraConfig(image_source=images.frames, frame_rate_hz=100), "emulator")
    camera.open()
    outcomes: list[bool] = []  # True: a frame, False: a failed buffer
    messages: list[str] = []
    try:
        camera.grab()
        camera.force_failed_buffers(3)
        # Frames already in the driver's buffers come first; then the three failures.
        for _ in range(40):
            try:
                outcomes.append(camera.grab().image.shape == (1024, 1280))
            except GrabFailed as exc:
                messages.append(str(exc))
                outcomes.append(False)
            if outcomes.count(False) == 3 and outcomes[-1]:
                break
    finally:
        camera.close()
    assert outcomes.count(False) == 3
    assert all(m.startswith("failed buffer") for m in messages)
    assert outcomes[-1], "the stream goes on after the failed buffers"


def test_software_trigger_gives_one_frame_per_grab(images):
    config = CameraConfig(image_source=images.frames, trigger="software", grab_timeout_s=2)
    camera = BaslerCamera(config, "emulator")
    camera.open()
    try:
        indices = [camera.grab().index for _ in range(4)]
    finally:
        camera.close()
    assert indices == list(range(indices[0], indices[0] + 4))


def test_unknown_serial_and_bad_settings_are_clear_errors(images, tmp_path):
    with pytest.raises(CameraError, match=r"no emulator camera with serial 123.*found: Emulation"):
        BaslerCamera(CameraConfig(serial="123", image_source=images.frames), "emulator").open()
    with pytest.raises(CameraError, match="does not exist"):
        BaslerCamera(CameraConfig(image_source=tmp_path / "missing"), "emulator")
    big = CameraConfig(image_source=images.frames, roi=(0, 0, 9000, 100))
    with pytest.raises(CameraError, match="exceeds the sensor"):
        BaslerCamera(big, "emulator").open()
    slow = CameraConfig(image_source=images.frames, exposure_us=1e9)
    with pytest.raises(CameraError, match="ExposureTime"):
        BaslerCamera(slow, "emulator").open()
    # After the failures the emulator opens again.
    camera = BaslerCamera(CameraConfig(image_source=images.frames), "emulator")
    camera.open()
    camera.close()


def test_replay_folder_in_order_loops_and_skips_the_reference(images, tmp_path):
    files = _files(images.frames)
    camera = ReplayCamera(images.frames.parent / "frames")
    camera.open()
    grabbed = [camera.grab() for _ in range(len(files) + 2)]
    for k, frame in enumerate(grabbed):
        np.testing.assert_array_equal(frame.image, files[k % len(files)])
    assert [f.index for f in grabbed] == list(range(1, len(files) + 3))
    # The parent folder holds reference.tiff and a stamp: only frames are replayed.
    tifffile.imwrite(tmp_path / "reference.tiff", files[0])
    tifffile.imwrite(tmp_path / "a.tif", files[1])
    once = ReplayCamera(tmp_path, loop=False)
    once.open()
    np.testing.assert_array_equal(once.grab().image, files[1])
    with pytest.raises(EndOfStream, match="finished after 1 frames"):
        once.grab()


def test_replay_of_one_stack_file_at_a_set_rate(tmp_path):
    stack = np.random.default_rng(0).integers(0, 255, (4, 32, 48), dtype=np.uint8)
    np.save(tmp_path / "stack.npy", stack)
    camera = ReplayCamera(tmp_path / "stack.npy", rate_hz=50, loop=False)
    camera.open()
    start = time.monotonic()
    frames = [camera.grab() for _ in range(4)]
    elapsed = time.monotonic() - start
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), stack)
    assert elapsed >= 3 / 50 * 0.9  # paced: 4 frames at 50/s span at least 3 periods


def test_replay_errors(tmp_path):
    with pytest.raises(CameraError, match="does not exist"):
        ReplayCamera(tmp_path / "nothing").open()
    with pytest.raises(CameraError, match="holds no hologram files"):
        ReplayCamera(tmp_path).open()


def test_simulated_camera_cycles_its_pool():
    camera = SimulatedCamera(["sw480"], SMALL, rate_hz=None, pool_frames=3, seed=1)
    camera.open()
    frames = [camera.grab() for _ in range(6)]
    assert camera.reference.shape == SMALL.shape
    assert len(camera.cells_per_frame) == 3
    np.testing.assert_array_equal(frames[0].image, frames[3].image)
    assert not np.array_equal(frames[0].image, frames[1].image)
    assert [f.index for f in frames] == [1, 2, 3, 4, 5, 6]
