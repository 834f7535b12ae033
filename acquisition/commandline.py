"""What every ``topgan`` command shares: its shape, its errors, its common options.

A command is a :class:`Command` in the package that does its work (acquisition,
training, service), registered under the ``topgan.commands`` entry points;
``service.cli`` only dispatches to it. Bad input ends with one line on stderr and
exit status 2 (:func:`run_command`). This module lives in ``acquisition``, the
lowest package, so that every package's commands can import it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .backend import ArrayBackend, BackendName, BackendUnavailableError, get_backend

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

BACKENDS: tuple[str, ...] = get_args(BackendName)


class CommandError(Exception):
    """A command cannot do its work; the message is the one line the user sees."""


@dataclass(frozen=True)
class Command:
    """One ``topgan`` command.

    name : the command word (also its entry point's name)
    help : the line ``topgan --help`` shows for it
    add_arguments : fills the command's parser (options, sub-commands)
    run : does the work with the parsed arguments; raises :class:`CommandError`
        (or ValueError, OSError) with a one-line message on bad input
    order : where ``topgan --help`` lists it, in ascending order (entry points
        come in no fixed order)
    description : the text above the options in ``topgan NAME --help``
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    order: int
    description: str | None = None


def run_command(
    run: Callable[[argparse.Namespace], None], args: argparse.Namespace, prog: str
) -> int:
    """Run a command; its bad input becomes one line ``PROG: error: ...`` and exit 2."""
    try:
        run(args)
    except (CommandError, ValueError, OSError) as exc:
        # ValueError covers the packages' own input errors (HologramError,
        # UnreadableFileError, ...), whose messages already say what is wrong.
        message = " ".join(str(exc).split())  # always exactly one line
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """--seed and -q on a command too (SUPPRESS keeps the top-level value when the
    option is given before the command)."""
    parser.add_argument(
        "--seed",
        type=int,
        default=argparse.SUPPRESS,
        help="random seed for anything random the command does (default 0)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="log warnings only"
    )


def choices_of(config: type, field: str) -> tuple[Any, ...]:
    """The values that the Literal-typed ``field`` of the dataclass ``config`` takes:
    an option's choices, from the config that receives it."""
    hint = get_type_hints(config)[field]
    if get_origin(hint) is not Literal:
        raise TypeError(f"{config.__name__}.{field} is {hint}, not a Literal")
    return get_args(hint)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_time(text: str, option: str) -> float:
    """An option's time as Unix seconds, given as Unix seconds or an ISO 8601 date and
    time (UTC unless it names its zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"{option}: expected Unix seconds or an ISO 8601 time, got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def carrier(text: str) -> tuple[float, float]:
    try:
        ky, kx = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected KY,KX in cycles per pixel, e.g. 0.2,0.25; got {text!r}"
        ) from None
    return ky, kx


def backend_or_error(name: BackendName) -> ArrayBackend:
    """The array backend ``name``, or a one-line error saying why it cannot run."""
    try:
        return get_backend(name)
    except BackendUnavailableError as exc:
        raise CommandError(f"--backend {name}: {exc}") from None


class ProgressPrinter:
    """Call with (done, total): a live line on a terminal, else one line per 10 %."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.start = time.monotonic()
        self.last_decile = -1
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        line = f"{self.label}: {done}/{total} ({rate:.1f}/s)"
        if self.tty:
            end = "\n" if done >= total else ""
            print(f"\r{line}", end=end, file=sys.stderr, flush=True)
            return
        decile = done * 10 // max(total, 1)
        if decile != self.last_decile:
            self.last_decile = decile
            print(line, file=sys.stderr, flush=True)
