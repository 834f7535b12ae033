"""``topgan train gan``, ``topgan train ssl``, ``topgan train classifier`` and
``topgan evaluate``.

The only commands that import PyTorch, and only when they run: this module itself
does not, so that ``topgan --help`` works without the ``train`` extra.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from acquisition.commandline import Command, CommandError, ProgressPrinter, add_common_options
from models.methods import METHOD_NAMES

from .config import DEVICES, PRESETS, classifier_preset, gan_preset, override, ssl_preset

DRY_RUN_STEPS = 2

DEVICE_HELP = (
    "auto: CUDA when PyTorch sees a device, else the CPU (default); under torchrun "
    "each process takes the GPU of its LOCAL_RANK"
)

PRETRAINED_HELP = (
    "the pretrained trunk of the topgan and ssl methods: a folder of 'topgan train gan' "
    "(gan.pt) or 'topgan train ssl' (ssl.pt); --gan is its old name"
)

CHANNELS_HELP = (
    "1: the OPD map (default); 3: the paper's colour encoding (a jet colour map of the "
    "normalised OPD, inside the networks)"
)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    gan = what.add_parser("gan", help="DCGAN pretraining on unlabeled crops")
    ssl = what.add_parser(
        "ssl", help="self-supervised (SimCLR) pretraining of the classifier's trunk"
    )
    for k in (gan, ssl):
        add_common_options(k)
        k.add_argument(
            "--data",
            nargs="+",
            required=True,
            metavar="FILE.h5|DIR",
            help="crop files, or folders of them (e.g. a crop archive)",
        )
        k.add_argument("--out", required=True, metavar="DIR")
        k.add_argument(
            "--resume",
            action="store_true",
            help="continue from DIR/checkpoint.pt, on the data given now, until --epochs "
            "(a total, counted from the first run; default the preset's) are done",
        )
        k.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    clf = what.add_parser("classifier", help="one classifier, exported to ONNX")
    add_common_options(clf)
    clf.add_argument(
        "--method",
        required=True,
        choices=METHOD_NAMES,
    )
    clf.add_argument("--data", required=True, metavar="FILE.h5")
    clf.add_argument(
        "--pretrained", "--gan", dest="pretrained", metavar="DIR", help=PRETRAINED_HELP
    )
    clf.add_argument("--out", required=True, metavar="MODEL_DIR")
    clf.add_argument(
        "--train-size", type=int, help="train on this many crops (balanced); default all"
    )
    clf.add_argument("--name", help="the model's name in its manifest")
    clf.add_argument(
        "--int8",
        action="store_true",
        help="quantise to int8 (calibrated on the training crops); kept only if the "
        "validation accuracy stays within 0.5 points of fp32 (features: always fp32)",
    )
    for k in (gan, ssl, clf):
        k.add_argument(
            "--preset",
            choices=PRESETS,
            default="cpu",
            help="paper: the paper's exact settings; cpu: minutes on 2 cores (default)",
        )
        k.add_argument("--epochs", type=int, help="override the preset's epochs")
        k.add_argument("--channels", type=int, choices=(1, 3), help=CHANNELS_HELP)
        k.add_argument("--dry-run", action="store_true", help="a couple of steps only (tests)")
    for k in (gan, ssl):
        k.add_argument(
            "--force",
            action="store_true",
            help="train afresh into a DIR that already holds files (without it: refused, "
            "unless --resume finds DIR/checkpoint.pt)",
        )
    clf.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing model directory (without it: refused)",
    )


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    add_common_options(p)
    p.add_argument("--data", required=True, metavar="FILE.h5")
    p.add_argument("--pretrained", "--gan", dest="pretrained", metavar="DIR", help=PRETRAINED_HELP)
    p.add_argument("--methods", required=True, metavar="M,...", help="e.g. knn,features,cnn,topgan")
    p.add_argument("--train-sizes", required=True, metavar="N,...", help="e.g. 10,20,40,80,160")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--positive", metavar="CLASS", help="the positive class (default: the last)")
    p.add_argument(
        "--int8",
        metavar="M,...",
        help="also score these methods' ONNX float and int8 models on each test fold "
        "(network methods: not knn or features)",
    )
    p.add_argument("--preset", choices=PRESETS, default="cpu")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--channels", type=int, choices=(1, 3), help=CHANNELS_HELP)
    p.add_argument("--dry-run", action="store_true", help="a couple of steps per training (tests)")
    p.add_argument("--out", required=True, metavar="DIR")


def _command_line() -> str:
    return "topgan " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _require_torch(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CommandError(
            f"{what} needs PyTorch: pip install -e '.[train]' (torch==2.13.0, the CPU build here)"
        ) from None


def _configure(config: Any, args: argparse.Namespace, dry_run_batch: int) -> Any:
    """The preset's ``config`` with --epochs, or a couple of small steps for --dry-run."""
    changes = {"epochs": args.epochs}
    if args.dry_run:
        changes.update(max_steps=DRY_RUN_STEPS, batch_size=dry_run_batch)
        if not getattr(args, "resume", False):  # resumed: a couple of steps more
            changes["epochs"] = 1
    if getattr(args, "channels", None):
        changes["network"] = override(config.network, channels=args.channels)
    return override(config, **changes)


