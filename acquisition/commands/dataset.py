"""``topgan dataset info``, ``topgan dataset import`` and ``topgan dataset merge``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

import numpy as np

from ..backend import BackendName
from ..commandline import (
    BACKENDS,
    Command,
    CommandError,
    ProgressPrinter,
    add_common_options,
    backend_or_error,
    choices_of,
    parse_time,
    positive_float,
)
from ..cropfile import CropDataset, read_crop_dataset, write_crop_dataset
from ..frames import FrameProcessor
from ..importer import (
    OPDUnit,
    import_archive,
    import_holograms,
    import_opd_maps,
    import_rtdc,
    merge_datasets,
)
from ..io import read_hologram
from ..reconstruction import ReconstructionConfig, SampleHalf
from ..segmentation import SegmentationConfig

DEFAULTS = ReconstructionConfig()
CROP_DEFAULTS = SegmentationConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="summary of a crop dataset")
    add_common_options(info)
    info.add_argument("file", metavar="FILE.h5")
    info.add_argument("--json", action="store_true", help="print JSON")
    imp = actions.add_parser(
        "import",
        help="OPD maps, holograms, a dclab .rtdc file or a crop archive's run (plus "
        "labels) -> a crop dataset",
        description="Import single-cell OPD maps (--maps: .npy, .tif, .mat, one size), raw "
        "holograms (--holograms: reconstructed and segmented here), a dclab .rtdc file "
        "with phase images (--rtdc: qpi_pha) or the crops of a crop archive (--archive: "
        "the service's TOPGAN_CROP_ARCHIVE, a run of one pure cell line). The labels CSV "
        "has the columns 'file' and 'label' (empty label: unlabeled; for --rtdc, 'file' is "
        "the event's index, from 0); --rtdc also takes --label for the whole file, else "
        "its ml_class; --archive takes --label for every crop.",
    )
    add_common_options(imp)
    src = imp.add_mutually_exclusive_group(required=True)
    src.add_argument("--maps", metavar="DIR")
    src.add_argument("--holograms", metavar="DIR")
    src.add_argument("--rtdc", metavar="FILE.rtdc")
    src.add_argument("--archive", metavar="DIR", help="a crop archive folder")
    imp.add_argument("--labels", metavar="CSV")
    imp.add_argument("--label", metavar="NAME", help="--rtdc, --archive: one label for every cell")
    imp.add_argument(
        "--since",
        metavar="T",
        help="--archive: crops grabbed at or after T (Unix s or ISO 8601, UTC unless zoned)",
    )
    imp.add_argument("--until", metavar="T", help="--archive: crops grabbed before T (as --since)")
    imp.add_argument(
        "--all-views",
        action="store_true",
        help="--archive: every view of each cell (default: one, the middle one by frame)",
    )
    imp.add_argument(
        "--keep-flagged",
        action="store_true",
        help="--archive: keep crops flagged clipped, touching or out of focus (default: left out)",
    )
    imp.add_argument("--out", required=True, metavar="FILE.h5")
    imp.add_argument(
        "--classes",
        metavar="A,B,...",
        help="the class names in label order; any other label is an error",
    )
    imp.add_argument(
        "--pixel-size-um",
        type=positive_float,
        help="pixel size of the maps, or the camera's in the sample plane",
    )
    imp.add_argument("--wavelength-nm", type=positive_float, default=DEFAULTS.wavelength_nm)
    imp.add_argument(
        "--unit",
        choices=get_args(OPDUnit),
        default="nm",
        help="unit of the OPD maps (default nm)",
    )
    imp.add_argument("--reference", metavar="REF", help="hologram without cells (--holograms)")
    imp.add_argument(
        "--sample-half",
        default=DEFAULTS.sample_half,
        choices=choices_of(ReconstructionConfig, "sample_half"),
    )
    imp.add_argument(
        "--crop-pixel-size-um", type=positive_float, default=CROP_DEFAULTS.crop_pixel_size_um
    )
    imp.add_argument("--backend", default="auto", choices=BACKENDS)
    merge = actions.add_parser(
        "merge",
        help="join crop datasets (e.g. one import per pure cell line) into one labelled set",
        description="Join crop datasets of one crop size, pixel size and wavelength. The "
        "classes are the labels used, sorted by name (or --classes); a class two files "
        "share is one class; unlabeled crops stay unlabeled; qc columns that not every "
        "file has are left out.",
    )
    add_common_options(merge)
    merge.add_argument("files", nargs="+", metavar="FILE.h5")
    merge.add_argument("--out", required=True, metavar="FILE.h5")
    merge.add_argument(
        "--classes", metavar="A,B,...", help="the class names in label order (default: sorted)"
    )


def run(args: argparse.Namespace) -> None:
    if args.action == "info":
        print_info(Path(args.file), args.json)
        return
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.action == "merge":
        merge_files([Path(f) for f in args.files], Path(args.out), classes)
        return
    archive_only = {
        "--since": args.since,
        "--until": args.until,
        "--all-views": args.all_views or None,
        "--keep-flagged": args.keep_flagged or None,
    }
    if args.archive:
        if args.labels is not None:
            raise CommandError("--archive takes --label NAME (one label for the run), not --labels")
        if args.label is None:
            raise CommandError("--archive needs --label NAME: the cell line of the run")
        import_archive_dataset(
            Path(args.archive),
            Path(args.out),
            args.label,
            since=parse_time(args.since, "--since") if args.since else None,
            until=parse_time(args.until, "--until") if args.until else None,
            all_views=args.all_views,
            keep_flagged=args.keep_flagged,
        )
        return
    given = [option for option, value in archive_only.items() if value is not None]
    if given:
        raise CommandError(f"{given[0]} goes with --archive")
    if args.rtdc:
        import_rtdc_dataset(
            Path(args.rtdc),
            Path(args.out),
            label=args.label,
            labels=Path(args.labels) if args.labels else None,
            classes=classes,
            wavelength_nm=args.wavelength_nm if _given(args.wavelength_nm) else None,
        )
        return
    if args.label is not None:
        raise CommandError(
            "--label goes with --rtdc and --archive; --maps and --holograms take --labels CSV"
        )
    if args.labels is None:
        raise CommandError("--labels CSV is required with --maps and --holograms")
    import_dataset(
        out=Path(args.out),
        labels=Path(args.labels),
        maps=Path(args.maps) if args.maps else None,
        holograms=Path(args.holograms) if args.holograms else None,
        pixel_size_um=args.pixel_size_um,
        wavelength_nm=args.wavelength_nm,
        unit=args.unit,
        classes=classes,
        sample_half=args.sample_half,
        reference=Path(args.reference) if args.reference else None,
        crop_pixel_size_um=args.crop_pixel_size_um,
        backend=args.backend,
    )


def _given(wavelength_nm: float) -> bool:
    return wavelength_nm != DEFAULTS.wavelength_nm


def import_rtdc_dataset(
    rtdc: Path,
    out: Path,
    label: str | None,
    labels: Path | None,
    classes: list[str] | None,
    wavelength_nm: float | None,
) -> None:
    """``topgan dataset import --rtdc``: a dclab file's phase images as crops."""
    if label is not None and labels is not None:
        raise CommandError("give --label or --labels, not both")
    data = import_rtdc(rtdc, label, labels, classes, wavelength_nm)
    write_crop_dataset(out, data)
    print(
        f"wrote {len(data)} crops ({', '.join(data.class_names) or 'unlabeled'}) to {out}",
        file=sys.stderr,
    )


