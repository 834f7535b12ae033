"""bench/gpu.py where there is no GPU: one line and exit 0 before anything is
installed; its install plan; and the whole script run with NumPy and the CPU
provider on both sides (``--self-check-cpu``), which proves that it runs, not that
the GPU path works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.gpu import CUPY_BUILD, gpu_distributions, install_steps, same_cells

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu.py"


def run_script(
    *args: str, path: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = str(path)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def fake_nvidia_smi(folder: Path, output: str, status: int) -> Path:
    folder.mkdir(exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\necho '{output}'\nexit {status}\n")
    tool.chmod(0o755)
    return folder


def test_without_nvidia_smi_one_line_and_exit_0(tmp_path):
    done = run_script(path=tmp_path)  # a PATH without nvidia-smi
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["No CUDA GPU here (nvidia-smi not found): nothing measured"]
    assert done.stderr == ""  # nothing installed: pip's step would be logged there


def test_no_device_is_no_gpu_and_a_failing_driver_an_error(tmp_path):
    none = fake_nvidia_smi(tmp_path / "none", "No devices were found", 6)
    done = run_script(path=none)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "No CUDA GPU here (nvidia-smi finds no device): nothing measured"
    ]
    assert done.stderr == ""

    message = "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."
    broken = fake_nvidia_smi(tmp_path / "broken", message, 9)
    done = run_script(path=broken)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"A GPU driver is installed but nvidia-smi fails: {message}: nothing measured"
    ]
    assert done.stderr == ""


def test_a_gpu_without_cupy_is_one_clear_error(tmp_path):
    gpu = fake_nvidia_smi(tmp_path, "GPU 0: NVIDIA Stand-in (UUID: GPU-0)", 0)
    done = run_script("--skip-install", path=gpu)
    assert done.returncode == 1
    assert len(done.stdout.splitlines()) == 1
    assert done.stdout.startswith("The GPU answers nvidia-smi but CuPy cannot run: CuPy")


def test_the_install_plan_follows_pyproject():
    needed, clashing = gpu_distributions()
    runtimes = {"onnxruntime", "onnxruntime-gpu"}
    assert {"topgan", "cupy-cuda13x"} <= needed
    # One ONNX Runtime build is wanted on this platform; the other clashes with it.
    assert len(needed & runtimes) == 1
    assert runtimes - needed <= clashing


@pytest.mark.parametrize(
    ("installed", "steps"),
    [
        ({"topgan", "cupy-cuda13x", "onnxruntime-gpu"}, []),
        ({"topgan", "onnxruntime-gpu"}, [["install", "--quiet", "-e", f"{REPO}[gpu]"]]),
        (
            # Both builds own the onnxruntime package: both go, the wanted one comes back.
            {"topgan", "cupy-cuda13x", "onnxruntime-gpu", "onnxruntime"},
            [
                ["uninstall", "--yes", "onnxruntime", "onnxruntime-gpu"],
                ["install", "--quiet", "-e", f"{REPO}[gpu]"],
            ],
        ),
        ({"cupy-cuda13x", "onnxruntime-gpu"}, [["install", "--quiet", "-e", f"{REPO}[gpu]"]]),
        (
            {"topgan", "cupy-cuda12x", "onnxruntime-gpu"},
            [["uninstall", "--yes", "cupy-cuda12x"], ["install", "--quiet", "-e", f"{REPO}[gpu]"]],
        ),
    ],
)
def test_install_steps(installed, steps):
    needed = {"topgan", "cupy-cuda13x", "onnxruntime-gpu"}
    clashing = {"onnxruntime"} | {
        n for n in installed if CUPY_BUILD.fullmatch(n) and n not in needed
    }
    assert install_steps(needed, clashing, installed) == steps


def test_cupy_builds_are_told_from_cupy_add_ons():
    builds = ["cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda110", "cupy-rocm-5-0"]
    assert all(CUPY_BUILD.fullmatch(n) for n in builds)
    assert not any(CUPY_BUILD.fullmatch(n) for n in ["cupy-xarray", "cupyx", "dask-cupy"])


def _frame(positions, rejected=None):
    return SimpleNamespace(
        cells=[SimpleNamespace(position_px=p) for p in positions], rejected=rejected or {}
    )


def test_same_cells_tells_cells_apart():
    frame = _frame([(10.0, 20.0), (50.0, 60.0)], {"clipped": 1})
    assert same_cells([frame], [_frame([(50.4, 59.7), (10.0, 20.2)], {"clipped": 1})])
    assert not same_cells([frame], [_frame([(10.0, 20.0), (52.0, 60.0)], {"clipped": 1})])
    assert not same_cells([frame], [_frame([(10.0, 20.0)], {"clipped": 1})])
    assert not same_cells([frame], [_frame([(10.0, 20.0), (50.0, 60.0)], {"touching": 1})])


def test_self_check_on_the_cpu_runs_the_whole_script(real_dir):
    done = run_script(
        "--self-check-cpu",
        "--quick",
        "--rates",
        "5",
        "--seconds",
        "1",
        "--pool",
        "4",
        "--real-dir",
        str(real_dir),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# GPU bench: none asked (--self-check-cpu)")
    assert lines[1] == "| what | case | numpy / CPU | numpy / CPU | left / right | check |"
    rows = [line.split(" | ") for line in lines[3:] if line.startswith("| ")]
    kinds = [row[0].removeprefix("| ") for row in rows]
    assert kinds.count("reconstruction agrees") == 6  # hl60 twice, tif, h5, simulated twice
    bundled = list((Path(__file__).resolve().parents[2] / "models").glob("*/model.onnx"))
    assert kinds.count("probabilities agree") == len(bundled) == 4  # every bundled model
    assert kinds.count("reconstruction frames/s") == 4
    assert kinds.count("classifier cells/s") == 3
    assert kinds.count("camera loop frames/s") == 2  # 5 frames/s, and the best rate
    checks = [row for row in rows if row[0].endswith("agree") or row[0].endswith("agrees")]
    assert all(row[-1].endswith("pass |") for row in checks), checks
    assert all("OPD 0 nm RMS" in row[-1] for row in checks[:6])  # both sides are NumPy
    assert f"{6 + len(bundled)} of {6 + len(bundled)} checks passed" in done.stdout
    loop = rows[-2]
    assert loop[1].startswith("asked 5/s")
    assert "dropped" in loop[2]
    assert "dropped" in loop[3]
