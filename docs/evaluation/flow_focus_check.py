"""How far may the focus drift in the flow evaluation's turning condition? A check on
the dev seed only, before the evaluation ran.

For each task and each focus drift (cells turning by up to 3 deg a frame, period 60
frames, the slow flow of ``flow.py``), a short flow through the frame processor and
the model: how many of the true cells wholly in view each frame are detected (over
every frame after the field has filled, and over the frames at least 80 % of the way
to the drift's extreme), unmatched detections, and the spread of the model's
probability over a cell's views; and a strip of one cell's crops across its views
(``focus-check.png``) to see that the views are out of focus. Writes
``flow/focus-check.md``.

Usage (about 5 minutes on one core)::

    OMP_NUM_THREADS=1 python docs/evaluation/flow_focus_check.py
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from acquisition.backend import get_backend
from acquisition.frames import CropGeometry, FrameProcessor
from acquisition.reconstruction import ReconstructionConfig
from acquisition.simulator.datasets import segmentation_for
from acquisition.simulator.flow import ContinuousFlow
from acquisition.simulator.scene import FlowSimulator, SceneConfig
from docs.evaluation.flow import DEV_SEED, MATCH_UM, REPO, TASKS, Task, table, turning
from models.runtime import ModelRuntime

DRIFTS_UM = (1.0, 2.0, 3.0)
FRAMES, WARM_UP = 150, 60  # the slowest lane crosses the field in ~56 frames


def check(task: Task, drift_um: float, frames: int = FRAMES) -> dict:
    model = ModelRuntime(REPO / task.model, "cpu", threads=1)
    scene = SceneConfig()
    simulator = FlowSimulator(scene, list(task.lines), seed=DEV_SEED)
    config = dataclasses.replace(turning(frames).flow(), focus_drift_um=drift_um)
    flow = ContinuousFlow(simulator, config, seed=DEV_SEED)
    crop = CropGeometry(model.crop_shape[0], model.manifest.pixel_size_um)
    processor = FrameProcessor(
        ReconstructionConfig(
            wavelength_nm=scene.optics.wavelength_nm,
            pixel_size_um=scene.optics.pixel_size_um,
            sample_half=scene.sample_half,
        ),
        segmentation_for(task.lines[0], crop.size_px, crop.pixel_size_um),
        get_backend("numpy", 1),
        simulator.reference,
    )
    pixel = scene.optics.pixel_size_um
    rows = []  # defocus, wholly in view, of those detected, detections, unmatched
    views: dict[int, list[tuple[float, np.ndarray, float]]] = {}
    t0 = time.perf_counter()
    for index in range(frames):
        frame = flow.frame()
        found = processor.process(frame.hologram, crop)
        crops = found.crops() if found.cells else np.zeros((0, *crop.shape))
        p = model.predict(crops) if found.cells else np.zeros((0, 2))
        hit, unmatched = set(), 0
        for k, cell in enumerate(found.cells):
            o = min(
                frame.objects,
                key=lambda o: math.dist((o.y_px, o.x_px), cell.position_px),
                default=None,
            )
            if o is None or math.dist((o.y_px, o.x_px), cell.position_px) > MATCH_UM / pixel:
                unmatched += 1
                continue
            hit.add(o.track)
            views.setdefault(o.track, []).append((frame.defocus_um, crops[k], float(p[k, -1])))
        whole = {o.track for o in frame.objects if not o.clipped}
        if index >= WARM_UP:
            rows.append(
                (frame.defocus_um, len(whole), len(whole & hit), len(found.cells), unmatched)
            )
    r = np.array(rows, dtype=float)
    extreme = r[np.abs(r[:, 0]) >= 0.8 * drift_um]
    sd = [np.std([v[2] for v in vs]) for vs in views.values() if len(vs) > 1]
    longest = max(views.values(), key=len)
    return {
        "task": task.name,
        "drift_um": drift_um,
        "seconds_per_frame": (time.perf_counter() - t0) / frames,
        "detected": r[:, 2].sum() / r[:, 1].sum(),
        "detected_extreme": extreme[:, 2].sum() / extreme[:, 1].sum(),
        "frames_extreme": len(extreme),
        "detections": int(r[:, 3].sum()),
        "unmatched": int(r[:, 4].sum()),
        "sd_within": float(np.mean(sd)),
        "strip": longest,
    }


def strip_figure(checks: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 8
    fig, axes = plt.subplots(len(checks), columns, figsize=(2 * columns, 2.2 * len(checks)))
    for row, c in zip(np.atleast_2d(axes), checks, strict=True):
        strip = c["strip"]
        for ax, k in zip(row, np.linspace(0, len(strip) - 1, columns).astype(int), strict=True):
            defocus, image, p = strip[k]
            ax.imshow(np.squeeze(image), cmap="gray")
            ax.set_title(
                f"{c['task']} +-{c['drift_um']:g} um: z {defocus:+.2f}, p {p:.2f}", fontsize=7
            )
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "flow")
    parser.add_argument("--frames", type=int, default=FRAMES)
    args = parser.parse_args()
    checks = [check(t, d, args.frames) for t in TASKS for d in DRIFTS_UM]
    rows = [
        [
            c["task"],
            f"+-{c['drift_um']:g}",
            f"{100 * c['detected']:.1f}",
            f"{100 * c['detected_extreme']:.1f} ({c['frames_extreme']})",
            f"{c['detections']} ({c['unmatched']})",
            f"{c['sd_within']:.3f}",
            f"{c['seconds_per_frame']:.2f}",
        ]
        for c in checks
    ]
    lines = [
        "# The turning condition's focus drift: a check on the dev seed",
        "",
        "Written by `python docs/evaluation/flow_focus_check.py`. Dev seed "
        f"{DEV_SEED} only; the slow flow (900 um/s, 90 Hz, 80 cells/s), cells turning by "
        f"up to 3 deg a frame, focus period 60 frames, {args.frames} frames of which the "
        f"first {WARM_UP} (the field filling) are not counted. Cells detected: of the true "
        "cells wholly in view in a frame, the share that a detection within "
        f"{MATCH_UM:g} um found, over all counted frames and over those at least 80 % of the "
        "way to the drift's extreme (how many such frames). Probability sd: over a "
        "cell's views, mean over cells (the still slow flow's, in report.md: 0.004-0.005).",
        "",
        *table(
            [
                "task",
                "focus drift (um)",
                "cells detected (%)",
                "at the extremes (%, frames)",
                "detections (unmatched)",
                "probability sd within a cell",
                "s/frame",
            ],
            rows,
        ),
        "",
        "![one cell's crops across its views, per drift](focus-check.png)",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    strip_figure([c for c in checks if c["task"] == TASKS[0].name], args.out / "focus-check.png")
    (args.out / "focus-check.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