def import_archive_dataset(
    folder: Path,
    out: Path,
    label: str,
    since: float | None,
    until: float | None,
    all_views: bool,
    keep_flagged: bool,
) -> None:
    """``topgan dataset import --archive``: one run of a pure cell line, labelled."""
    data, picked = import_archive(folder, label, since, until, all_views, keep_flagged)
    write_crop_dataset(out, data)
    left_out = []
    if picked.flagged_crops:
        flags = ", ".join(f"{flag} {n}" for flag, n in picked.flagged.items() if n)
        verb = "kept" if keep_flagged else "left out"
        left_out.append(f"{picked.flagged_crops} QC-flagged {verb} ({flags})")
    if picked.other_views:
        left_out.append(f"{picked.other_views} other views of the same cells left out")
    if picked.unfinished:
        left_out.append(
            f"{picked.unfinished} file(s) still being written not read (stop the "
            "acquisition to complete them)"
        )
    print(
        f"wrote {len(data)} crops ({label}) of {picked.crops} archived in the window, from "
        f"{picked.files} file(s), to {out}" + "".join(f"; {part}" for part in left_out),
        file=sys.stderr,
    )


def merge_files(files: list[Path], out: Path, classes: list[str] | None) -> None:
    """``topgan dataset merge``."""
    parts = []
    for path in files:
        if not path.is_file():
            raise CommandError(f"{path} does not exist")
        try:
            parts.append((path, read_crop_dataset(path)))
        except (OSError, KeyError) as exc:
            raise CommandError(f"{path} is not a crop dataset: {exc}") from None
    data, left_out = merge_datasets(parts, classes)
    write_crop_dataset(out, data)
    counts = ", ".join(
        f"{name} {int((data.label == i).sum())}" for i, name in enumerate(data.class_names)
    )
    unlabeled = int((data.label < 0).sum())
    print(
        f"wrote {len(data)} crops ({counts}{f', unlabeled {unlabeled}' if unlabeled else ''}) "
        f"to {out}"
        + (f"; qc columns not in every file left out: {', '.join(left_out)}" if left_out else ""),
        file=sys.stderr,
    )


