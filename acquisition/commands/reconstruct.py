"""``topgan reconstruct``: holograms -> OPD maps (DIR/<stem>.npy + .json) and crops."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..commandline import (
    BACKENDS,
    Command,
    CommandError,
    add_common_options,
    backend_or_error,
    carrier,
    choices_of,
    positive_float,
)
from ..cropfile import CropDataset, qc_columns, write_crop_dataset
from ..frames import FrameProcessor
from ..io import read_hologram
from ..reconstruction import ReconstructionConfig
from ..segmentation import QC_FEATURES, Cell, SegmentationConfig

DEFAULTS = ReconstructionConfig()
CROP_DEFAULTS = SegmentationConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_options(p)
    p.add_argument(
        "holograms",
        nargs="+",
        metavar="HOLOGRAM",
        help="hologram files: TIFF, PNG, JPEG, NPY, NPZ or qpformat HDF5",
    )
    p.add_argument(
        "--reference",
        metavar="REF",
        help="a hologram recorded without cells (default: the file's own, if any)",
    )
    p.add_argument(
        "--wavelength-nm",
        type=positive_float,
        help=f"wavelength in nm (default: the file's metadata, else {DEFAULTS.wavelength_nm:g})",
    )
    p.add_argument(
        "--pixel-size-um",
        type=positive_float,
        help="camera pixel size in the sample plane, um (default: the file's, else "
        f"{DEFAULTS.pixel_size_um:g})",
    )
    p.add_argument(
        "--sample-half",
        default=DEFAULTS.sample_half,
        choices=choices_of(ReconstructionConfig, "sample_half"),
        help="the part of the frame holding the sample (a half for a flipping "
        f"interferometer; default: {DEFAULTS.sample_half})",
    )
    p.add_argument(
        "--sample-margin-px",
        type=margin,
        default=DEFAULTS.sample_margin_px,
        metavar="PX|whole",
        help="with a sample half: camera pixels of the other half transformed with it "
        f"(default {DEFAULTS.sample_margin_px}); 'whole' transforms the whole frame",
    )
    p.add_argument(
        "--filter", default=DEFAULTS.filter, choices=choices_of(ReconstructionConfig, "filter")
    )
    p.add_argument(
        "--filter-size",
        type=float,
        default=DEFAULTS.filter_size,
        help="filter radius as a fraction of the sideband distance (default 1/3)",
    )
    p.add_argument(
        "--carrier",
        type=carrier,
        metavar="KY,KX",
        help="the +1 sideband in cycles per pixel (default: found automatically)",
    )
    p.add_argument(
        "--resolution",
        default=DEFAULTS.output,
        choices=choices_of(ReconstructionConfig, "output"),
        help="'reduced': the filter's resolution (default); 'full': camera pixels",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="array backend (default: CuPy when a GPU answers, else NumPy)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--crops", metavar="FILE.h5", help="also write the single-cell crops here")
    p.add_argument(
        "--crop-pixel-size-um",
        type=positive_float,
        default=CROP_DEFAULTS.crop_pixel_size_um,
        help=f"pixel size of the {CROP_DEFAULTS.crop_size}x{CROP_DEFAULTS.crop_size} crops, um "
        f"(default {CROP_DEFAULTS.crop_pixel_size_um:g})",
    )


def margin(text: str) -> int | None:
    """``--sample-margin-px``: a whole number of pixels >= 0, or "whole" (None)."""
    if text == "whole":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of pixels >= 0 or 'whole', got {text!r}"
        )
    return value


def reconstruction_config(
    args: argparse.Namespace, wavelength_nm: float | None = None, pixel_size_um: float | None = None
) -> ReconstructionConfig:
    """The reconstruction the options ask for, of a file recorded at ``wavelength_nm``
    and ``pixel_size_um`` (its metadata, if any): an option given overrides the file,
    which overrides the default."""
    return ReconstructionConfig(
        wavelength_nm=args.wavelength_nm or wavelength_nm or DEFAULTS.wavelength_nm,
        pixel_size_um=args.pixel_size_um or pixel_size_um or DEFAULTS.pixel_size_um,
        filter=args.filter,
        filter_size=args.filter_size,
        carrier=args.carrier,
        sample_half=args.sample_half,
        sample_margin_px=args.sample_margin_px,
        output=args.resolution,
    )


def run(args: argparse.Namespace) -> None:
    """Reconstruct every hologram; write its OPD map and details, and the crops."""
    holograms = [Path(p) for p in args.holograms]
    out = Path(args.out)
    reference_path = Path(args.reference) if args.reference else None
    crops = Path(args.crops) if args.crops else None
    stems = [p.stem for p in holograms]
    duplicated = sorted({s for s in stems if stems.count(s) > 1})
    if duplicated:
        raise CommandError(
            f"several inputs share the name {duplicated[0]!r}; their outputs would overwrite "
            "each other in --out: reconstruct them in separate runs"
        )
    # Read everything first: a bad file fails the run before anything is written.
    files = [read_hologram(p) for p in holograms]
    reference = read_hologram(reference_path) if reference_path else None
    if reference is not None and reference.frames.shape[0] != 1:
        raise CommandError(
            f"reference {reference_path} holds {reference.frames.shape[0]} frames, expected 1"
        )

    configs = [reconstruction_config(args, f.wavelength_nm, f.pixel_size_um) for f in files]
    wavelengths = sorted({c.wavelength_nm for c in configs})
    if crops is not None and len(wavelengths) > 1:
        raise CommandError(
            f"the inputs were recorded at several wavelengths {wavelengths}; a crop file "
            "holds one: write their crops in separate runs"
        )

    _check_outputs(holograms, reference_path, out, crops)
    backend = backend_or_error(args.backend)
    segmentation = SegmentationConfig(crop_pixel_size_um=args.crop_pixel_size_um)
    out.mkdir(parents=True, exist_ok=True)
    processors: dict[tuple[ReconstructionConfig, int], FrameProcessor] = {}
    all_cells: list[tuple[int, Cell]] = []
    for number, (holo, config) in enumerate(zip(files, configs, strict=True), start=1):
        ref = reference.frames[0] if reference is not None else holo.reference
        key = (config, id(ref) if ref is not None else 0)
        processor = processors.get(key)
        if processor is None:
            processor = processors[key] = FrameProcessor(config, segmentation, backend, ref)
        try:
            processed = processor.process(holo.frames)
        except ValueError as exc:
            raise CommandError(f"{holo.path}: {exc}") from exc
        maps, cells = processed.maps, processed.cells
        all_cells.extend((number - 1, cell) for cell in cells)
        stem = holo.path.stem
        opd = maps.opd_nm[0] if maps.opd_nm.shape[0] == 1 else maps.opd_nm
        np.save(out / f"{stem}.npy", opd)
        dy, dx = maps.pixel_size_um
        meta = {
            "source": str(holo.path),
            "shape": list(opd.shape),
            "unit": "nm",
            "pixel_size_um": float(np.sqrt(dy * dx)),
            "pixel_size_yx_um": [dy, dx],
            "wavelength_nm": config.wavelength_nm,
            "camera_pixel_size_um": config.pixel_size_um,
            "sample_half": config.sample_half,
            "sample_margin_px": config.sample_margin_px,
            "origin_px": list(maps.origin_px),
            "scale": list(maps.scale),
            "carrier_cycles_per_px": list(maps.carrier),
            "phase_sign": maps.sign,
            "filter": config.filter,
            "filter_size": config.filter_size,
            "reference": str(reference_path)
            if reference_path
            else ("embedded" if ref is not None else None),
            "cells_per_frame": [len(f.cells) for f in processed.segmentations],
            "rejected": [f.rejected for f in processed.segmentations],
        }
        (out / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
        rejected: dict[str, int] = {}
        for frame in processed.segmentations:
            for reason, count in frame.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
        print(
            f"[{number}/{len(files)}] {holo.path.name}: {holo.frames.shape[0]} frame(s), "
            f"{len(cells)} cell(s){describe_rejected(rejected)}, pixel {np.sqrt(dy * dx):.4g} um",
            file=sys.stderr,
        )
        if len(processed.segmentations) > 1:
            for index, frame in enumerate(processed.segmentations):
                why = describe_rejected(frame.rejected)
                print(f"  frame {index}: {len(frame.cells)} cell(s){why}", file=sys.stderr)
    if crops is not None:
        write_crops(crops, all_cells, holograms, segmentation, wavelengths[0])


def describe_rejected(rejected: dict[str, int]) -> str:
    """`` (rejected: touching 2, clipped 1)``, the objects not kept and why; empty
    when none was rejected."""
    if not rejected:
        return ""
    return " (rejected: " + ", ".join(f"{r} {n}" for r, n in rejected.items()) + ")"


def _check_outputs(
    holograms: list[Path], reference: Path | None, out: Path, crops: Path | None
) -> None:
    """Refuse outputs that would overwrite an input, or a --crops path that is a folder."""
    inputs = {p.resolve() for p in holograms}
    if reference is not None:
        inputs.add(reference.resolve())
    for path in holograms:
        for suffix in (".npy", ".json"):
            target = (out / f"{path.stem}{suffix}").resolve()
            if target in inputs:
                raise CommandError(
                    f"--out {out} would overwrite the input {target}: choose another folder"
                )
    if crops is not None and (crops.is_dir() or crops.resolve() in inputs):
        raise CommandError(f"--crops {crops} must be a new or existing .h5 file")


def write_crops(
    path: Path,
    found: list[tuple[int, Cell]],
    holograms: list[Path],
    segmentation: SegmentationConfig,
    wavelength_nm: float,
) -> None:
    """Write the crops with their QC, frame, input index and camera position."""
    size = segmentation.crop_size
    cells = [cell for _, cell in found]
    opd = np.stack([c.crop_nm for c in cells]) if cells else np.zeros((0, size, size), np.float32)
    qc = qc_columns([c.qc for c in cells], QC_FEATURES)
    qc["position_y_px"] = np.asarray([c.position_px[0] for c in cells], dtype=np.float32)
    qc["position_x_px"] = np.asarray([c.position_px[1] for c in cells], dtype=np.float32)
    qc["frame"] = np.asarray([c.frame for c in cells], dtype=np.int32)
    qc["input"] = np.asarray([index for index, _ in found], dtype=np.int32)
    data = CropDataset(
        opd=opd,
        label=np.full(len(cells), -1, dtype=np.int16),
        class_names=[],
        pixel_size_um=segmentation.crop_pixel_size_um,
        wavelength_nm=wavelength_nm,
        source="topgan reconstruct " + " ".join(str(p) for p in holograms),
    )
    data.qc.update(qc)
    write_crop_dataset(path, data)
    print(f"wrote {len(cells)} crop(s) to {path}", file=sys.stderr)


COMMAND = Command(
    name="reconstruct",
    help="reconstruct holograms into OPD maps (and optionally single-cell crops)",
    description="Reconstruct off-axis holograms into OPD maps in nm: DIR/<stem>.npy with "
    "the pixel size and reconstruction details in DIR/<stem>.json.",
    add_arguments=add_arguments,
    run=run,
    order=20,
)
