from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from acquisition.reconstruction import ReconstructionConfig, Reconstructor
from acquisition.segmentation import Segmenter
from acquisition.simulator.optics import OpticsConfig
from acquisition.simulator.scene import FlowSimulator, SceneConfig


def test_frames_are_deterministic_per_seed_and_index():
    config = SceneConfig(shape=(256, 320))
    a = FlowSimulator(config, ["sw480"], seed=4)
    b = FlowSimulator(config, ["sw480"], seed=4)
    np.testing.assert_array_equal(a.reference, b.reference)
    np.testing.assert_array_equal(a.frame(3).hologram, b.frame(3).hologram)
    assert a.frame(3).objects == b.frame(3).objects
    assert not np.array_equal(a.frame(2).hologram, a.frame(3).hologram)
    other = FlowSimulator(config, ["sw480"], seed=5)
    assert not np.array_equal(other.reference, a.reference)


def test_cells_stay_in_the_sample_half_and_ghosts_in_the_other():
    config = SceneConfig(shape=(512, 640), cells_per_frame=3, clipped_probability=0.0)
    sim = FlowSimulator(config, ["sw620"], seed=1)
    frame = sim.frame(0)
    assert frame.hologram.dtype == np.uint8
    assert frame.hologram.shape == (512, 640)
    assert frame.opd_nm[:, 320:].max() == 0, "no cell in the mirrored half"
    assert all(o.x_px < 320 for o in frame.objects)


@pytest.mark.parametrize("line", ["hs895-t", "sw480"])
def test_reconstruction_matches_the_phantom_within_5nm(line, backend):
    config = SceneConfig()  # the default instrument and noise
    sim = FlowSimulator(config, [line], seed=2)
    rec = Reconstructor(
        ReconstructionConfig(sample_half="left", pixel_size_um=config.optics.pixel_size_um),
        backend,
        reference=sim.reference,
    )
    checked = 0
    for index in range(2):
        frame = sim.frame(index)
        maps = rec.reconstruct(frame.hologram)
        h, w = maps.opd_nm.shape[1:]
        gy, gx = np.meshgrid(
            maps.origin_px[0] + np.arange(h) * maps.scale[0],
            maps.origin_px[1] + np.arange(w) * maps.scale[1],
            indexing="ij",
        )
        truth = ndi.map_coordinates(frame.opd_nm, [gy, gx], order=3)
        for obj in frame.objects:
            if obj.kind != "cell" or obj.touching or obj.clipped:
                continue
            near = np.hypot(gy - obj.y_px, gx - obj.x_px) < obj.diameter_um / 2 / 0.12
            inside = near & (truth > 50)
            err = maps.opd_nm[0][inside] - truth[inside]
            rms = float(np.sqrt(np.mean(err**2)))
            assert rms <= 5.0, f"{line} cell at ({obj.y_px:.0f}, {obj.x_px:.0f}): {rms:.2f} nm RMS"
            checked += 1
    assert checked >= 3


def test_segmentation_finds_the_placed_cells(backend):
    config = SceneConfig(touching_probability=0.0, clipped_probability=0.0, debris_per_frame=2.0)
    sim = FlowSimulator(config, ["sw480", "sw620"], seed=9)
    rec = Reconstructor(ReconstructionConfig(sample_half="left"), backend, reference=sim.reference)
    frame = sim.frame(0)
    found = Segmenter().segment(rec.reconstruct(frame.hologram))[0].cells
    cells = [o for o in frame.objects if o.kind == "cell"]
    assert len(found) == len(cells)
    for obj in cells:
        assert min(math.dist((obj.y_px, obj.x_px), c.position_px) for c in found) < 3


def test_12_bit_and_bad_configs():
    config = SceneConfig(shape=(128, 160), optics=OpticsConfig(bit_depth=12))
    frame = FlowSimulator(config, ["sw480"]).frame(0)
    assert frame.hologram.dtype == np.uint16
    assert frame.hologram.max() < 4096
    with pytest.raises(ValueError, match="mirror_axis"):
        SceneConfig(sample_half="top")
    with pytest.raises(ValueError, match="at least 64x64"):
        SceneConfig(shape=(32, 32))
    with pytest.raises(ValueError, match="unknown cell line"):
        FlowSimulator(SceneConfig(shape=(128, 128)), ["hela"])
