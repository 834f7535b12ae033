"""The ``topgan`` command line.

Each command's package is imported only when that command runs, so that, for
example, the service never imports PyTorch. Bad input ends with one line on
stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from acquisition.commandline import add_common_options, carrier, positive_float, run_command

logger = logging.getLogger("topgan")

CHANNELS_HELP = (
    "1: the OPD map (default); 3: the paper's colour encoding (a jet colour map of the "
    "normalised OPD, inside the networks)"
)


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common)
    return common


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        parents=[_common()],
        help="reconstruct holograms into OPD maps (and optionally single-cell crops)",
        description="Reconstruct off-axis holograms into OPD maps in nm: DIR/<stem>.npy with "
        "the pixel size and reconstruction details in DIR/<stem>.json.",
    )
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
    p.set_defaults(handler=_run_reconstruct)


def _run_reconstruct(args: argparse.Namespace) -> None:
    from .commands.reconstruct import ReconstructOptions, run_reconstruct

    run_reconstruct(ReconstructOptions.from_args(args))


def _shape(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HxW in pixels, e.g. 1024x1280; got {text!r}"
        ) from None
    return h, w


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulated holograms and crop datasets")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in ("holograms", "cells"):
        k = kinds.add_parser(
            kind,
            parents=[_common()],
            help="hologram frames (TIFF) with reference and ground truth"
            if kind == "holograms"
            else "a crop dataset (HDF5) through the full instrument path",
        )
        k.add_argument(
            "--cell-line",
            required=True,
            metavar="L[,L...]",
            help="sperm, hs895-sk, hs895-t, sw480, sw620 (several: comma-separated)",
        )
        if kind == "holograms":
            k.add_argument("--frames", type=int, required=True, metavar="N")
            k.add_argument("--out", required=True, metavar="DIR")
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
            k.add_argument("--crop-pixel-size-um", type=positive_float, default=0.25)
        k.add_argument(
            "--shape",
            type=_shape,
            default=(1024, 1280),
            metavar="HxW",
            help="camera frame (default 1024x1280)",
        )
        k.add_argument("--bit-depth", type=int, choices=(8, 12), default=8)
        k.add_argument("--cells-per-frame", type=float, default=4.0)
    p.set_defaults(handler=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .commands.simulate import parse_lines, scene_config, write_cells, write_holograms

    lines = parse_lines(args.cell_line)
    scene = scene_config(args.shape, args.bit_depth, args.cells_per_frame)
    if args.kind == "holograms":
        write_holograms(Path(args.out), lines, args.frames, args.seed, scene)
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


def _add_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="inspect and import crop datasets")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser("info", parents=[_common()], help="summary of a crop dataset")
    info.add_argument("file", metavar="FILE.h5")
    info.add_argument("--json", action="store_true", help="print JSON")
    imp = actions.add_parser(
        "import",
        parents=[_common()],
        help="a folder of OPD maps or holograms plus a labels CSV -> a crop dataset",
        description="Import single-cell OPD maps (--maps: .npy, .tif, .mat, one size) or raw "
        "holograms (--holograms: reconstructed and segmented here). The labels CSV has the "
        "columns 'file' and 'label' (empty label: unlabeled).",
    )
    src = imp.add_mutually_exclusive_group(required=True)
    src.add_argument("--maps", metavar="DIR")
    src.add_argument("--holograms", metavar="DIR")
    imp.add_argument("--labels", required=True, metavar="CSV")
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
    imp.add_argument("--wavelength-nm", type=positive_float, default=632.8)
    imp.add_argument(
        "--unit",
        choices=("nm", "um", "rad"),
        default="nm",
        help="unit of the OPD maps (default nm)",
    )
    imp.add_argument("--reference", metavar="REF", help="hologram without cells (--holograms)")
    imp.add_argument(
        "--sample-half", default="full", choices=("left", "right", "top", "bottom", "full")
    )
    imp.add_argument("--crop-pixel-size-um", type=positive_float, default=0.25)
    imp.add_argument("--backend", default="auto", choices=("auto", "numpy", "cupy"))
    p.set_defaults(handler=_run_dataset)


def _run_dataset(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .commands.dataset import import_dataset, print_info

    if args.action == "info":
        print_info(Path(args.file), args.json)
        return
    import_dataset(
        out=Path(args.out),
        labels=Path(args.labels),
        maps=Path(args.maps) if args.maps else None,
        holograms=Path(args.holograms) if args.holograms else None,
        pixel_size_um=args.pixel_size_um,
        wavelength_nm=args.wavelength_nm,
        unit=args.unit,
        classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
        sample_half=args.sample_half,
        reference=Path(args.reference) if args.reference else None,
        crop_pixel_size_um=args.crop_pixel_size_um,
        backend=args.backend,
    )


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        parents=[_common()],
        help="the service: REST API and metrics (and the camera loop)",
        description="Start the service. Every option is also a setting (TOPGAN_ environment "
        "variables, or a TOML file with --config).",
    )
    p.add_argument("--camera", help="emulator, basler, replay:PATH, simulator or none (API only)")
    p.add_argument("--model", metavar="DIR", help="model directory (default: models/sw480-sw620)")
    p.add_argument(
        "--db", metavar="URL", help="database URL (default: sqlite:///data/results.sqlite)"
    )
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8000)")
    p.add_argument("--config", metavar="FILE.toml", help="settings file")
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .commands.serve import run_serve

    run_serve(
        Path(args.config) if args.config else None,
        {
            "camera": args.camera,
            "model_dir": args.model,
            "database_url": args.db,
            "host": args.host,
            "port": args.port,
        },
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train models (PyTorch; the 'train' extra)")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    gan = what.add_parser("gan", parents=[_common()], help="DCGAN pretraining on unlabeled crops")
    gan.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="FILE.h5|DIR",
        help="crop files, or folders of them (e.g. a crop archive)",
    )
    gan.add_argument("--out", required=True, metavar="DIR")
    gan.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    clf = what.add_parser(
        "classifier", parents=[_common()], help="one classifier, exported to ONNX"
    )
    clf.add_argument(
        "--method",
        required=True,
        choices=("knn", "cnn", "cnn-aug", "imagenet", "topgan", "topgan-aug"),
    )
    clf.add_argument("--data", required=True, metavar="FILE.h5")
    clf.add_argument("--gan", metavar="DIR", help="the pretrained DCGAN (topgan methods)")
    clf.add_argument("--out", required=True, metavar="MODEL_DIR")
    clf.add_argument(
        "--train-size", type=int, help="train on this many crops (balanced); default all"
    )
    clf.add_argument("--name", help="the model's name in its manifest")
    clf.add_argument(
        "--int8",
        action="store_true",
        help="quantise to int8 (calibrated on the training crops); kept only if the "
        "validation accuracy stays within 0.5 points of fp32",
    )
    for k in (gan, clf):
        k.add_argument(
            "--preset",
            choices=("paper", "cpu"),
            default="cpu",
            help="paper: the paper's exact settings; cpu: minutes on 2 cores (default)",
        )
        k.add_argument("--epochs", type=int, help="override the preset's epochs")
        k.add_argument("--channels", type=int, choices=(1, 3), help=CHANNELS_HELP)
        k.add_argument("--dry-run", action="store_true", help="a couple of steps only (tests)")
    p.set_defaults(handler=_run_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=[_common()],
        help="the paper's protocol: K-fold cross-validation of several methods",
    )
    p.add_argument("--data", required=True, metavar="FILE.h5")
    p.add_argument("--gan", metavar="DIR", help="the pretrained DCGAN (topgan methods)")
    p.add_argument("--methods", required=True, metavar="M,...", help="e.g. knn,cnn,topgan")
    p.add_argument("--train-sizes", required=True, metavar="N,...", help="e.g. 10,20,40,80,160")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--positive", metavar="CLASS", help="the positive class (default: the last)")
    p.add_argument(
        "--int8",
        metavar="M,...",
        help="also score these methods' ONNX float and int8 models on each test fold",
    )
    p.add_argument("--preset", choices=("paper", "cpu"), default="cpu")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--channels", type=int, choices=(1, 3), help=CHANNELS_HELP)
    p.add_argument("--dry-run", action="store_true", help="a couple of steps per training (tests)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from .commands.train import run_evaluate

    run_evaluate(args)


def _run_train(args: argparse.Namespace) -> None:
    from .commands.train import run_train

    run_train(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topgan",
        description="Stain-free cancer-cell classification from off-axis holograms.",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed for anything random a command does (default 0)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(sub)
    _add_reconstruct(sub)
    _add_simulate(sub)
    _add_dataset(sub)
    _add_train(sub)
    _add_evaluate(sub)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    words = [
        args.command,
        getattr(args, "kind", None),
        getattr(args, "action", None),
        getattr(args, "what", None),
    ]
    return " ".join(["topgan", *(w for w in words if w)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run_command(args.handler, args, _command_name(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
