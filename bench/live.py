"""Live view cost: ``LiveView.frame`` (per camera frame) and the PNG renderings (per
displayed frame) for a 1024x1280 8-bit hologram of the simulated flow, its left-half
OPD map and segmentation, as the camera loop hands them over.

Prints the median of ``--repeats`` runs of each, on a new frame every time (a cached
rendering costs a dictionary lookup).

Usage: ``python -m bench.live [--repeats N]`` (as a module: bench/service.py would
shadow the service package)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from acquisition.backend import get_backend
from acquisition.frames import FrameProcessor
from acquisition.reconstruction import ReconstructionConfig
from acquisition.simulator.scene import FlowSimulator, SceneConfig
from service.live import LiveView


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    simulator = FlowSimulator(SceneConfig(shape=(1024, 1280)), ["sw480", "sw620"], seed=1)
    config = ReconstructionConfig(sample_half="left")
    processor = FrameProcessor(config, backend=get_backend("numpy"), reference=simulator.reference)
    frames = []
    for i in range(5):
        hologram = simulator.frame(i).hologram
        processed = processor.process(hologram)
        seg = processed.segmentations[0]
        opd_nm = processed.maps.opd_nm[0]
        frames.append((hologram, opd_nm, seg.labels, [c.label for c in seg.cells]))
    print(f"hologram {frames[0][0].shape}, OPD map {frames[0][1].shape}")

    view = LiveView(display_interval_s=0)
    times: dict[str, list[float]] = {"frame": [], "hologram_png": [], "opd_png": []}
    for i in range(args.repeats):
        hologram, opd_nm, labels, accepted = frames[i % len(frames)]
        start = time.perf_counter()
        view.frame(i, time.time(), hologram, opd_nm, labels, accepted, 8, "camera")
        times["frame"].append(time.perf_counter() - start)
        for name in ("hologram_png", "opd_png"):
            start = time.perf_counter()
            getattr(view, name)()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        unit, scale = ("us", 1e6) if name == "frame" else ("ms", 1e3)
        print(f"{name:>13}: median {statistics.median(values) * scale:7.2f} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
