"""The worker processes' frame transport: frames and results through shared memory,
on real simulated holograms, the same answers as the frame processor in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from acquisition.cameras.emulator import prepare_emulator_images
from acquisition.frames import CropGeometry, ProcessedFrames
from acquisition.reconstruction import ReconstructionConfig
from acquisition.segmentation import SegmentationConfig
from service.children import pack, unpack
from service.loop.workers import ChildWorker, LocalWorker, WorkerConfig

CONFIG = WorkerConfig(
    ReconstructionConfig(wavelength_nm=632.8, pixel_size_um=0.12, sample_half="left"),
    SegmentationConfig(),
    backend="numpy",
    fft_workers=1,
)
CROP = CropGeometry(64, 0.25)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return prepare_emulator_images(tmp_path_factory.mktemp("emu"), ["sw480", "sw620"], 3, seed=7)


def _same(a: ProcessedFrames, b: ProcessedFrames) -> None:
    np.testing.assert_array_equal(a.maps.opd_nm, b.maps.opd_nm)
    np.testing.assert_array_equal(a.maps.amplitude, b.maps.amplitude)
    assert len(a.segmentations) == len(b.segmentations)
    for x, y in zip(a.segmentations, b.segmentations, strict=True):
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.rejected == y.rejected
        assert x.clipped_px == y.clipped_px
    assert [c.qc for c in a.cells] == [c.qc for c in b.cells]
    assert [c.position_px for c in a.cells] == [c.position_px for c in b.cells]
    np.testing.assert_array_equal(a.crops(), b.crops())


def _shm(name: str) -> Path:
    return Path("/dev/shm") / name.lstrip("/")


def test_a_child_answers_what_the_processor_answers_in_process(images):
    reference = tifffile.imread(images.reference)
    frames = [tifffile.imread(f) for f in sorted(images.frames.glob("*.tif*"))]
    local = LocalWorker(CONFIG, reference)
    child = ChildWorker(CONFIG, reference)
    try:
        names = [child.child.argument.name, child.child.answer.name]
        assert all(_shm(n).exists() for n in names)
        for frame in frames:
            expected = local.process(frame, CROP)
            got = child.process(frame, CROP)
            _same(expected, got)
            assert got.cells, "the simulated frames hold cells"
        # the answers are the parent's own: the next frame does not change them
        again = child.process(frames[0], CROP)
        _same(local.process(frames[0], CROP), again)
        _same(local.process(frames[-1], CROP), got)
    finally:
        child.close()
    assert not any(_shm(n).exists() for n in names), "close unlinks both blocks"


def test_a_payload_larger_than_its_block_goes_by_pipe_and_the_block_grows(images):
    reference = tifffile.imread(images.reference)
    frame = tifffile.imread(sorted(images.frames.glob("*.tif*"))[0])
    local = LocalWorker(CONFIG, reference)
    child = ChildWorker(CONFIG, reference, block_bytes=4096)
    try:
        first_in, first_out = child.child.argument.name, child.child.answer.name
        _same(local.process(frame, CROP), child.process(frame, CROP))
        assert child.child.argument.size >= frame.nbytes
        assert child.child.answer.size > 4096
        assert not _shm(first_in).exists()
        assert not _shm(first_out).exists()
        grown = child.child.argument.name, child.child.answer.name
        _same(local.process(frame, CROP), child.process(frame, CROP))
        assert (child.child.argument.name, child.child.answer.name) == grown, (
            "no growth once it fits"
        )
    finally:
        child.close()


def test_a_bad_frame_is_a_value_error_and_the_child_goes_on(images):
    reference = tifffile.imread(images.reference)
    frame = tifffile.imread(sorted(images.frames.glob("*.tif*"))[0])
    child = ChildWorker(CONFIG, reference)
    try:
        with pytest.raises(ValueError, match="shape"):
            child.process(frame[:100, :100], CROP)  # another shape than the reference's
        assert child.process(frame, CROP).cells
    finally:
        child.close()


def test_pack_and_unpack_keep_any_array_layout():
    block = memoryview(bytearray(1 << 16))
    strided = np.arange(200, dtype=np.float32).reshape(10, 20)[:, ::3]
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    obj = {"a": strided, "f": fortran, "i": np.arange(5, dtype=np.int32), "s": "x"}
    for target in (block, None):
        data, lengths, inline = pack(obj, target)
        assert (inline is True) == (target is not None)
        back = unpack(data, lengths, inline, target, copy=True)
        for key in ("a", "f", "i"):
            np.testing.assert_array_equal(back[key], obj[key])
        assert back["s"] == "x"
    data, lengths, inline = pack(obj, block)
    back = unpack(data, lengths, inline, block, copy=True)
    block[:] = b"\0" * len(block)  # the block is reused: copies do not change
    np.testing.assert_array_equal(back["i"], obj["i"])
