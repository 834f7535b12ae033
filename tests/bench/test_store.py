"""bench/store.py on a small store where no PostgreSQL server is found: one line says
so and SQLite is measured alone, every figure at each size with its ratio (that it
runs and prints, not how fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The bench run with the server's binaries looked for where there are none.
WITHOUT_POSTGRES = """
import runpy, sys
import tests.postgres
tests.postgres.BIN_GLOB = "/nonexistent/*/bin/initdb"
sys.argv = ["bench/store.py", *sys.argv[1:]]
runpy.run_path("bench/store.py", run_name="__main__")
"""


def test_without_postgres_sqlite_alone_every_figure_at_each_size():
    args = ["--sizes", "10500,11000", "--repeats", "1", "--postgres", "auto"]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_POSTGRES, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    missing = [line for line in done.stderr.splitlines() if "PostgreSQL" in line]
    assert missing == [
        "--postgres auto: PostgreSQL server binaries are missing: install Debian's"
        " postgresql (make tools does); SQLite only"
    ]
    lines = done.stdout.splitlines()
    assert "sqlite" in lines[0]
    assert "postgresql" not in done.stdout
    assert lines[1].split()[-3:] == ["0.0105M", "0.011M", "ratio"]
    figures = {line.split("|")[0].strip(): line.split("|")[1].split() for line in lines[2:]}
    assert set(figures) == {
        "summary",
        "counted",
        "page newest",
        "page oldest",
        "page label",
        "page source=api",
        "page uncertain",
        "page old reference",
        "page pipeline+label",
        "page window newest",
        "page window oldest",
        "insert 64 rows",
    }
    for figure, (small, large, ratio) in figures.items():
        assert float(small) > 0, figure
        assert float(large) > 0, figure
        assert ratio.endswith("x"), figure
