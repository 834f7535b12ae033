"""Hologram quality, measured on every frame: the background a reference leaves, the
fringes' contrast, the reference's age; a stale reference shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acquisition.io import write_camera_tiff
from acquisition.simulator.scene import FlowSimulator, SceneConfig
from service.loop.states import Count
from service.services import Services
from tests.service.conftest import emulator_replay_folder, replay_settings, wait_until_replayed

FRAMES = 6


@pytest.fixture(scope="module")
def replay_folder(tmp_path_factory) -> Path:
    """Simulated SW480/SW620 frames and their own reference, as a replay folder."""
    tmp = tmp_path_factory.mktemp("quality")
    folder = emulator_replay_folder(tmp, FRAMES)
    # Another instrument's reference (another seed: other aberrations): a stale one.
    stale = FlowSimulator(SceneConfig(), ["sw480"], seed=99).reference
    write_camera_tiff(tmp / "stale-reference.tiff", stale, SceneConfig().optics.bit_depth)
    return folder


def run(folder: Path, tmp_path: Path, **extra: object) -> dict[str, float]:
    services = Services.start(replay_settings(folder, tmp_path, **extra))
    try:
        wait_until_replayed(services, timeout=120)
        m = services.metrics
        counts = m.loop_counts()
        background = {
            s.name: s.value
            for metric in m.background_opd.collect()
            for s in metric.samples
            if s.name.endswith(("_sum", "_count"))
        }
        return {
            "frames": counts[Count.FRAMES_PROCESSED],
            "without_cells": counts[Count.FRAMES_WITHOUT_CELLS],
            "cells": counts[Count.CELLS_CUT],
            "background_count": background["topgan_background_opd_nm_count"],
            "background_mean": background["topgan_background_opd_nm_sum"]
            / background["topgan_background_opd_nm_count"],
            "contrast": _value(m.fringe_contrast),
            "drift": _value(m.carrier_drift),
            "residue_frames": next(
                s.value
                for metric in m.unwrap_residues.collect()
                for s in metric.samples
                if s.name.endswith("_count")
            ),
            "reference_age": _value(m.reference_age),
        }
    finally:
        services.close()


def _value(gauge: Any) -> float:
    return float(next(iter(gauge.collect())).samples[0].value)


def test_every_frame_is_measured(replay_folder, tmp_path):
    got = run(replay_folder, tmp_path)
    assert got["frames"] == FRAMES
    assert got["background_count"] == FRAMES
    assert got["background_mean"] < 5, "the frames' own reference leaves a flat background"
    visibility = SceneConfig().optics.visibility
    assert got["contrast"] == pytest.approx(visibility, abs=0.05)
    assert 0 <= got["drift"] < 1e-4, "the frames' own reference: the carrier has not moved"
    assert got["residue_frames"] == FRAMES
    assert got["reference_age"] >= 0
    assert got["without_cells"] <= got["frames"]
    assert got["cells"] > 0


def test_a_stale_reference_shows_in_the_background(replay_folder, tmp_path):
    stale = replay_folder.parent / "stale-reference.tiff"
    got = run(replay_folder, tmp_path, reference=stale)
    assert got["frames"] == FRAMES
    assert got["background_mean"] > 20, "another instrument's aberrations are left in"
    assert np.isfinite(got["contrast"])
