"""Reconstruction speed: holograms per second, ours against qpretrieve and the FFT floor.

For 1024x1024 and 1280x1024 8-bit flipping-interferometer holograms (simulated,
three cells each), in one run:

- ours: ``Reconstructor.reconstruct`` of one frame, with reference subtraction,
  least-squares unwrapping, background offset and tilt, OPD in nm (the real-time
  path), and of a batch of 8 frames; and the same frame with the whole frame
  transformed (``sample_margin_px=None``) rather than the sample half's window;
- qpretrieve 0.7.0 on the same frame and its background (the peer; field
  retrieval only, no unwrapping), with padding 0 (square frames only: qpretrieve
  refuses other shapes unpadded), with its default padding (2), and in its fastest
  mode, padding 0 with ``scale_to_filter=True`` (the inverse transform on the
  filter's window only, as ours is);
- the floor: one bare ``scipy.fft.rfft2`` of the frame, as float32 (the dtype the
  pipeline transforms) and as the uint8 frame itself (scipy converts to float64).

Usage: ``python bench/reconstruction.py [--repeats N] [--quick]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import scipy.fft
import scipy.ndimage as ndi

from acquisition.backend import cpu_count, get_backend
from acquisition.reconstruction import ReconstructionConfig, Reconstructor
from acquisition.simulator.optics import (
    OpticsConfig,
    band_limit,
    illumination,
    record_hologram,
    smooth_aberration,
)


def simulate(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A hologram with three cells in the left half, and its reference."""
    rng = np.random.default_rng(seed)
    optics = OpticsConfig()
    h, w = shape
    bare = illumination(shape, rng, 0.6) * np.exp(1j * smooth_aberration(shape, rng, 3.0))
    yy, xx = np.mgrid[:h, :w]
    opd = np.zeros(shape)
    for cy, cx in [(0.25 * h, 0.2 * w), (0.5 * h, 0.35 * w), (0.75 * h, 0.15 * w)]:
        r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.06 * w) ** 2
        opd += 800 * np.sqrt(np.clip(1 - r2, 0, None))
    opd = ndi.gaussian_filter(opd, 8)
    cells = bare * np.exp(2j * math.pi * opd / optics.wavelength_nm)
    cutoff = optics.cutoff_cycles_per_px
    hologram = record_hologram(band_limit(cells, cutoff), optics, rng)
    reference = record_hologram(band_limit(bare, cutoff), optics, rng)
    return hologram, reference


Case = tuple[Callable[[], object], int]


def interleaved(cases: dict[str, Case], rounds: int) -> dict[str, float]:
    """Median seconds per call of each case, measured in interleaved rounds.

    Every round times each case once (``calls`` calls in a row), so a slow spell of
    the machine falls on all cases alike rather than on whichever ran then.
    """
    for fn, _ in cases.values():
        fn()  # warm-up: geometry, plans, caches
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (fn, calls) in cases.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - t0) / calls)
    return {name: statistics.median(values) for name, values in samples.items()}


def qpretrieve_call(
    hologram: np.ndarray, reference: np.ndarray, padding: int, scale_to_filter: bool = False
) -> Callable[[], object]:
    import qpretrieve

    options = {"filter_name": "disk", "filter_size": 1 / 3, "scale_to_filter": scale_to_filter}
    probe = qpretrieve.OffAxisHologram(hologram, padding=padding)
    probe.run_pipeline(**options)
    # The sideband is found once, as ours is: the timed calls only reconstruct.
    sideband = probe.pipeline_kws["sideband_freq"]

    def run() -> object:
        # Fresh arrays each call: qpretrieve caches FFTs by the input's id.
        holo = qpretrieve.OffAxisHologram(hologram.copy(), padding=padding)
        holo.run_pipeline(**options, sideband_freq=sideband)
        bg = qpretrieve.OffAxisHologram(reference.copy(), padding=padding)
        bg.process_like(holo)
        return holo.phase - bg.phase

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    warnings.filterwarnings("ignore", message="Interface 'FFTFilter")
    backend = get_backend("numpy")
    workers = cpu_count()
    print(f"# reconstruction benchmark: {workers} cores, numpy backend, {repeats} repeats, median")
    print(
        "| frame (HxW) | ours 1 frame | ours batch of 8 | qpretrieve pad 0 | qpretrieve pad 2 "
        "| qpretrieve pad 0, scale_to_filter | rfft2 f32 | rfft2 uint8 | ours / rfft2 f32 "
        "| ours / rfft2 uint8 | ours vs qpretrieve pad 0 | ours vs qpretrieve scale_to_filter "
        "| ours, whole frame transformed | whole frame / window |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in [(1024, 1024), (1024, 1280)]:
        hologram, reference = simulate(shape)
        config = ReconstructionConfig(sample_half="left")
        rec = Reconstructor(config, backend, reference=reference)
        whole = Reconstructor(
            ReconstructionConfig(sample_half="left", sample_margin_px=None), backend, reference
        )
        batch = np.stack([hologram] * 8)
        frame32 = hologram.astype(np.float32)
        cases: dict[str, Case] = {
            "ours": (partial(rec.reconstruct, hologram), 10),
            "ours_batch8": (partial(rec.reconstruct, batch), 1),
            "ours_whole": (partial(whole.reconstruct, hologram), 10),
            "rfft2_f32": (partial(scipy.fft.rfft2, frame32, workers=workers), 10),
            "rfft2_uint8": (partial(scipy.fft.rfft2, hologram, workers=workers), 10),
        }
        fast = interleaved(cases, repeats)
        slow_cases = {"qp2": (qpretrieve_call(hologram, reference, 2), 1)}
        if shape[0] == shape[1]:
            slow_cases["qp0"] = (qpretrieve_call(hologram, reference, 0), 1)
            slow_cases["qp0s"] = (qpretrieve_call(hologram, reference, 0, True), 1)
        slow = interleaved(slow_cases, max(3, repeats // 10))
        ours, floor32, floor8 = fast["ours"], fast["rfft2_f32"], fast["rfft2_uint8"]
        qp0, qp0s = slow.get("qp0", math.nan), slow.get("qp0s", math.nan)

        def ratio(peer: float, ours: float = ours) -> str:
            return "n/a" if math.isnan(peer) else f"{peer / ours:.0f}x"

        def hz(seconds: float) -> str:
            return "n/a (needs square)" if math.isnan(seconds) else f"{1 / seconds:.1f}/s"

        print(
            f"| {shape[0]}x{shape[1]} | {hz(ours)} ({ours * 1e3:.2f} ms) "
            f"| {hz(fast['ours_batch8'] / 8)} | {hz(qp0)} | {hz(slow['qp2'])} | {hz(qp0s)} "
            f"| {floor32 * 1e3:.2f} ms | {floor8 * 1e3:.2f} ms "
            f"| {ours / floor32:.2f}x | {ours / floor8:.2f}x | {ratio(qp0)} | {ratio(qp0s)} "
            f"| {fast['ours_whole'] * 1e3:.2f} ms | {fast['ours_whole'] / ours:.2f}x |"
        )
        sys.stdout.flush()
    print("\nTargets on 2 cores: ours >= 10x qpretrieve with padding 0; ours within 2x one rfft2.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