def _refuse_to_overwrite(out: Path, hint: str) -> None:
    """A one-line error if ``out`` exists and is not an empty directory, before
    anything of it is touched."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise CommandError(f"{out} already exists and is not empty: {hint}")


def run_train(args: argparse.Namespace) -> None:
    _require_torch("training")
    out = Path(args.out)
    if args.force:
        pass
    elif args.what == "classifier":
        _refuse_to_overwrite(out, "--force overwrites its model, or choose another --out")
    elif not (out / "checkpoint.pt").is_file():
        _refuse_to_overwrite(
            out, "it has no checkpoint.pt to resume; --force trains afresh into it"
        )
    elif not args.resume:
        _refuse_to_overwrite(out, "--resume continues its training, --force trains afresh into it")
    try:
        if args.what in ("gan", "ssl"):
            from .distributed import launched
            from .gan import train_gan
            from .ssl import train_ssl

            preset = gan_preset if args.what == "gan" else ssl_preset
            config = _configure(preset(args.preset), args, dry_run_batch=8)
            options: dict[str, Any] = {
                "seed": args.seed,
                "resume": args.resume,
                "progress": ProgressPrinter(f"{args.what.upper()} steps"),
                "command": _command_line(),
            }
            # Under torchrun every process checked --out above, and joining waits for
            # all of them: none writes before all have checked.
            with launched(args.device) as ddp:
                train = train_gan if args.what == "gan" else train_ssl
                weights = train(args.data, out, config, ddp=ddp, **options)
            if ddp.is_main:
                print(f"wrote {weights}", file=sys.stderr)
        else:
            from .classifier import train_classifier

            clf = _configure(classifier_preset(args.preset), args, dry_run_batch=4)
            out = train_classifier(
                args.method,
                Path(args.data),
                out,
                clf,
                args.preset,
                pretrained=Path(args.pretrained) if args.pretrained else None,
                seed=args.seed,
                train_size=args.train_size,
                name=args.name,
                progress=ProgressPrinter("classifier steps"),
                command=_command_line(),
                int8=args.int8,
            )
            from models.manifest import read_model_dir

            from .classifier import result_lines

            manifest, _ = read_model_dir(out)
            for line in result_lines(manifest, args.int8):
                print(line, file=sys.stderr)
            print(f"wrote the model directory {out}", file=sys.stderr)
    except (FileNotFoundError, ImportError) as exc:
        # ImportError: an optional training package is missing; the message says which.
        raise CommandError(str(exc)) from None


def run_evaluate(args: argparse.Namespace) -> None:
    _require_torch("evaluation")
    from .evaluate import evaluate

    def numbers(text: str, what: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise CommandError(f"{what} must be comma-separated integers, got {text!r}") from None
        if not values or min(values) < 2:
            raise CommandError(f"{what} must be integers of at least 2, got {text!r}")
        return values

    clf = _configure(classifier_preset(args.preset), args, dry_run_batch=4)
    try:
        results = evaluate(
            Path(args.data),
            Path(args.out),
            [m.strip() for m in args.methods.split(",") if m.strip()],
            numbers(args.train_sizes, "--train-sizes"),
            args.folds,
            clf,
            args.preset,
            pretrained=Path(args.pretrained) if args.pretrained else None,
            positive=args.positive,
            seed=args.seed,
            progress=ProgressPrinter("trainings"),
            command=_command_line(),
            int8_methods=[m.strip() for m in (args.int8 or "").split(",") if m.strip()],
        )
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    print(
        f"wrote {len(results)} results, report.md, learning-curves.png and reliability.png "
        f"to {args.out}",
        file=sys.stderr,
    )


TRAIN = Command(
    name="train",
    help="train models (PyTorch; the 'train' extra)",
    add_arguments=add_train_arguments,
    run=run_train,
    order=50,
)
EVALUATE = Command(
    name="evaluate",
    help="the paper's protocol: K-fold cross-validation of several methods",
    add_arguments=add_evaluate_arguments,
    run=run_evaluate,
    order=60,
)
