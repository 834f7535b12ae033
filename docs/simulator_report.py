"""Writes docs/simulator.md and its figures from the simulator itself.

Usage: ``python docs/simulator_report.py [--cells N] [--seed S]``

Everything in the page is computed here: the figures (phantom, hologram,
reconstruction and crops of each line), the parameter table (from
``acquisition.simulator.phantoms``) and the difficulty check (K = 9 nearest
neighbours in image space on full-path crops, 10 and 160 training images, 20
random draws each, tested on all remaining crops).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from acquisition.backend import get_backend
from acquisition.frames import FrameProcessor
from acquisition.reconstruction import ReconstructionConfig
from acquisition.simulator.datasets import segmentation_for, simulate_full
from acquisition.simulator.phantoms import (
    ALL_LINES,
    CELL_LINES,
    N_MEDIUM,
    SMOOTHING_UM,
    SPERM,
    SPERM_SOURCE,
    render_cell,
)
from acquisition.simulator.scene import FlowSimulator, SceneConfig
from training.knn import KNNClassifier

DOCS = Path(__file__).resolve().parent
PAIRS = (("hs895-sk", "hs895-t"), ("sw480", "sw620"))
PAPER_KNN = {"hs895-sk/hs895-t": 0.88, "sw480/sw620": 0.82}


def figure(line: str, seed: int) -> str:
    """Phantom, hologram, reconstruction with outlines, and crops of one line."""
    scene = SceneConfig(cells_per_frame=5.0, touching_probability=0.0, clipped_probability=0.0)
    sim = FlowSimulator(scene, [line], seed=seed)
    backend = get_backend("numpy")
    processor = FrameProcessor(
        ReconstructionConfig(
            sample_half=scene.sample_half, pixel_size_um=scene.optics.pixel_size_um
        ),
        segmentation_for(line, 128, 0.25),
        backend,
        reference=sim.reference,
    )
    frame = sim.frame(0)
    processed = processor.process(frame.hologram)
    maps, seg = processed.maps, processed.segmentations[0]
    crops = [c.crop_nm for c in seg.cells]
    index = 1
    while len(crops) < 4 and index < 10:
        crops += [c.crop_nm for c in processor.process(sim.frame(index).hologram).cells]
        index += 1
    phantom = render_cell(line, np.random.default_rng(seed), 0.12)

    fig, axes = plt.subplots(1, 7, figsize=(21, 3.4))
    im = axes[0].imshow(phantom.opd_nm, cmap="viridis")
    axes[0].set_title(f"{line}: phantom (nm)")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    axes[1].imshow(frame.hologram[:256, :256], cmap="gray")
    axes[1].set_title("hologram (top-left 256 px)")
    im = axes[2].imshow(maps.opd_nm[0], cmap="viridis")
    axes[2].contour(seg.labels > 0, levels=[0.5], colors="red", linewidths=0.6)
    axes[2].set_title("reconstructed OPD, sample half")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax, crop in zip(axes[3:], crops[:4], strict=False):
        ax.imshow(crop, cmap="viridis")
        ax.set_title(f"crop, peak {crop.max():.0f} nm")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    name = f"figures/simulator-{line}.png"
    (DOCS / "figures").mkdir(exist_ok=True)
    fig.savefig(DOCS / name, dpi=60)
    plt.close(fig)
    return name


def difficulty(count: int, seed: int) -> list[str]:
    rows = []
    for pair in PAIRS:
        t0 = time.perf_counter()
        data = simulate_full(list(pair), count, seed=seed)
        seconds = time.perf_counter() - t0
        cells = []
        for size in (10, 160):
            accuracies = []
            for draw in range(20):
                rng = np.random.default_rng(draw)
                train = np.concatenate(
                    [
                        rng.choice(np.flatnonzero(data.label == c), size // 2, replace=False)
                        for c in (0, 1)
                    ]
                )
                test = np.setdiff1d(np.arange(len(data)), train)
                knn = KNNClassifier(9).fit(data.opd[train], data.label[train])
                accuracies.append(float((knn.predict(data.opd[test]) == data.label[test]).mean()))
            cells.append(
                f"{100 * np.mean(accuracies):.1f} % ({100 * min(accuracies):.1f}-{100 * max(accuracies):.1f})"
            )
        key = "/".join(pair)
        rows.append(
            f"| {key} | {cells[0]} | {cells[1]} | {100 * PAPER_KNN[key]:.0f} % | {len(data)} crops, "
            f"{seconds:.0f} s |"
        )
    return rows


def parameter_table() -> list[str]:
    names = [row[0] for row in next(iter(CELL_LINES.values())).parameter_table()]
    lines = ["| parameter | " + " | ".join(CELL_LINES) + " |", "|---" * (len(CELL_LINES) + 1) + "|"]
    tables = {name: dict(line.parameter_table()) for name, line in CELL_LINES.items()}
    for name in names:
        lines.append(f"| {name} | " + " | ".join(tables[line][name] for line in CELL_LINES) + " |")
    return lines


def sources() -> list[str]:
    out = []
    for name, line in CELL_LINES.items():
        out.append(f"- **{name}** ({line.description}):")
        out += [f"  - `{key}`: {text}" for key, text in line.source.items()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=300, help="crops per line for the check")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    figures = {line: figure(line, args.seed) for line in ALL_LINES}
    rows = difficulty(args.cells, args.seed)
    sperm_rows = [
        f"| {k} | {r.mean:g} +- {r.sd:g} [{r.low:g}, {r.high:g}] |" for k, r in SPERM.items()
    ]
    default = SceneConfig()
    o = default.optics
    text = f"""# The instrument simulator

