"""The ``topgan`` command line.

Each command's package is imported only when that command runs, so that, for
example, the service never imports PyTorch. Bad input ends with one line on
stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from .errors import CommandError

logger = logging.getLogger("topgan")

EXIT_BAD_INPUT = 2


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _carrier(text: str) -> tuple[float, float]:
    try:
        ky, kx = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected KY,KX in cycles per pixel, e.g. 0.2,0.25; got {text!r}"
        ) from None
    return ky, kx


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
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
        type=_positive_float,
        help="wavelength in nm (default: the file's metadata, else 632.8)",
    )
    p.add_argument(
        "--pixel-size-um",
        type=_positive_float,
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
        type=_carrier,
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
        type=_positive_float,
        default=0.25,
        help="pixel size of the 128x128 crops, um (default 0.25)",
    )
    p.set_defaults(handler=_run_reconstruct)


def _run_reconstruct(args: argparse.Namespace) -> None:
    from .commands.reconstruct import ReconstructOptions, run_reconstruct

    run_reconstruct(ReconstructOptions.from_args(args))


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
    _add_reconstruct(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Callable[[argparse.Namespace], None] = args.handler
    try:
        handler(args)
    except (CommandError, ValueError, OSError) as exc:
        # ValueError covers the packages' own input errors (HologramError,
        # UnreadableFileError, ...), whose messages already say what is wrong.
        message = " ".join(str(exc).split())  # always exactly one line
        print(f"topgan {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"topgan {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
