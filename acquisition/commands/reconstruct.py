"""``topgan reconstruct``: holograms -> OPD maps (DIR/<stem>.npy + .json) and crops."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..commandline import (
    Command,
    CommandError,
    add_common_options,
    backend_or_error,
    carrier,
    positive_float,
)
from ..cropfile import CropDataset, qc_columns, write_crop_dataset
from ..io import read_hologram
from ..reconstruction import ReconstructionConfig, Reconstructor
from ..segmentation import QC_FEATURES, Cell, SegmentationConfig, Segmenter

logger = logging.getLogger(__name__)

DEFAULT_WAVELENGTH_NM = 632.8
DEFAULT_PIXEL_SIZE_UM = 0.12


@dataclass(frozen=True)
class ReconstructOptions:
    holograms: tuple[Path, ...]
    out: Path
    reference: Path | None = None
    wavelength_nm: float | None = None
    pixel_size_um: float | None = None
    sample_half: str = "full"
    filter: str = "disk"
    filter_size: float = 1 / 3
    carrier: tuple[float, float] | None = None
    resolution: str = "reduced"
    backend: str = "auto"
    crops: Path | None = None
    crop_pixel_size_um: float = 0.25

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReconstructOptions:
        return cls(
            holograms=tuple(Path(p) for p in args.holograms),
            out=Path(args.out),
            reference=Path(args.reference) if args.reference else None,
            wavelength_nm=args.wavelength_nm,
            pixel_size_um=args.pixel_size_um,
            sample_half=args.sample_half,
            filter=args.filter,
            filter_size=args.filter_size,
            carrier=args.carrier,
            resolution=args.resolution,
            backend=args.backend,
            crops=Path(args.crops) if args.crops else None,
            crop_pixel_size_um=args.crop_pixel_size_um,
        )


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
        help="wavelength in nm (default: the file's metadata, else 632.8)",
    )
    p.add_argument(
        "--pixel-size-um",
        type=positive_float,
        help="camera pixel size in the sample plane, um (default: the file's, else 0.12)",
    )
    p.add_argument(
        "--sample-half",
        default="full",
        choices=("left", "right", "top", "bottom", "full"),
        help="the part of the frame holding the sample (a half for a flipping "
        "interferometer; default: full)",
    )
    p.add_argument("--filter", default="disk", choices=("disk", "smooth disk"))
    p.add_argument(
        "--filter-size",
        type=float,
        default=1 / 3,
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
        default="reduced",
        choices=("reduced", "full"),
        help="'reduced': the filter's resolution (default); 'full': camera pixels",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "numpy", "cupy"),
        help="array backend (default: CuPy when a GPU answers, else NumPy)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--crops", metavar="FILE.h5", help="also write the single-cell crops here")
    p.add_argument(
        "--crop-pixel-size-um",
        type=positive_float,
        default=0.25,
        help="pixel size of the 128x128 crops, um (default 0.25)",
    )


def run(args: argparse.Namespace) -> None:
    run_reconstruct(ReconstructOptions.from_args(args))


def run_reconstruct(opts: ReconstructOptions) -> list[Cell]:
    """Reconstruct every hologram of ``opts``; return the cells cut from them."""
    stems = [p.stem for p in opts.holograms]
    duplicated = sorted({s for s in stems if stems.count(s) > 1})
    if duplicated:
        raise CommandError(
            f"several inputs share the name {duplicated[0]!r}; their outputs would overwrite "
            "each other in --out: reconstruct them in separate runs"
        )
    # Read everything first: a bad file fails the run before anything is written.
    files = [read_hologram(p) for p in opts.holograms]
    reference = read_hologram(opts.reference) if opts.reference else None
    if reference is not None and reference.frames.shape[0] != 1:
        raise CommandError(
            f"reference {opts.reference} holds {reference.frames.shape[0]} frames, expected 1"
        )

    optics = [
        (
            opts.wavelength_nm or f.wavelength_nm or DEFAULT_WAVELENGTH_NM,
            opts.pixel_size_um or f.pixel_size_um or DEFAULT_PIXEL_SIZE_UM,
        )
        for f in files
    ]
    wavelengths = sorted({wl for wl, _ in optics})
    if opts.crops is not None and len(wavelengths) > 1:
        raise CommandError(
            f"the inputs were recorded at several wavelengths {wavelengths}; a crop file "
            "holds one: write their crops in separate runs"
        )

    _check_outputs(opts)
    backend = backend_or_error(opts.backend)
    segmenter = Segmenter(SegmentationConfig(crop_pixel_size_um=opts.crop_pixel_size_um))
    opts.out.mkdir(parents=True, exist_ok=True)
    reconstructors: dict[tuple[float, float, int], Reconstructor] = {}
    all_cells: list[tuple[int, Cell]] = []
    for number, (holo, (wavelength, pixel)) in enumerate(zip(files, optics, strict=True), start=1):
        ref = reference.frames[0] if reference is not None else holo.reference
        key = (wavelength, pixel, id(ref) if ref is not None else 0)
        rec = reconstructors.get(key)
        if rec is None:
            config = ReconstructionConfig(
                wavelength_nm=wavelength,
                pixel_size_um=pixel,
                filter=opts.filter,  # type: ignore[arg-type]
                filter_size=opts.filter_size,
                carrier=opts.carrier,
                sample_half=opts.sample_half,  # type: ignore[arg-type]
                output=opts.resolution,  # type: ignore[arg-type]
            )
            rec = reconstructors[key] = Reconstructor(config, backend, reference=ref)
        try:
            maps = rec.reconstruct(holo.frames)
        except ValueError as exc:
            raise CommandError(f"{holo.path}: {exc}") from exc
        frames = segmenter.segment(maps)
        cells = [c for f in frames for c in f.cells]
        all_cells.extend((number - 1, cell) for cell in cells)
        stem = holo.path.stem
        opd = maps.opd_nm[0] if maps.opd_nm.shape[0] == 1 else maps.opd_nm
        np.save(opts.out / f"{stem}.npy", opd)
        dy, dx = maps.pixel_size_um
        meta = {
            "source": str(holo.path),
            "shape": list(opd.shape),
            "unit": "nm",
            "pixel_size_um": float(np.sqrt(dy * dx)),
            "pixel_size_yx_um": [dy, dx],
            "wavelength_nm": wavelength,
            "camera_pixel_size_um": pixel,
            "sample_half": opts.sample_half,
            "origin_px": list(maps.origin_px),
            "scale": list(maps.scale),
            "carrier_cycles_per_px": list(maps.carrier),
            "phase_sign": maps.sign,
            "filter": opts.filter,
            "filter_size": opts.filter_size,
            "reference": str(opts.reference)
            if opts.reference
            else ("embedded" if ref is not None else None),
            "cells_per_frame": [len(f.cells) for f in frames],
            "rejected": [f.rejected for f in frames],
        }
        (opts.out / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(
            f"[{number}/{len(files)}] {holo.path.name}: {holo.frames.shape[0]} frame(s), "
            f"{len(cells)} cell(s), pixel {np.sqrt(dy * dx):.4g} um",
            file=sys.stderr,
        )
    if opts.crops is not None:
        write_crops(opts.crops, all_cells, opts, wavelengths[0])
    return [cell for _, cell in all_cells]


def _check_outputs(opts: ReconstructOptions) -> None:
    """Refuse outputs that would overwrite an input, or a --crops path that is a folder."""
    inputs = {p.resolve() for p in opts.holograms}
    if opts.reference is not None:
        inputs.add(opts.reference.resolve())
    for path in opts.holograms:
        for suffix in (".npy", ".json"):
            target = (opts.out / f"{path.stem}{suffix}").resolve()
            if target in inputs:
                raise CommandError(
                    f"--out {opts.out} would overwrite the input {target}: choose another folder"
                )
    if opts.crops is not None and (opts.crops.is_dir() or opts.crops.resolve() in inputs):
        raise CommandError(f"--crops {opts.crops} must be a new or existing .h5 file")


def write_crops(
    path: Path, found: list[tuple[int, Cell]], opts: ReconstructOptions, wavelength_nm: float
) -> None:
    """Write the crops with their QC, frame, input index and camera position."""
    size = SegmentationConfig().crop_size
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
        pixel_size_um=opts.crop_pixel_size_um,
        wavelength_nm=wavelength_nm,
        source="topgan reconstruct " + " ".join(str(p) for p in opts.holograms),
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
