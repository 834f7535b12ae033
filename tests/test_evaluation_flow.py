"""docs/evaluation/flow.py: the per-event rules on hand-made views, and the accounting
of its whole path (simulated flow -> frame processor -> model -> tracker) on a tiny
flow."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acquisition.frames import FrameProcessor
from docs.evaluation import flow
from models.runtime import ModelRuntime
from models.views import combine_views

REPO = Path(__file__).resolve().parents[1]


def _views(events, labels, probabilities, tracks=None) -> flow.FlowViews:
    n = len(events)
    return flow.FlowViews(
        classes=["a", "b"],
        frame=np.arange(n),
        event=np.asarray(events),
        true_track=np.asarray(tracks if tracks is not None else events),
        true_label=np.asarray(labels),
        distance_px=np.zeros(n),
        probabilities=np.asarray(probabilities, dtype=float),
    )


def test_the_rules_on_hand_made_events():
    views = _views(
        [1, 1, 1, 1, 2, 2, 3],
        [0, 0, 0, 0, 1, 1, -1],  # the last detection matches no cell: left out
        [
            # One confident view against three hesitant ones: the log-mean keeps the
            # confident view's class, the mean of probabilities and the vote do not.
            [0.999, 0.001],
            [0.3, 0.7],
            [0.3, 0.7],
            [0.3, 0.7],
            # A tied vote, broken by the mean probability (class 0: wrong).
            [0.8, 0.2],
            [0.4, 0.6],
            [0.5, 0.5],
        ],
    )
    table = flow.event_table(views)
    assert table["views"].tolist() == [4, 2]
    assert table["combine_views"].tolist() == [1, 0]
    assert table["mean probability"].tolist() == [0, 0]
    assert table["majority vote"].tolist() == [0, 0]
    assert table["first view"].tolist() == [1, 0]
    assert table["random view"].tolist() == [0.25, 0.5]
    scored = flow.score(views, bootstrap=200)
    accuracy = {k: v["value"] for k, v in scored["accuracy"].items()}
    assert accuracy["per view"] == pytest.approx(2 / 6)
    assert accuracy["combine_views"] == 0.5
    assert accuracy["random view"] == 0.375
    assert scored["detections"] == 7
    assert scored["detections_unmatched"] == 1
    assert scored["events"] == 2
    diff = scored["differences"]["combine_views - random view"]
    assert diff["value"] == pytest.approx(0.125)
    assert diff["ci95"][0] <= diff["value"] <= diff["ci95"][1]


def test_tracking_errors_are_counted():
    # Event 1 holds two true cells of different lines; true cell 7 is split in two.
    views = _views(
        [1, 1, 2, 3],
        [0, 1, 1, 1],
        [[0.9, 0.1]] * 4,
        tracks=[5, 6, 7, 7],
    )
    scored = flow.score(views, bootstrap=50)
    assert scored["events_impure"] == 1
    assert scored["events_mixed_lines"] == 1
    assert scored["true_cells_split"] == 1
    assert scored["true_cells_detected"] == 3


def test_the_whole_path_accounts_for_every_detection(monkeypatch):
    kept: list[int] = []
    process = FrameProcessor.process

    def counting(self, holograms, crop=None):
        found = process(self, holograms, crop)
        kept.append(len(found.cells))
        return found

    monkeypatch.setattr(FrameProcessor, "process", counting)
    model = ModelRuntime(REPO / "models" / "sw480-sw620", "cpu", threads=1)
    condition = flow.Condition("tiny", 2800.0, frames=8, cells_per_second=400.0)
    views = flow.simulate(model, ("sw480", "sw620"), condition.flow(), condition.frames, seed=1)
    scored = flow.score(views, bootstrap=100)

    assert views.frames == len(kept) > condition.frames, "the field emptied after the entries"
    assert scored["detections"] == sum(kept) == len(views.probabilities)
    matched = views.true_label >= 0
    assert scored["detections_unmatched"] == 0, "every detection is a simulated cell"
    assert scored["events"] == len(set(views.event[matched].tolist())) >= 2
    spread = scored["views_per_event"]
    assert spread["mean"] == pytest.approx(matched.sum() / scored["events"], abs=0.01)
    assert spread["max"] >= 2, "cells are seen in several frames"
    assert scored["true_cells_detected"] <= scored["true_cells_wholly_in_view"]
    for entry in scored["accuracy"].values():
        assert 0 <= entry["ci95"][0] <= entry["value"] <= entry["ci95"][1] <= 1
    per_view = np.mean(views.probabilities[matched].argmax(axis=1) == views.true_label[matched])
    assert scored["accuracy"]["per view"]["value"] == pytest.approx(per_view)
    combined = [
        np.argmax(combine_views(views.probabilities[matched & (views.event == e)]))
        == np.bincount(views.true_label[matched & (views.event == e)]).argmax()
        for e in dict.fromkeys(views.event[matched].tolist())
    ]
    assert scored["accuracy"]["combine_views"]["value"] == pytest.approx(np.mean(combined))


def _run(task: str, split: str, name: str, value: float) -> dict[str, Any]:
    return {"task": task, "split": split, "condition": {"name": name}, "score": value}


def test_merging_a_flow_into_earlier_results_keeps_the_others():
    previous: dict[str, Any] = {
        "meta": {"command": "python docs/evaluation/flow.py", "seconds": 60.0},
        "runs": [
            _run(task, split, name, 0.0)
            for task in ("sw480-sw620", "hs895")
            for split in ("dev", "eval")
            for name in ("fast", "slow")
        ]
        + [_run("hs895", "eval", "turning", -1.0)],
    }
    added = [_run("hs895", split, "turning", 1.0) for split in ("dev", "eval")]
    merged = flow.merge(previous, added, "python docs/evaluation/flow.py --conditions turning", 9)
    assert merged["meta"]["command"] == previous["meta"]["command"]
    assert merged["meta"]["added"] == [
        {
            "command": "python docs/evaluation/flow.py --conditions turning",
            "conditions": ["turning"],
            "tasks": ["hs895"],
            "python": merged["meta"]["added"][0]["python"],
            "seconds": 9,
        }
    ]
    assert [
        (r["task"], r["split"], r["condition"]["name"], r["score"]) for r in merged["runs"]
    ] == [
        ("sw480-sw620", "dev", "fast", 0.0),
        ("sw480-sw620", "dev", "slow", 0.0),
        ("sw480-sw620", "eval", "fast", 0.0),
        ("sw480-sw620", "eval", "slow", 0.0),
        ("hs895", "dev", "fast", 0.0),
        ("hs895", "dev", "slow", 0.0),
        ("hs895", "dev", "turning", 1.0),
        ("hs895", "eval", "fast", 0.0),
        ("hs895", "eval", "slow", 0.0),
        ("hs895", "eval", "turning", 1.0),  # replaced
    ]
    assert previous["runs"][-1]["score"] == -1.0, "the earlier results are not modified"
    assert "added" not in previous["meta"]


def test_the_turning_flow_is_the_slow_one_with_views_that_differ():
    conditions = {c.name: c for c in flow.CONDITIONS}
    slow, turning = conditions["slow"].flow(), conditions["turning"].flow()
    assert turning.flow_speed_um_s == slow.flow_speed_um_s
    assert turning.cells_per_second == slow.cells_per_second
    assert turning.rotation_deg_per_frame > 0
    assert turning.focus_drift_um > 0
    assert slow.rotation_deg_per_frame == slow.focus_drift_um == 0
    assert [c.name for c in flow.DEV_CONDITIONS] == list(conditions)
    # Results written before the turning flow existed have no such keys.
    old = {
        "name": "slow",
        "flow_speed_um_s": 900.0,
        "frame_rate_hz": 90.0,
        "cells_per_second": 80.0,
    }
    assert not flow.views_differ(old)
    assert flow.flow_label(old) == "slow: 900 um/s, 90 Hz, 80 cells/s"
    label = flow.flow_label(dataclasses.asdict(conditions["turning"]))
    assert flow.views_differ(dataclasses.asdict(conditions["turning"]))
    assert label == (
        "turning: 900 um/s, 90 Hz, 80 cells/s, turning up to 3 deg/frame, "
        "focus drifting +-2 um (period 60 frames)"
    )