*Generated by `python docs/simulator_report.py --cells {args.cells} --seed {args.seed}`; every
number and figure below comes from that run.*

No public data set of these cells exists, so the project simulates them. **These are
simulated data, not measurements**: the phantoms are plausible, documented models of the
cell lines, calibrated so that a nearest-neighbour classifier finds them about as hard to
tell apart as the paper's real cells; they are not those cells.

## The pipeline

1. **Phantoms** (`acquisition/simulator/phantoms.py`): OPD in nm = integral of (n - n_medium)
   dz over a cell volume, medium RI {N_MEDIUM}. Suspended cells: an ellipsoidal cytoplasm whose
   outline carries membrane harmonics 2-8, blebs on the membrane, an ellipsoidal nucleus
   (offset), Poisson-many nucleoli, and a granular texture proportional to the local
   thickness. Sperm (fixed and dried on glass): an ellipsoidal head with a lower-density
   acrosome cap and vacuoles, a midpiece and a thin curved tail. Every map is smoothed by a
   Gaussian of {SMOOTHING_UM} um, the scale the objective resolves, so that the stored truth is
   what an ideal reconstruction can return.
2. **Holograms** (`scene.py`, `optics.py`): frames of {default.shape[0]}x{default.shape[1]}
   pixels of {o.pixel_size_um} um (sample plane), Poisson({default.cells_per_frame:g}) cells per
   frame at random positions in the {default.sample_half} half ({100 * default.touching_probability:g} %
   placed touching a neighbour, {100 * default.clipped_probability:g} % across the border), Poisson({default.debris_per_frame:g})
   debris particles; field = Gaussian illumination x stationary aberrations
   ({default.aberration_rms_rad:g} rad RMS) and speckle ({default.speckle_rms_rad:g} rad) x the cells' phase x
   per-frame coherent noise ({default.frame_noise_rms_rad:g} rad), band-limited by an NA {o.numerical_aperture:g}
   objective at {o.wavelength_nm:g} nm; the flipping interferometer interferes it with its mirror image
   on a carrier of {o.carrier} cycles/px with visibility {o.visibility:g}; the camera adds shot noise
   (full well {o.full_well_e:g} e-), read noise ({o.read_noise_e:g} e-) and quantises to {o.bit_depth} bits
   (12 on request). The reference hologram shares everything stationary and holds no cells.
   Frames are independent draws of the flow, deterministic for a seed and a frame index.
3. **Crop datasets** (`datasets.py`): `topgan simulate cells` sends each frame through the
   project's own reconstruction and segmentation and keeps every accepted cell (full path), so
   crops carry real reconstruction artefacts; `--direct` renders phantoms straight at the crop
   pixel size plus 2 nm of correlated noise (for large unlabeled pools; recorded in `source`).

## The lines

"""
    for line in ALL_LINES:
        text += f"### {line}\n\n![{line}]({figures[line]})\n\n"
    text += "## Parameters\n\nTruncated normal distributions, mean +- sd [low, high]; counts are Poisson means.\n\n"
    text += "\n".join(parameter_table()) + "\n\nSperm:\n\n| parameter | value |\n|---|---|\n"
    text += "\n".join(sperm_rows) + "\n\nSources and assumptions:\n\n" + "\n".join(sources())
    text += f"\n- **sperm**: {SPERM_SOURCE}\n"
    text += (
        """
## Difficulty check

K = 9 nearest neighbours in image space (Euclidean distance between 128x128 crops),
trained on 10 or 160 full-path crops (balanced), tested on all the others; mean and
range over 20 random draws. The paper reports 88 % (healthy/melanoma) and 82 %
(primary/metastatic) for its KNN baseline, the first pair being the easier one.

| pair | 10 training crops | 160 training crops | paper's KNN | data |
|---|---|---|---|---|
"""
        + "\n".join(rows)
        + "\n"
    )
    text += """
The distributions were calibrated once against this check (mean diameters and the cytoplasm's
RI contrast), not against any classifier's test folds.
"""
    (DOCS / "simulator.md").write_text(text)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
