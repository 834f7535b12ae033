"""Simulator speed: crops per second through the full path and the direct path.

Full path: phantom -> flipping-interferometer hologram (1024x1280, 8-bit) ->
reconstruction -> segmentation -> crop; direct path: phantoms rendered straight
at the crop pixel size. Also the time per hologram frame and its parts.

Usage: ``python bench/simulate.py [--count N]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from acquisition.backend import cpu_count, get_backend
from acquisition.frames import FrameProcessor
from acquisition.reconstruction import ReconstructionConfig
from acquisition.simulator.datasets import simulate_direct, simulate_full
from acquisition.simulator.scene import FlowSimulator, SceneConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100, help="crops per line and path")
    args = parser.parse_args()
    backend = get_backend("numpy")
    print(f"# simulator benchmark: {cpu_count()} cores, {args.count} crops per line")
    print("| line(s) | full path | direct path | direct / full |")
    print("|---|---|---|---|")
    for lines in (["sw480", "sw620"], ["hs895-sk", "hs895-t"], ["sperm"]):
        n = args.count * len(lines)
        t0 = time.perf_counter()
        simulate_full(lines, args.count, seed=0, backend=backend)
        full = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        simulate_direct(lines, args.count, seed=0)
        direct = n / (time.perf_counter() - t0)
        label = ",".join(lines)
        print(f"| {label} | {full:.1f} crops/s | {direct:.1f} crops/s | {direct / full:.1f}x |")
        sys.stdout.flush()

    scene = SceneConfig()
    sim = FlowSimulator(scene, ["sw480"], seed=0)
    processor = FrameProcessor(
        ReconstructionConfig(sample_half="left"), backend=backend, reference=sim.reference
    )
    parts: dict[str, list[float]] = {"simulate frame": [], "reconstruct": [], "segment + crop": []}
    for i in range(20):
        t0 = time.perf_counter()
        frame = sim.frame(i)
        t1 = time.perf_counter()
        processed = processor.process(frame.hologram)
        parts["simulate frame"].append(t1 - t0)
        parts["reconstruct"].append(processed.reconstruct_s)
        parts["segment + crop"].append(processed.segment_s)
    print(f"\nPer 1024x1280 frame with {scene.cells_per_frame:g} cells on average (median of 20):")
    for name, values in parts.items():
        print(f"- {name}: {1e3 * statistics.median(values):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
