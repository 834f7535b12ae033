"""Continuous flow with ground truth, and the whole path on it: simulated holograms ->
the frame processor -> the tracker, scored against which cell is where."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from acquisition.backend import get_backend
from acquisition.frames import FrameProcessor
from acquisition.reconstruction import ReconstructionConfig
from acquisition.simulator.flow import ContinuousFlow, FlowConfig, looping_flow
from acquisition.simulator.scene import FlowSimulator, SceneConfig
from acquisition.tracking import Tracker, TrackerConfig

SCENE = SceneConfig(debris_per_frame=0.5)


@pytest.fixture(scope="module")
def simulator() -> FlowSimulator:
    return FlowSimulator(SCENE, ["sw480", "sw620"], seed=1)


def test_cells_cross_the_field_in_their_lanes(simulator):
    flow = ContinuousFlow(simulator, FlowConfig(flow_speed_um_s=2000, axis="y"))
    _, cols = SCENE.region
    seen: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    for _ in range(60):
        frame = flow.frame()
        reference_half = frame.opd_nm[:, cols.stop :]
        assert not reference_half.any(), "cells stay in the sample half"
        for o in frame.objects:
            seen[o.track].append((o.frame, o.y_px, o.x_px))
    assert len(seen) > 10
    fastest, slowest = flow.views_per_cell
    assert 4 < fastest < slowest < 30
    for views in seen.values():
        frames = [v[0] for v in views]
        assert frames == list(range(frames[0], frames[0] + len(frames))), "seen in every frame"
        ys = np.array([v[1] for v in views])
        xs = np.array([v[2] for v in views])
        assert np.all(np.diff(ys) > 0), "downstream along +y"
        assert np.ptp(xs) == 0, "in its lane"


@pytest.fixture(scope="module")
def small_simulator() -> FlowSimulator:
    """A 512 x 640 camera (a 61 um long field along y): a quarter of the rendering."""
    return FlowSimulator(replace(SCENE, shape=(512, 640)), ["sw480", "sw620"], seed=1)


#: Cells turning up to 4 degrees a frame while the focus drifts 1.5 um either side.
TURNING_DRIFTING: dict[str, Any] = {
    "rotation_deg_per_frame": 4.0,
    "focus_drift_um": 1.5,
    "focus_period_frames": 80,
}


@pytest.mark.parametrize(
    ("camera", "axis", "direction", "speed_um_s", "rate_hz", "frames", "dropped", "extra"),
    [
        ("full", "y", 1, 2000.0, 90.0, 150, 0.0, {}),  # 5.5 to 22 views a cell
        ("full", "x", -1, 1000.0, 90.0, 120, 0.0, {}),
        ("small", "y", -1, 300.0, 30.0, 150, 0.0, {}),  # 30 frames/s: 6 to 24 views a cell
        ("small", "y", 1, 1000.0, 90.0, 240, 0.05, {}),  # 5 % of the frames dropped at random
        ("small", "y", 1, 1000.0, 90.0, 200, 0.0, TURNING_DRIFTING),
    ],
)
def test_the_whole_path_counts_each_cell_once(
    request, camera, axis, direction, speed_um_s, rate_hz, frames, dropped, extra
):
    simulator = request.getfixturevalue("simulator" if camera == "full" else "small_simulator")
    flow = ContinuousFlow(
        simulator,
        FlowConfig(
            flow_speed_um_s=speed_um_s,
            frame_rate_hz=rate_hz,
            cells_per_second=40.0 if camera == "full" else 30.0,
            axis=axis,
            direction=direction,
            **extra,
        ),
        seed=2,
    )
    drops = np.random.default_rng(7).random(frames) < dropped
    fastest, slowest = flow.views_per_cell
    assert 4 < fastest < slowest < 30
    pixel = SCENE.optics.pixel_size_um
    processor = FrameProcessor(
        ReconstructionConfig(sample_half="left", pixel_size_um=pixel),
        backend=get_backend("numpy"),
        reference=simulator.reference,
    )
    tracker = Tracker(TrackerConfig(pixel_size_um=pixel))
    members: dict[int, list[int]] = defaultdict(list)
    in_view: set[int] = set()  # every cell seen whole in a frame the tracker got
    for index in range(1, frames + 1):
        frame = flow.frame()
        if not drops[index - 1]:
            in_view |= {o.track for o in frame.objects if o.kind == "cell" and not o.clipped}
        if drops[index - 1]:
            continue  # the camera's counter goes on: the tracker sees a gap
        positions = [c.position_px for c in processor.process(frame.hologram).cells]
        update = tracker.update(index, positions)
        for track, position in zip(update.ids, positions, strict=True):
            truth = min(frame.objects, key=lambda o: math.dist((o.y_px, o.x_px), position))
            assert math.dist((truth.y_px, truth.x_px), position) < 3 / pixel, "a real cell"
            members[track].append(truth.track)
    tracker.close()
    true_cells = {t for cells in members.values() for t in cells}
    assert len(true_cells) >= 15
    purity = sum(len(set(cells)) == 1 for cells in members.values()) / len(members)
    tracks_of = Counter(Counter(cells).most_common(1)[0][0] for cells in members.values())
    completeness = sum(tracks_of[c] == 1 for c in true_cells) / len(true_cells)
    assert abs(len(members) - len(true_cells)) <= 0.02 * len(true_cells)
    assert abs(len(members) - len(in_view)) <= 0.02 * len(in_view), "the true count"
    assert purity >= 0.99
    assert completeness >= 0.98


def test_a_looping_flow_is_empty_where_it_wraps(simulator):
    config = FlowConfig(flow_speed_um_s=6000, frame_rate_hz=90, cells_per_second=120)
    drain = ContinuousFlow(simulator, config).drain_frames()
    frames = list(looping_flow(simulator, config, 2 * drain, seed=3))
    assert len(frames) == 2 * drain
    assert any(f.objects for f in frames), "cells flow"
    assert not frames[-1].objects, "every cell has left by the last frame"
    assert not [o for o in frames[0].objects if not o.clipped], "the first frame: entering only"
    with pytest.raises(ValueError, match=f"at least {2 * drain} frames"):
        next(looping_flow(simulator, config, 2 * drain - 1))


def test_cells_turn_and_the_focus_drifts(small_simulator):
    still = ContinuousFlow(small_simulator, FlowConfig(flow_speed_um_s=1000), seed=4)
    moving = ContinuousFlow(
        small_simulator, FlowConfig(flow_speed_um_s=1000, **TURNING_DRIFTING), seed=4
    )
    for _ in range(30):
        a, b = still.frame(), moving.frame()
    assert [(o.track, o.y_px, o.x_px) for o in a.objects] == [
        (o.track, o.y_px, o.x_px) for o in b.objects
    ], "the same cells in the same places"
    assert a.objects
    assert a.defocus_um == 0.0
    assert b.defocus_um == pytest.approx(1.5 * math.sin(2 * math.pi * 29 / 80))
    assert np.abs(a.opd_nm - b.opd_nm).max() > 5, "the cells have turned (round ones barely)"
    assert not np.array_equal(a.hologram, b.hologram)
