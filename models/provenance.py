"""How files that are committed or shipped (a model's ``manifest.json``, a GAN's
``gan.json``, an evaluation's ``results.json``) record the paths they were made from:
never as absolute paths of the machine, nor as paths that climb out of where they
were made.

A path beside the written directory (in the folder that holds it, as the bundled
models and the pretrained GAN share ``models/``) is recorded relative to that
directory: ``../pretrained/sperm-dcgan``. Anything else is recorded by its name; the
sha256 recorded beside it says which file it was.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute against the working directory, '..' resolved (lexically:
    symbolic links are left as they are)."""
    return Path(os.path.abspath(path))


def portable_path(path: str | Path, base: Path, within: Path | None = None) -> str:
    """``path`` as recorded in a file written to the directory ``base``: relative to
    ``base`` (with '/') when it lies inside ``within`` (by default ``base``'s parent
    folder), else its name alone."""
    target, home = _absolute(path), _absolute(base)
    root = home.parent if within is None else _absolute(within)
    if root != Path(root.anchor) and target.is_relative_to(root):
        return Path(os.path.relpath(target, home)).as_posix()
    return target.name


def _names_a_place(value: str) -> bool:
    """An argument that can only say where it was run: absolute, or climbing with '..'."""
    path = Path(value)
    return path.is_absolute() or ".." in path.parts


def portable_command(command: str, cwd: Path | None = None) -> str:
    """A recorded command line with each argument that is an absolute path or climbs
    with '..' (also as ``--option=PATH``) rewritten: relative to the working directory
    ``cwd`` (default: the current one) when below it, else its name. Every other
    argument stays as typed."""
    cwd = Path.cwd() if cwd is None else cwd
    try:
        words = shlex.split(command)
    except ValueError:  # not a shell-quoted command line: nothing to rewrite safely
        return command
    out = []
    for word in words:
        option, sep, value = word.partition("=") if word.startswith("-") else ("", "", word)
        if value and _names_a_place(value):
            value = portable_path(value, cwd, within=cwd)
        out.append(option + sep + value)
    return " ".join(shlex.quote(w) for w in out)
