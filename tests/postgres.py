"""A throw-away PostgreSQL server on 127.0.0.1: a fresh cluster in a temporary folder.

The tests run the results store against one (``tests/service/test_postgres.py``), and
``bench/store.py --postgres auto`` measures it on one; both start and stop it here.
It takes Debian's server binaries (``/usr/lib/postgresql/<version>/bin``, the
newest version installed) and, since PostgreSQL refuses to run as root, runs them as
the ``postgres`` user when started by root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.service.conftest import free_port

#: Where Debian installs the server binaries, one folder per major version.
BIN_GLOB = "/usr/lib/postgresql/*/bin/initdb"
MISSING = "PostgreSQL server binaries are missing: install Debian's postgresql (make tools does)"


def server_bin_dir() -> Path | None:
    """The newest installed server's ``bin`` folder, None when none is installed."""
    found = sorted(glob.glob(BIN_GLOB), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def throwaway_server(timeout_s: float = 120) -> Iterator[str]:
    """Start a new cluster (trust authentication, superuser ``postgres``, listening on
    a free port of 127.0.0.1 only) and yield its ``postgres`` database's SQLAlchemy
    URL; on leaving, however left (an error, Ctrl+C), stop the server and delete the
    cluster. Raises FileNotFoundError (:data:`MISSING`) when no server is installed,
    CalledProcessError when initdb or pg_ctl fails (its output in ``stderr``)."""
    bin_dir = server_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError(MISSING)
    root = Path(tempfile.mkdtemp(prefix="topgan-pg-"))
    data = root / "data"
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        port = free_port()
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        subprocess.run(_as_postgres(initdb), check=True, capture_output=True, timeout=timeout_s)
        options = f"-p {port} -k {root} -h 127.0.0.1"
        start = [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log")]
        subprocess.run(
            _as_postgres([*start, "-o", options, "start"]),
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():  # started, or half way through starting
            stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
            subprocess.run(_as_postgres(stop), capture_output=True, timeout=timeout_s, check=False)
        shutil.rmtree(root, ignore_errors=True)
