"""``topgan simulate holograms`` and ``topgan simulate cells``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

import h5py
import numpy as np

from ..commandline import (
    Command,
    CommandError,
    ProgressPrinter,
    add_common_options,
    choices_of,
    positive_float,
)
from ..cropfile import write_crop_dataset
from ..io import camera_tiff_shift, write_camera_tiff
from ..segmentation import SegmentationConfig
from ..simulator import phantoms
from ..simulator.datasets import simulate_direct, simulate_full
from ..simulator.flow import ContinuousFlow, FlowConfig
from ..simulator.scene import FlowSimulator, SceneConfig, TrueObject

DEFAULTS = SceneConfig()
FLOW = FlowConfig()


def frame_shape(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HxW in pixels, e.g. 1024x1280; got {text!r}"
        ) from None
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in ("holograms", "cells"):
        k = kinds.add_parser(
            kind,
            help="hologram frames (TIFF) with reference and ground truth"
            if kind == "holograms"
            else "a crop dataset (HDF5) through the full instrument path",
        )
        add_common_options(k)
        k.add_argument(
            "--cell-line",
            required=True,
            metavar="L[,L...]",
            help=f"{', '.join(phantoms.ALL_LINES)} (several: comma-separated)",
        )
        if kind == "holograms":
            k.add_argument("--frames", type=int, required=True, metavar="N")
            k.add_argument("--out", required=True, metavar="DIR")
            flow = k.add_argument_group(
                "continuous flow",
                "with --flow, cells enter the sample half, cross it over several frames "
                "and leave; cells.csv gives each cell's track in every frame",
            )
            flow.add_argument("--flow", action="store_true", help="a continuous flow")
            flow.add_argument(
                "--flow-speed-um-s",
                type=positive_float,
                default=FLOW.flow_speed_um_s,
                help="speed in the channel's centre (default %(default)s)",
            )
            flow.add_argument(
                "--frame-rate-hz",
                type=positive_float,
                default=FLOW.frame_rate_hz,
                help="the camera's frame rate (default %(default)s)",
            )
            flow.add_argument(
                "--cells-per-second",
                type=float,
                default=FLOW.cells_per_second,
                help="mean rate of cells entering (default %(default)s)",
            )
            flow.add_argument(
                "--flow-axis", choices=choices_of(FlowConfig, "axis"), default=FLOW.axis
            )
            flow.add_argument("--flow-direction", type=int, choices=(1, -1), default=FLOW.direction)
            flow.add_argument(
                "--rotation-deg-per-frame",
                type=float,
                default=FLOW.rotation_deg_per_frame,
                help="cells turn as they flow, each at up to this rate (default %(default)s)",
            )
            flow.add_argument(
                "--focus-drift-um",
                type=float,
                default=FLOW.focus_drift_um,
                help="the focus drifts sinusoidally up to this far either side (default "
                "%(default)s)",
            )
            flow.add_argument(
                "--focus-period-frames",
                type=positive_float,
                default=FLOW.focus_period_frames,
                help="the period of that drift (default %(default)s)",
            )
        else:
            k.add_argument(
                "--count", type=int, required=True, metavar="N", help="crops per cell line"
            )
            k.add_argument("--out", required=True, metavar="FILE.h5")
            k.add_argument(
                "--direct",
                action="store_true",
                help="render phantoms straight at the crop pixel size (fast; for "
                "large unlabeled pools; recorded in the file's source)",
            )
            k.add_argument(
                "--crop-pixel-size-um",
                type=positive_float,
                default=SegmentationConfig().crop_pixel_size_um,
            )
        k.add_argument(
            "--shape",
            type=frame_shape,
            default=DEFAULTS.shape,
            metavar="HxW",
            help="camera frame (default {}x{})".format(*DEFAULTS.shape),
        )
        k.add_argument("--bit-depth", type=int, choices=(8, 12), default=DEFAULTS.optics.bit_depth)
        k.add_argument("--cells-per-frame", type=float, default=DEFAULTS.cells_per_frame)


def run(args: argparse.Namespace) -> None:
    lines = parse_lines(args.cell_line)
    scene = scene_config(args.shape, args.bit_depth, args.cells_per_frame)
    if args.kind == "holograms":
        flow = flow_config(args) if args.flow else None
        write_holograms(Path(args.out), lines, args.frames, args.seed, scene, flow)
    else:
        write_cells(
            Path(args.out),
            lines,
            args.count,
            args.seed,
            args.direct,
            args.crop_pixel_size_um,
            scene,
        )


def parse_lines(text: str) -> list[str]:
    try:
        return phantoms.parse_lines(text)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def flow_config(args: argparse.Namespace) -> FlowConfig:
    try:
        return FlowConfig(
            flow_speed_um_s=args.flow_speed_um_s,
            frame_rate_hz=args.frame_rate_hz,
            cells_per_second=args.cells_per_second,
            axis=args.flow_axis,
            direction=args.flow_direction,
            rotation_deg_per_frame=args.rotation_deg_per_frame,
            focus_drift_um=args.focus_drift_um,
            focus_period_frames=args.focus_period_frames,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def scene_config(shape: tuple[int, int], bit_depth: int, cells_per_frame: float) -> SceneConfig:
    try:
        return replace(
            DEFAULTS,
            shape=shape,
            cells_per_frame=cells_per_frame,
            optics=replace(DEFAULTS.optics, bit_depth=bit_depth),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def write_holograms(
    out: Path,
    lines: list[str],
    frames: int,
    seed: int,
    scene: SceneConfig,
    flow: FlowConfig | None = None,
) -> None:
    """Frames as TIFF (12-bit stored MSB-aligned in uint16, as pylon reads them),
    ``reference.tiff``, ``ground_truth.h5`` (OPD of the sample half, nm, and each
    frame's defocus, um) and
    ``cells.csv``; independent frames, or a continuous ``flow`` (``cells.csv``'s
    ``track`` then follows each cell from frame to frame)."""
    if frames < 1:
        raise CommandError(f"--frames must be at least 1, got {frames}")
    out.mkdir(parents=True, exist_ok=True)
    simulator = FlowSimulator(scene, lines, seed=seed)
    stream = ContinuousFlow(simulator, flow, seed) if flow is not None else None
    depth = scene.optics.bit_depth
    write_camera_tiff(out / "reference.tiff", simulator.reference, depth)
    rows, cols = scene.region
    h = rows.stop - rows.start
    w = cols.stop - cols.start
    progress = ProgressPrinter("frames")
    objects: list[TrueObject] = []
    defocus: list[float] = []  # um, per frame
    with h5py.File(out / "ground_truth.h5", "w") as truth:
        opd = truth.create_dataset(
            "opd_nm",
            shape=(frames, h, w),
            dtype=np.float32,
            chunks=(1, h, w),
            compression="gzip",
            compression_opts=1,
            shuffle=True,
        )
        truth.attrs["region_origin_px"] = [rows.start, cols.start]
        truth.attrs["pixel_size_um"] = scene.optics.pixel_size_um
        truth.attrs["wavelength_nm"] = scene.optics.wavelength_nm
        for i in range(frames):
            frame = stream.frame() if stream is not None else simulator.frame(i)
            write_camera_tiff(out / f"frame_{i:05d}.tif", frame.hologram, depth)
            opd[i] = frame.opd_nm[rows, cols]
            defocus.append(frame.defocus_um)
            objects.extend(frame.objects)
            progress(i + 1, frames)
        truth.create_dataset("defocus_um", data=np.asarray(defocus, dtype=np.float32))
    with (out / "cells.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([fl.name for fl in fields(TrueObject)])
        for obj in objects:
            writer.writerow(list(asdict(obj).values()))
    meta = {
        "lines": lines,
        "frames": frames,
        "seed": seed,
        "scene": asdict(scene),
        "flow": asdict(flow) if flow is not None else None,
        "tiff": f"{depth}-bit values"
        + (f" shifted left by {camera_tiff_shift(depth)}" if camera_tiff_shift(depth) else ""),
        "reconstruct_with": {
            "wavelength_nm": scene.optics.wavelength_nm,
            "pixel_size_um": scene.optics.pixel_size_um,
            "sample_half": scene.sample_half,
            "reference": "reference.tiff",
        },
    }
    (out / "simulation.json").write_text(json.dumps(meta, indent=2) + "\n")
    cells = sum(o.kind == "cell" for o in objects)
    if stream is not None:
        tracks = len({o.track for o in objects if o.kind == "cell"})
        what = f"{cells} views of {tracks} cells in flow"
    else:
        what = f"{cells} cells"
    print(f"wrote {frames} holograms with {what} to {out}", file=sys.stderr)


def write_cells(
    out: Path,
    lines: list[str],
    count: int,
    seed: int,
    direct: bool,
    crop_pixel_size_um: float,
    scene: SceneConfig,
) -> None:
    if count < 1:
        raise CommandError(f"--count must be at least 1, got {count}")
    progress = ProgressPrinter("cells")
    if direct:
        data = simulate_direct(
            lines,
            count,
            seed=seed,
            crop_pixel_size_um=crop_pixel_size_um,
            wavelength_nm=scene.optics.wavelength_nm,
            progress=progress,
        )
    else:
        data = simulate_full(
            lines,
            count,
            seed=seed,
            scene=scene,
            crop_pixel_size_um=crop_pixel_size_um,
            progress=progress,
        )
    write_crop_dataset(out, data)
    print(f"wrote {len(data)} crops to {out}", file=sys.stderr)


COMMAND = Command(
    name="simulate",
    help="simulated holograms and crop datasets",
    add_arguments=add_arguments,
    run=run,
    order=30,
)
