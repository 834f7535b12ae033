"""Cells in flow: accuracy per event (each cell counted once, from all its views)
against accuracy per view, with the bundled classifiers on simulated continuous flow.

For each task (SW480/SW620 with ``models/sw480-sw620``, Hs 895.Sk/Hs 895.T with
``models/hs895``) and each flow speed, one continuous flow carries both lines mixed
(each entering cell drawn at random from the two, :class:`ContinuousFlow`); every
frame goes through the service's path: :class:`FrameProcessor` (the segmentation the
simulator's datasets use for these lines, the model's crop geometry), the bundled
model in ONNX Runtime (CPU, one thread) on every kept cell, and :class:`Tracker`
(flow direction "auto", the service's default) linking the detections into events.
Each detection is matched to the nearest true cell of its frame (the simulator's
ground truth), so every view has a true line and a true track; an event's true line
is the majority true line of its views (ties: its first view's).

Reported per task, speed and seed: accuracy per view (every detection counts once);
per event, with :func:`models.views.combine_views` (the service's rule, mean of
log-probabilities, chosen a priori), the mean of the probabilities, the majority
vote of the view labels (ties broken by the mean of the probabilities), the first
view alone and a random view alone (its expectation: the event's fraction of correct
views); the differences between them, with 95 % bootstrap intervals over events
(the views of one cell are not independent, so per-view accuracy is resampled by
event too); how many views per event; and how often tracking merged or split cells.

Seeds: the bundled models were trained on crops simulated with seeds 2 (SW480/SW620)
and 4 (Hs 895), the GAN on seed 1 and the evaluation's dev datasets used 12 and 14;
the flows here use seed 20 (dev: the only place rules may be compared to choose one)
and seed 30 (evaluation). No choice was made on seed 30.

Views that differ: in the fast and slow flows a cell's views differ only by noise and
position; the turning flow (the slow one, with cells turning and the focus drifting,
:func:`turning`) makes them differ as real ones do. Its drift was checked on the dev
seed only (``flow_focus_check.py``).

Usage (about 20 minutes on one core; the turning flow alone, merged into the results
already in ``--out``, about 11)::

    OMP_NUM_THREADS=1 python docs/evaluation/flow.py --out docs/evaluation/flow
    OMP_NUM_THREADS=1 python docs/evaluation/flow.py --out docs/evaluation/flow --conditions turning
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.backend import get_backend
from acquisition.frames import CropGeometry, FrameProcessor
from acquisition.reconstruction import ReconstructionConfig
from acquisition.simulator.datasets import segmentation_for
from acquisition.simulator.flow import ContinuousFlow, FlowConfig
from acquisition.simulator.scene import FlowSimulator, SceneConfig
from acquisition.tracking import Tracker, TrackerConfig
from models.runtime import ModelRuntime
from models.views import combine_views

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    lines: tuple[str, str]
    model: str  # the model directory, relative to the repository


TASKS = (
    Task(
        "sw480-sw620",
        "SW480 (primary) vs SW620 (metastatic)",
        ("sw480", "sw620"),
        "models/sw480-sw620",
    ),
    Task(
        "hs895",
        "Hs 895.Sk (healthy skin) vs Hs 895.T (melanoma)",
        ("hs895-sk", "hs895-t"),
        "models/hs895",
    ),
)


@dataclass(frozen=True)
class Condition:
    """One flow setting and how long cells keep entering it."""

    name: str
    flow_speed_um_s: float
    frames: int  # frames during which cells enter; then the field is left to empty
    frame_rate_hz: float = 90.0
    cells_per_second: float = 80.0
    # Views that differ: cells turning (each at a rate drawn within plus or minus
    # this), and the focus drifting sinusoidally (amplitude, period); see FlowConfig.
    rotation_deg_per_frame: float = 0.0
    focus_drift_um: float = 0.0
    focus_period_frames: float = 300.0

    def flow(self) -> FlowConfig:
        return FlowConfig(
            flow_speed_um_s=self.flow_speed_um_s,
            frame_rate_hz=self.frame_rate_hz,
            cells_per_second=self.cells_per_second,
            rotation_deg_per_frame=self.rotation_deg_per_frame,
            focus_drift_um=self.focus_drift_um,
            focus_period_frames=self.focus_period_frames,
        )


DEV_SEED, EVAL_SEED = 20, 30


#: Views that differ as real ones do: the slow flow, with cells turning by up to
#: 3 deg a frame and the focus drifting by up to 2 um either side, period 60 frames
#: (0.67 s at 90 Hz; a cell's ~14 views span a quarter of it). Checked on the dev seed
#: only (flow_focus_check.py): visibly out of focus, and segmentation misses no cell.
def turning(frames: int) -> Condition:
    """The slow flow with views that differ (``frames`` entry frames)."""
    return Condition(
        "turning",
        900.0,
        frames,
        rotation_deg_per_frame=3.0,
        focus_drift_um=2.0,
        focus_period_frames=60.0,
    )


#: Evaluation: a few hundred events per task and speed (the turning flow, slower to
#: render, fewer).
CONDITIONS = (Condition("fast", 2800.0, 900), Condition("slow", 900.0, 2000), turning(1200))
#: Dev: the same flows, fewer frames.
DEV_CONDITIONS = (Condition("fast", 2800.0, 300), Condition("slow", 900.0, 500), turning(400))
#: The per-event rules, in report order; "per view" is not a rule but the baseline.
RULES = ("combine_views", "mean probability", "majority vote", "first view", "random view")
BOOTSTRAP = 2000
#: A detection farther than this from every true cell of its frame is not a cell.
MATCH_UM = 3.0


@dataclass
class FlowViews:
    """Every detection of one flow, in frame order, with its truth.

    ``frame``, ``event`` (the tracker's id), ``true_track`` and ``true_label`` (index
    in ``classes``, -1 for a detection matched to no cell), ``distance_px`` to the
    matched true cell and ``probabilities`` (n, classes); ``true_views`` holds, per true
    track, its line's index and the frames it was wholly in the field.
    """

    classes: list[str]
    frame: np.ndarray
    event: np.ndarray
    true_track: np.ndarray
    true_label: np.ndarray
    distance_px: np.ndarray
    probabilities: np.ndarray
    true_views: dict[int, tuple[int, int]] = field(default_factory=dict)
    frames: int = 0
    entry_frames: int = 0
    views_per_cell: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0

    @property
    def detections(self) -> int:
        return len(self.frame)


def simulate(
    model: ModelRuntime,
    lines: Sequence[str],
    flow_config: FlowConfig,
    frames: int,
    seed: int,
    scene: SceneConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> FlowViews:
    """Run ``frames`` frames of a flow of ``lines`` (cells entering), then let the field
    empty (no new cells) so that every event is complete; every frame through the
    frame processor, the model and the tracker."""
    scene = scene or SceneConfig()
    classes = list(model.manifest.classes)
    if sorted(classes) != sorted(lines):
        raise ValueError(f"the model's classes {classes} are not the lines {list(lines)}")
    simulator = FlowSimulator(scene, list(lines), seed=seed)
    flow = ContinuousFlow(simulator, flow_config, seed=seed)
    optics = scene.optics
    crop = CropGeometry(model.crop_shape[0], model.manifest.pixel_size_um)
    segmentations = {segmentation_for(line, crop.size_px, crop.pixel_size_um) for line in lines}
    if len(segmentations) != 1:
        raise ValueError(f"the lines {list(lines)} are segmented differently")
    processor = FrameProcessor(
        ReconstructionConfig(
            wavelength_nm=optics.wavelength_nm,
            pixel_size_um=optics.pixel_size_um,
            sample_half=scene.sample_half,
        ),
        segmentations.pop(),
        get_backend("numpy", 1),
        simulator.reference,
    )
    tracker = Tracker(TrackerConfig(pixel_size_um=optics.pixel_size_um, flow_direction="auto"))
    rows: list[tuple[int, int, int, int, float]] = []
    probabilities: list[np.ndarray] = []
    true_views: dict[int, tuple[int, int]] = {}
    t0 = time.perf_counter()
    index = 0
    while True:
        if index == frames:  # no more cells enter: the flow empties the field
            flow.config = dataclasses.replace(flow_config, cells_per_second=0.0)
        frame = flow.frame()
        if index >= frames and not frame.objects:
            break
        for o in frame.objects:
            label, seen = true_views.get(o.track, (classes.index(o.line), 0))
            true_views[o.track] = (label, seen + (not o.clipped))
        found = processor.process(frame.hologram, crop)
        cells = found.cells
        positions = [cell.position_px for cell in cells]
        update = tracker.update(index, positions)
        if cells:
            probabilities.append(model.predict(found.crops()))
        for event, position in zip(update.ids, positions, strict=True):
            truth = min(
                frame.objects, key=lambda o: math.dist((o.y_px, o.x_px), position), default=None
            )
            if truth is None:
                rows.append((index, event, -1, -1, math.inf))
                continue
            distance = math.dist((truth.y_px, truth.x_px), position)
            matched = distance <= MATCH_UM / optics.pixel_size_um
            label = classes.index(truth.line) if matched else -1
            rows.append((index, event, truth.track if matched else -1, label, distance))
        index += 1
        if progress:
            progress(index)
    tracker.close()
    table = np.array(rows, dtype=float).reshape(-1, 5)
    return FlowViews(
        classes=classes,
        frame=table[:, 0].astype(int),
        event=table[:, 1].astype(int),
        true_track=table[:, 2].astype(int),
        true_label=table[:, 3].astype(int),
        distance_px=table[:, 4],
        probabilities=(
            np.concatenate(probabilities) if probabilities else np.zeros((0, len(classes)))
        ),
        true_views=true_views,
        frames=index,
        entry_frames=frames,
        views_per_cell=flow.views_per_cell,
        seconds=time.perf_counter() - t0,
    )


def _majority(values: np.ndarray) -> int:
    """The most common value; ties go to the one seen first."""
    counts = Counter(values.tolist())
    best = max(counts.values())
    return int(next(v for v in values.tolist() if counts[v] == best))


def event_table(views: FlowViews) -> dict[str, np.ndarray]:
    """One row per event (in order of first view): its views, true line, each rule's
    correctness (the random view's: the fraction of correct views) and its tracking."""
    keep = views.true_label >= 0  # detections of real cells only
    events = list(dict.fromkeys(views.event[keep].tolist()))
    out: dict[str, list[float]] = {
        k: []
        for k in (
            "views",
            "correct_views",
            "label",
            "pure",
            "mixed_lines",
            "true_track",
            "p_mean",
            "p_sd",
            *RULES,
        )
    }
    for event in events:
        member = keep & (views.event == event)
        p = views.probabilities[member]
        true = _majority(views.true_label[member])
        predicted = p.argmax(axis=1)
        mean = p.mean(axis=0)
        votes = np.bincount(predicted, minlength=p.shape[1])
        tied = np.flatnonzero(votes == votes.max())
        vote = int(tied[np.argmax(mean[tied])])
        correct = predicted == true
        out["views"].append(len(p))
        out["correct_views"].append(int(correct.sum()))
        out["label"].append(true)
        out["true_track"].append(_majority(views.true_track[member]))
        out["pure"].append(len(set(views.true_track[member].tolist())) == 1)
        out["mixed_lines"].append(len(set(views.true_label[member].tolist())) > 1)
        out["p_mean"].append(float(mean[-1]))
        out["p_sd"].append(float(p[:, -1].std()))
        out["combine_views"].append(int(np.argmax(combine_views(p))) == true)
        out["mean probability"].append(int(np.argmax(mean)) == true)
        out["majority vote"].append(vote == true)
        out["first view"].append(bool(correct[0]))
        out["random view"].append(float(correct.mean()))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def _interval(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def score(views: FlowViews, seed: int = 0, bootstrap: int = BOOTSTRAP) -> dict[str, Any]:
    """Accuracies per view and per event, their differences, 95 % bootstrap intervals
    over events, views per event and the tracking's errors."""
    table = event_table(views)
    n = len(table["views"])
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, n, size=(bootstrap, n)) if n else np.zeros((bootstrap, 0), int)

    def per_view(idx: np.ndarray | slice) -> Any:
        return table["correct_views"][idx].sum(axis=-1) / table["views"][idx].sum(axis=-1)

    values = {"per view": per_view(slice(None))} | {r: table[r].mean() for r in RULES}
    samples = {"per view": per_view(resamples)} | {r: table[r][resamples].mean(1) for r in RULES}
    accuracy = {
        k: {"value": float(values[k]), "ci95": _interval(samples[k])} if n else None
        for k in ("per view", *RULES)
    }
    differences = {
        f"combine_views - {k}": {
            "value": float(values["combine_views"] - values[k]),
            "ci95": _interval(samples["combine_views"] - samples[k]),
        }
        if n
        else None
        for k in ("per view", *RULES[1:])
    }
    real = views.true_label >= 0
    detected_tracks = set(views.true_track[real].tolist())
    events_of = Counter(table["true_track"].astype(int).tolist())
    complete_views = [seen for _, seen in views.true_views.values() if seen]
    agree = (table["correct_views"] == 0) | (table["correct_views"] == table["views"])
    return {
        "frames": views.frames,
        "entry_frames": views.entry_frames,
        "seconds": round(views.seconds, 1),
        "views_per_cell_model": [round(v, 2) for v in views.views_per_cell],
        "true_cells": len(views.true_views),
        "true_cells_wholly_in_view": len(complete_views),
        "true_views_per_cell": _spread(np.asarray(complete_views, dtype=float)),
        "detections": views.detections,
        "detections_unmatched": int((~real).sum()),
        "true_cells_detected": len(detected_tracks),
        "events": n,
        "views_per_event": _spread(table["views"]),
        "events_impure": int((table["pure"] == 0).sum()),
        "events_impure_wrong": int(((table["pure"] == 0) & (table["combine_views"] == 0)).sum()),
        "events_mixed_lines": int(table["mixed_lines"].sum()),
        "true_cells_split": sum(c > 1 for c in events_of.values()),
        "events_views_disagree": int((~agree).sum()),
        # How much a cell's views differ for the model, against how much cells differ:
        # the sd of the last class's probability over an event's views (mean over
        # events of 2+ views), and the sd of the events' mean probabilities.
        "probability_sd_within_events": _mean(table["p_sd"][table["views"] > 1]),
        "probability_sd_between_events": _round(table["p_mean"].std() if n else math.nan),
        "accuracy": accuracy,
        "differences": differences,
    }


def _round(value: Any) -> float:
    return round(float(value), 4)


def _mean(values: np.ndarray) -> float:
    return _round(values.mean()) if len(values) else math.nan


def _spread(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"mean": math.nan, "min": math.nan, "max": math.nan}
    return {
        "mean": round(float(values.mean()), 2),
        "min": float(values.min()),
        "max": float(values.max()),
    }


# --- the report ---------------------------------------------------------------------


def _pct(entry: dict[str, Any] | None, signed: bool = False) -> str:
    if entry is None:
        return "-"
    lo, hi = (100 * v for v in entry["ci95"])
    value = f"{100 * entry['value']:+.1f}" if signed else f"{100 * entry['value']:.1f}"
    return f"{value} [{lo:.1f}, {hi:.1f}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def flow_label(condition: dict[str, Any]) -> str:
    label = (
        f"{condition['name']}: {condition['flow_speed_um_s']:g} um/s, "
        f"{condition['frame_rate_hz']:g} Hz, {condition['cells_per_second']:g} cells/s"
    )
    if condition.get("rotation_deg_per_frame"):
        label += f", turning up to {condition['rotation_deg_per_frame']:g} deg/frame"
    if condition.get("focus_drift_um"):
        label += (
            f", focus drifting +-{condition['focus_drift_um']:g} um "
            f"(period {condition['focus_period_frames']:g} frames)"
        )
    return label


def views_differ(condition: dict[str, Any]) -> bool:
    """Do a cell's views differ by more than noise and position (turning, defocus)?"""
    return bool(condition.get("rotation_deg_per_frame") or condition.get("focus_drift_um"))


def accuracy_table(runs: list[dict[str, Any]]) -> list[str]:
    """Accuracy (%) per view and per event of each run, with 95 % intervals."""
    header = ["flow", "events", "views/event", "per view", *RULES]
    rows = []
    for run in runs:
        s, v = run["score"], run["score"]["views_per_event"]
        rows.append(
            [
                flow_label(run["condition"]),
                str(s["events"]),
                f"{v['mean']:.1f} [{v['min']:.0f}, {v['max']:.0f}]",
                *(_pct(s["accuracy"][k]) for k in ("per view", *RULES)),
            ]
        )
    return table(header, rows)


def difference_table(runs: list[dict[str, Any]]) -> list[str]:
    """combine_views minus each alternative, points, paired over events."""
    keys = list(runs[0]["score"]["differences"]) if runs else []
    header = ["flow", *(k.replace("combine_views - ", "minus ") for k in keys)]
    rows = [
        [flow_label(r["condition"]), *(_pct(r["score"]["differences"][k], True) for k in keys)]
        for r in runs
    ]
    return table(header, rows)


def tracking_table(runs: list[dict[str, Any]]) -> list[str]:
    header = [
        "flow",
        "frames",
        "true cells (wholly in view, detected)",
        "frames in view per cell",
        "detections (unmatched)",
        "events",
        "impure events (mixed lines, wrong)",
        "cells split",
        "events whose views disagree",
        "probability sd within / between events",
    ]
    rows = []
    for r in runs:
        s = r["score"]
        t = s["true_views_per_cell"]
        rows.append(
            [
                flow_label(r["condition"]),
                str(s["frames"]),
                f"{s['true_cells']} ({s['true_cells_wholly_in_view']}, {s['true_cells_detected']})",
                f"{t['mean']:.1f} [{t['min']:.0f}, {t['max']:.0f}]",
                f"{s['detections']} ({s['detections_unmatched']})",
                str(s["events"]),
                f"{s['events_impure']} ({s['events_mixed_lines']}, {s['events_impure_wrong']})",
                str(s["true_cells_split"]),
                str(s["events_views_disagree"]),
                f"{s['probability_sd_within_events']:.3f} / "
                f"{s['probability_sd_between_events']:.3f}",
            ]
        )
    return table(header, rows)


def verdict(run: dict[str, Any]) -> str:
    """A plain sentence: does combine_views beat one view of each cell?"""
    d = run["score"]["differences"]["combine_views - random view"]
    lo, hi = (100 * v for v in d["ci95"])
    if lo > 0:
        word = "helps"
    elif hi < 0:
        word = "hurts"
    else:
        word = "makes no difference the data can resolve"
    return (
        f"{run['task_title']}, {run['condition']['name']} flow: combining the views "
        f"{word} ({100 * d['value']:+.1f} points against one random view of each cell, "
        f"95 % interval [{lo:+.1f}, {hi:+.1f}])"
    )


def contrast(run: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """A flow whose views differ against the still flow of the same speed: how much
    more its views differ, and what combining gains over one view in each."""
    speed = run["condition"]["flow_speed_um_s"]
    twin = next(
        r
        for r in runs
        if not views_differ(r["condition"]) and r["condition"]["flow_speed_um_s"] == speed
    )
    s, t = run["score"], twin["score"]

    def gain(score: dict[str, Any]) -> float:
        return 100 * score["differences"]["combine_views - random view"]["value"]

    return (
        f"The {run['condition']['name']} flow against the {twin['condition']['name']} one: "
        f"the probability's sd over a cell's views {s['probability_sd_within_events']:.3f} "
        f"against {t['probability_sd_within_events']:.3f} (between cells "
        f"{s['probability_sd_between_events']:.3f} against "
        f"{t['probability_sd_between_events']:.3f}); events whose views disagree "
        f"{100 * s['events_views_disagree'] / s['events']:.1f} % against "
        f"{100 * t['events_views_disagree'] / t['events']:.1f} %; per view "
        f"{100 * s['accuracy']['per view']['value']:.1f} % against "
        f"{100 * t['accuracy']['per view']['value']:.1f} %; combine_views minus random "
        f"view {gain(s):+.1f} against {gain(t):+.1f} points"
    )


def written_by(meta: dict[str, Any]) -> str:
    """The commands that wrote the results, and how long each took."""
    text = f"`{meta['command']}` ({meta['seconds'] / 60:.1f} min on one core)"
    for added in meta.get("added", []):
        text += (
            f"; the {', '.join(added['conditions'])} flow's runs by `{added['command']}` "
            f"({added['seconds'] / 60:.1f} min)"
        )
    return text


def model_name(run: dict[str, Any]) -> str:
    """A run's model as the report names it: its method, precision and version."""
    return f"{run['model_method']}, {run['model_precision']}, version {run['model_version']}"


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Cells in flow: accuracy per event against per view",
        "",
        f"Written by {written_by(meta)}. "
        "Simulated data (docs/simulator.md), not measurements. Each task is one "
        "continuous flow per speed carrying both lines mixed (each entering cell drawn "
        "at random from the two); every frame goes through FrameProcessor (the "
        "simulator's segmentation for these lines, the model's 128 px crops at "
        "0.25 um), the task's bundled model (ONNX Runtime, CPU; its method and "
        "version with each table) on every kept cell, "
        "and the Tracker (flow direction auto). After the entry frames no cell "
        "enters and the field empties, so every event is complete. Each detection is "
        "matched to the nearest true cell of its frame; an event's true line is the "
        "majority true line of its views.",
        "",
        "Rules per event: combine_views is the service's (mean of log-probabilities, "
        "chosen a priori); mean probability and majority vote (ties broken by the mean "
        "probability) are the obvious alternatives; first view and random view classify "
        "each cell once from one view (random view: the expectation over the choice, "
        "the event's fraction of correct views). Per view: every detection counts once. "
        "Accuracy in %, with 95 % bootstrap intervals over events "
        f"({BOOTSTRAP} resamples; per-view accuracy resampled by event too, since "
        "one cell's views are not independent).",
        "",
        f"Seeds: the models were trained on crops of seeds 2 (SW480/SW620) and 4 (Hs "
        f"895); the flows use seed {meta['dev_seed']} (dev) and {meta['eval_seed']} "
        "(evaluation). The rule was fixed before either ran; nothing was chosen on "
        "the evaluation seed.",
        "",
    ]
    if any(views_differ(r["condition"]) for r in results["runs"]):
        lines += [
            "Views that differ: in the fast and slow flows a cell keeps its shape, "
            "orientation and focus across the field, so its views differ only by noise "
            "and position. In the turning flow (the slow flow otherwise) each cell turns "
            "at a rate drawn uniformly within the given bound, and the focus drifts "
            "sinusoidally (angular-spectrum defocus of the sample plane; the "
            "reconstruction does not refocus). The drift was set on the dev seed only, "
            "before the evaluation ran (`docs/evaluation/flow_focus_check.py`, "
            "focus-check.md): of +-1, 2 and 3 um, the largest at which the views are "
            "visibly out of focus and segmentation still found every cell wholly in "
            "view; 3 deg/frame and 60 frames are the brief's values (over a cell's ~14 "
            "views it turns by up to ~40 deg and the focus moves through a quarter of "
            "the period). It has fewer entry frames than the slow flow (rendering is "
            "slower), so fewer events.",
            "",
        ]
    for split, title in (("eval", "Evaluation"), ("dev", "Dev")):
        seed = meta[f"{split}_seed"]
        lines += [f"## {title} (seed {seed})", ""]
        for task in TASKS:
            runs = [r for r in results["runs"] if r["task"] == task.name and r["split"] == split]
            if not runs:
                continue
            lines += [
                f"### {task.title}",
                "",
                f"Model `{task.model}` ({model_name(runs[0])}). Accuracy (%):",
                "",
                *accuracy_table(runs),
                "",
                "combine_views minus each alternative (points, paired over events):",
                "",
                *difference_table(runs),
                "",
                "Counts and tracking:",
                "",
                *tracking_table(runs),
                "",
            ]
            if split == "eval":
                lines += [f"- {verdict(r)}." for r in runs]
                lines += [f"- {contrast(r, runs)}." for r in runs if views_differ(r["condition"])]
                lines += [""]
    lines += [
        "## Columns",
        "",
        "- frames: camera frames of the run (entry frames, then the emptying); true "
        "cells: cells that entered, how many were wholly in the field in at least "
        "one frame, and how many were detected; frames in view per cell: frames "
        "each of those was wholly in the field (what the flow offers; the model's range for the fastest and slowest "
        "lanes is in results.json).",
        "- detections (unmatched): kept cells, and those farther than "
        f"{MATCH_UM:g} um from every true cell (left out of the scores).",
        "- impure events: events holding views of more than one true cell (mixed "
        "lines: of both lines, where a tracking error can change the label; wrong: "
        "misclassified by combine_views); cells "
        "split: true cells that are the majority of more than one event (counted twice).",
        "- events whose views disagree: events with some views right and some wrong; "
        "only there can the rule matter.",
        "- probability sd: the standard deviation of the model's probability of the "
        "second class over an event's views (mean over events of two or more views), "
        "and of the events' mean probabilities: how much one cell's views differ for "
        "the model, against how much cells differ.",
        "",
    ]
    return "\n".join(lines)


def _relative(path: Path) -> str:
    """A path as the command's record gives it: relative to the repository."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return path.name


def _order(run: dict[str, Any]) -> tuple[int, int, int]:
    """Report order: task, then dev before eval, then flow."""
    tasks = [t.name for t in TASKS]
    flows = [c.name for c in CONDITIONS]
    name = run["condition"]["name"]
    return (
        tasks.index(run["task"]) if run["task"] in tasks else len(tasks),
        ("dev", "eval").index(run["split"]),
        flows.index(name) if name in flows else len(flows),
    )


def merge(
    previous: dict[str, Any], runs: list[dict[str, Any]], command: str, seconds: float
) -> dict[str, Any]:
    """``previous`` results with ``runs`` added: a run of the same task, split and flow
    is replaced, every other kept as it was; the command is recorded under "added"."""

    def key(run: dict[str, Any]) -> tuple[str, str, str]:
        return run["task"], run["split"], run["condition"]["name"]

    new = {key(r) for r in runs}
    kept = [r for r in previous["runs"] if key(r) not in new]
    meta = dict(previous["meta"])
    meta["added"] = [
        *meta.get("added", []),
        {
            "command": command,
            "conditions": list(dict.fromkeys(r["condition"]["name"] for r in runs)),
            "tasks": list(dict.fromkeys(r["task"] for r in runs)),
            "python": platform.python_version(),
            "seconds": seconds,
        },
    ]
    return {"meta": meta, "runs": sorted([*kept, *runs], key=_order)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "flow")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every run's entry frames (trials)"
    )
    parser.add_argument("--tasks", default=",".join(t.name for t in TASKS))
    parser.add_argument(
        "--conditions",
        help="run only these flows (comma-separated names, e.g. turning) and merge their "
        "runs into the results already in --out, replacing those of the same task, split "
        "and flow; the other runs are kept as they are",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write report.md again from the results.json in --out",
    )
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((args.out / "results.json").read_text())
        (args.out / "report.md").write_text(report(results))
        return
    names = [c.name for c in CONDITIONS]
    chosen = args.conditions.split(",") if args.conditions else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown conditions {unknown}; known: {names}")
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for task in (t for t in TASKS if t.name in args.tasks.split(",")):
        model = ModelRuntime(REPO / task.model, "cpu", threads=1)
        for split, seed, conditions in (
            ("dev", DEV_SEED, DEV_CONDITIONS),
            ("eval", EVAL_SEED, CONDITIONS),
        ):
            for condition in (c for c in conditions if c.name in chosen):
                frames = max(1, round(condition.frames * args.scale))
                views = simulate(model, task.lines, condition.flow(), frames, seed)
                scored = score(views, seed=seed)
                print(
                    f"{task.name} {split} {condition.name}: {scored['events']} events, "
                    f"{views.frames} frames, {views.seconds:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(
                    {
                        "task": task.name,
                        "task_title": task.title,
                        "model": task.model,
                        "model_version": model.manifest.version,
                        "model_method": model.manifest.method,
                        "model_precision": model.manifest.metrics.get("precision", "fp32"),
                        "split": split,
                        "seed": seed,
                        "condition": dataclasses.asdict(condition) | {"frames": frames},
                        "score": scored,
                    }
                )
    argv = [a if not Path(a).is_absolute() else _relative(Path(a)) for a in sys.argv[1:]]
    command = " ".join(["python docs/evaluation/flow.py", *argv])
    seconds = round(time.perf_counter() - started, 1)
    previous = args.out / "results.json"
    if args.conditions and previous.exists():
        results = merge(json.loads(previous.read_text()), runs, command, seconds)
    else:
        results = {
            "meta": {
                "command": command,
                "dev_seed": DEV_SEED,
                "eval_seed": EVAL_SEED,
                "bootstrap": BOOTSTRAP,
                "scene": "SceneConfig() defaults (1024x1280, 0.12 um pixels)",
                "tracker": "TrackerConfig(pixel_size_um=0.12, flow_direction='auto')",
                "python": platform.python_version(),
                "seconds": seconds,
            },
            "runs": runs,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "report.md").write_text(report(results))


if __name__ == "__main__":
    main()
