"""``topgan train gan`` and ``topgan train classifier`` (the only commands that import PyTorch)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from acquisition.commandline import CommandError, ProgressPrinter

DRY_RUN_STEPS = 2


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
    from training.config import override

    changes = {"epochs": args.epochs}
    if args.dry_run:
        changes.update(epochs=1, max_steps=DRY_RUN_STEPS, batch_size=dry_run_batch)
    if getattr(args, "channels", None):
        changes["network"] = override(config.network, channels=args.channels)
    return override(config, **changes)


def run_train(args: argparse.Namespace) -> None:
    _require_torch("training")
    from training import config as cfg

    try:
        if args.what == "gan":
            from training.gan import train_gan

            gan = _configure(cfg.gan_preset(args.preset), args, dry_run_batch=8)
            weights = train_gan(
                args.data,
                Path(args.out),
                gan,
                seed=args.seed,
                resume=args.resume,
                progress=ProgressPrinter("GAN steps"),
                command=_command_line(),
            )
            print(f"wrote {weights}", file=sys.stderr)
        else:
            from training.classifier import train_classifier

            clf = _configure(cfg.classifier_preset(args.preset), args, dry_run_batch=4)
            out = train_classifier(
                args.method,
                Path(args.data),
                Path(args.out),
                clf,
                args.preset,
                gan_dir=Path(args.gan) if args.gan else None,
                seed=args.seed,
                train_size=args.train_size,
                name=args.name,
                progress=ProgressPrinter("classifier steps"),
                command=_command_line(),
                int8=args.int8,
            )
            print(f"wrote the model directory {out}", file=sys.stderr)
    except (FileNotFoundError, ImportError) as exc:
        # ImportError: an optional training package is missing; the message says which.
        raise CommandError(str(exc)) from None


def run_evaluate(args: argparse.Namespace) -> None:
    _require_torch("evaluation")
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

    clf = _configure(cfg.classifier_preset(args.preset), args, dry_run_batch=4)
    try:
        results = evaluate(
            Path(args.data),
            Path(args.out),
            [m.strip() for m in args.methods.split(",") if m.strip()],
            numbers(args.train_sizes, "--train-sizes"),
            args.folds,
            clf,
            args.preset,
            gan_dir=Path(args.gan) if args.gan else None,
            positive=args.positive,
            seed=args.seed,
            progress=ProgressPrinter("trainings"),
            command=_command_line(),
            int8_methods=[m.strip() for m in (args.int8 or "").split(",") if m.strip()],
        )
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    print(
        f"wrote {len(results)} results, report.md and learning-curves.png to {args.out}",
        file=sys.stderr,
    )