def summary(path: Path) -> dict[str, Any]:
    """What ``dataset info`` prints, as a dictionary."""
    if not path.is_file():
        raise CommandError(f"{path} does not exist")
    try:
        data = read_crop_dataset(path)
    except (OSError, KeyError) as exc:
        raise CommandError(f"{path} is not a crop dataset: {exc}") from exc
    counts = {name: int((data.label == i).sum()) for i, name in enumerate(data.class_names)}
    counts["unlabeled"] = int((data.label == -1).sum())
    opd = data.opd
    info: dict[str, Any] = {
        "file": str(path),
        "crops": len(data),
        "crop_shape": list(opd.shape[1:]),
        "pixel_size_um": data.pixel_size_um,
        "wavelength_nm": data.wavelength_nm,
        "class_names": data.class_names,
        "counts": counts,
        "opd_nm": {
            "min": float(opd.min()) if len(data) else None,
            "mean": float(opd.mean()) if len(data) else None,
            "max": float(opd.max()) if len(data) else None,
        },
        "source": data.source,
        "qc": {
            name: {
                "mean": float(np.nanmean(v)),
                "min": float(np.nanmin(v)),
                "max": float(np.nanmax(v)),
            }
            for name, v in data.qc.items()
            if len(v) and np.isfinite(np.asarray(v, dtype=np.float64)).any()
        },
    }
    return info


def print_info(path: Path, as_json: bool) -> None:
    info = summary(path)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    h, w = info["crop_shape"]
    print(
        f"{info['file']}: {info['crops']} crops of {h}x{w} px at {info['pixel_size_um']:g} um, "
        f"wavelength {info['wavelength_nm']:g} nm"
    )
    classes = ", ".join(f"{name}: {n}" for name, n in info["counts"].items())
    print(f"classes: {classes}")
    o = info["opd_nm"]
    if o["min"] is not None:
        print(f"OPD (nm): min {o['min']:.1f}, mean {o['mean']:.1f}, max {o['max']:.1f}")
    print(f"source: {info['source']}")
    for name, q in info["qc"].items():
        print(f"qc/{name}: mean {q['mean']:.4g} [{q['min']:.4g}, {q['max']:.4g}]")


def import_dataset(
    out: Path,
    labels: Path,
    maps: Path | None,
    holograms: Path | None,
    pixel_size_um: float | None,
    wavelength_nm: float,
    unit: OPDUnit,
    classes: list[str] | None,
    sample_half: SampleHalf,
    reference: Path | None,
    crop_pixel_size_um: float,
    backend: BackendName,
) -> None:
    if (maps is None) == (holograms is None):
        raise CommandError("give exactly one of --maps DIR or --holograms DIR")
    data: CropDataset
    if maps is not None:
        if pixel_size_um is None:
            raise CommandError("--pixel-size-um is required with --maps: the maps' pixel size")
        data = import_opd_maps(maps, labels, pixel_size_um, wavelength_nm, unit, classes)
    else:
        assert holograms is not None
        ref = read_hologram(reference).frames[0] if reference else None
        config = ReconstructionConfig(
            wavelength_nm=wavelength_nm,
            pixel_size_um=pixel_size_um or DEFAULTS.pixel_size_um,
            sample_half=sample_half,
        )
        processor = FrameProcessor(
            config,
            SegmentationConfig(crop_pixel_size_um=crop_pixel_size_um),
            backend_or_error(backend),
            ref,
        )
        data = import_holograms(holograms, labels, processor, classes, ProgressPrinter("holograms"))
    write_crop_dataset(out, data)
    print(
        f"wrote {len(data)} crops ({', '.join(data.class_names) or 'unlabeled'}) to {out}",
        file=sys.stderr,
    )


COMMAND = Command(
    name="dataset",
    help="inspect and import crop datasets",
    add_arguments=add_arguments,
    run=run,
    order=40,
)
