"""The ``topgan`` entry point; it only dispatches.

Each command is a :class:`acquisition.commandline.Command` in the package whose work
it does, registered in pyproject.toml under the ``topgan.commands`` entry points.
Only the chosen command's module is loaded (``topgan --help`` loads them all to list
them), so that, for example, ``topgan serve`` never imports PyTorch. Bad input ends
with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from acquisition.commandline import Command, run_command

GROUP = "topgan.commands"


class _Parser(argparse.ArgumentParser):
    """A parser that records its own name in the parsed arguments, so that an error
    names the command that failed ("topgan simulate cells: error: ..."). Sub-command
    parsers take their parent's class (argparse's default ``parser_class``), and the
    deepest one parsed sets the name last."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(command_prog=self.prog)


def _options() -> argparse.ArgumentParser:
    """The options before the command word (each command takes them too)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed for anything random a command does (default 0)",
    )
    options.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return options


def installed_commands() -> dict[str, EntryPoint]:
    """The ``topgan.commands`` entry points by command name."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=GROUP):
        found.setdefault(point.name, point)
    return found


def _chosen(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The installed command that ``argv`` names, read as the full parser reads it;
    None when it names none (no command, --help, an unknown word or option), and
    then every command is loaded for the full parser to answer."""
    top = argparse.ArgumentParser(add_help=False, exit_on_error=False, parents=[_options()])
    top.add_argument("rest", nargs=argparse.REMAINDER)
    try:
        known, unknown = top.parse_known_args(argv)
    except argparse.ArgumentError:
        return None
    if unknown or not known.rest or known.rest[0] not in names:
        return None
    return str(known.rest[0])


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="topgan",
        description="Stain-free cancer-cell classification from off-axis holograms.",
        parents=[_options()],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    installed = installed_commands()
    chosen = _chosen(sys.argv[1:] if argv is None else argv, list(installed))
    points = [installed[chosen]] if chosen else list(installed.values())
    commands: list[Command] = sorted(
        (point.load() for point in points), key=lambda c: (c.order, c.name)
    )
    parser = build_parser(commands)
    if not commands:
        parser.error(f"no commands are installed (entry points {GROUP}): pip install -e .")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run_command(args.run, args, args.command_prog)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
