"""``topgan train gan`` and ``topgan train classifier`` (the only commands that import PyTorch)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..errors import CommandError
from ..progress import ProgressPrinter

DRY_RUN_STEPS = 2


def _command_line() -> str:
    return "topgan " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_train(args: argparse.Namespace) -> None:
    try:
        import torch
    except ImportError:
        raise CommandError(
            "training needs PyTorch: pip install -e '.[train]' (torch==2.13.0, the CPU build here)"
        ) from None
    from training import config as cfg

    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        if args.what == "gan":
            from training.gan import train_gan

            gan = cfg.gan_preset(args.preset)
            changes = {"epochs": args.epochs}
            if args.dry_run:
                changes.update(epochs=1, max_steps=DRY_RUN_STEPS, batch_size=8)
            gan = cfg.override(gan, **changes)
            weights = train_gan(
                args.data, Path(args.out), gan, seed=args.seed, resume=args.resume,
                progress=ProgressPrinter("GAN steps"), command=_command_line(),
            )  # fmt: skip
            print(f"wrote {weights}", file=sys.stderr)
        else:
            from training.classifier import METHODS, train_classifier

            if args.method not in METHODS:
                available = ", ".join(METHODS)
                raise CommandError(
                    f"method {args.method!r} is not available yet; trainable now: {available}"
                )
            clf = cfg.classifier_preset(args.preset)
            changes = {"epochs": args.epochs}
            if args.dry_run:
                changes.update(epochs=1, max_steps=DRY_RUN_STEPS, batch_size=4)
            clf = cfg.override(clf, **changes)
            out = train_classifier(
                args.method, Path(args.data), Path(args.out), clf, args.preset,
                gan_dir=Path(args.gan) if args.gan else None, seed=args.seed,
                train_size=args.train_size, name=args.name,
                progress=ProgressPrinter("classifier steps"), command=_command_line(),
                int8=args.int8,
            )  # fmt: skip
            print(f"wrote the model directory {out}", file=sys.stderr)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None


def run_evaluate(args: argparse.Namespace) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CommandError("evaluation needs PyTorch: pip install -e '.[train]'") from None
    from training import config as cfg
    from training.evaluate import evaluate

    def numbers(text: str, what: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise CommandError(f"{what} must be comma-separated integers, got {text!r}") from None
        if not values or min(values) < 2:
            raise CommandError(f"{what} must be integers of at least 2, got {text!r}")
        return values

    clf = cfg.classifier_preset(args.preset)
    changes = {"epochs": args.epochs}
    if args.dry_run:
        changes.update(epochs=1, max_steps=DRY_RUN_STEPS, batch_size=4)
    clf = cfg.override(clf, **changes)
    results = evaluate(
        Path(args.data), Path(args.out), [m.strip() for m in args.methods.split(",") if m.strip()],
        numbers(args.train_sizes, "--train-sizes"), args.folds, clf, args.preset,
        gan_dir=Path(args.gan) if args.gan else None, positive=args.positive, seed=args.seed,
        progress=ProgressPrinter("trainings"), command=_command_line(),
    )  # fmt: skip
    print(
        f"wrote {len(results)} results, report.md and learning-curves.png to {args.out}",
        file=sys.stderr,
    )
