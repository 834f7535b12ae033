"""The ``topgan`` entry point: it finds the commands by their entry points, loads only
the one that runs, and ``topgan serve`` never imports PyTorch."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from acquisition.commandline import Command
from service.cli import installed_commands
from tests.acquisition.test_cli_reconstruct import run_cli

COMMANDS = ["serve", "reconstruct", "simulate", "dataset", "export", "train", "evaluate"]
OWNERS = {
    "serve": "service",
    "reconstruct": "acquisition",
    "simulate": "acquisition",
    "dataset": "acquisition",
    "export": "service",
    "train": "training",
    "evaluate": "training",
}

# Runs main(argv) in a fresh interpreter, then prints which of the project's command
# modules (and whether torch) it imported, as JSON on the last line of stdout.
PROBE = """
import json, sys
{setup}
from service.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
loaded = sorted(
    m for m in sys.modules
    if m == "torch" or m.startswith(("training", "acquisition.commands", "service.serve"))
)
print(json.dumps({{"status": status, "loaded": loaded}}))
"""


def probe(*argv: str, setup: str = "") -> tuple[int, list[str], subprocess.CompletedProcess[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    return report["status"], report["loaded"], result


def test_every_entry_point_is_the_command_of_its_name():
    points = installed_commands()
    assert sorted(points) == sorted(COMMANDS)
    for name, point in points.items():
        command = point.load()
        assert isinstance(command, Command)
        assert command.name == name
        assert point.module.split(".")[0] == OWNERS[name]


def test_help_lists_every_command_in_order_without_pytorch():
    status, loaded, result = probe("--help")
    assert status == 0
    assert "torch" not in loaded
    # Each command's line starts with exactly four spaces (its help wraps deeper).
    listed = re.findall(r"^ {4}(\S+)", result.stdout, re.MULTILINE)
    assert listed == COMMANDS
    assert "reconstruct holograms into OPD maps" in result.stdout


def test_only_the_chosen_command_is_loaded():
    status, loaded, result = probe("-q", "serve", "--help")
    assert status == 0
    assert loaded == ["service.serve"]
    assert "--camera CAMERA" in result.stdout
    status, loaded, _ = probe("--seed", "3", "dataset", "info", "--help")
    assert status == 0
    assert loaded == ["acquisition.commands", "acquisition.commands.dataset"]


def test_topgan_serve_never_imports_pytorch(models_root, tmp_path):
    # A real serve up to the socket: settings, the app and its start-up (the model,
    # the store), with uvicorn's server replaced by one request in-process.
    setup = (
        "import uvicorn\n"
        "from fastapi.testclient import TestClient\n"
        "def run(app, **kwargs):\n"
        "    with TestClient(app) as client:\n"
        "        assert client.get('/health').status_code == 200\n"
        "uvicorn.run = run\n"
    )
    status, loaded, result = probe(
        "-q",
        "serve",
        "--camera",
        "none",
        "--model",
        str(models_root / "m1"),
        "--db",
        f"sqlite:///{tmp_path / 'results.sqlite'}",
        setup=setup,
    )
    assert status == 0, result.stderr
    assert loaded == ["service.serve"]


def test_an_unknown_command_is_an_argparse_error():
    result = run_cli("nope")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "topgan: error: argument COMMAND: invalid choice: 'nope' (choose from "
        + ", ".join(f"'{name}'" for name in COMMANDS)
        + ")"
    )
