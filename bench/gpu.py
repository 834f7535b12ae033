"""The GPU path proven on a machine with an NVIDIA GPU: CuPy and CUDA against the CPU.

One run, one table:

1. checks: CuPy reconstruction against NumPy's on the real holograms (the tests'
   three, each with its background as reference when it has one and with the
   background fitted) and on simulated SW480/SW620 frames of 1280x1024 (with the
   reference, and fitted): OPD within 0.5 nm RMS, the same phase sign, the same
   cells (count, positions within a pixel, the same rejections); ONNX Runtime's
   CUDA execution provider against the CPU provider on every bundled model:
   probabilities within 1e-4 on simulated crops of its classes;
2. speed, side by side: reconstruction frames/s (1024x1024 and 1280x1024, W x H,
   batch 1 and 8; bench/reconstruction.py's frames and interleaved rounds), the
   classifier's cells/s (the served model, batch 1, 32 and 256), and the camera loop
   with the simulator camera at rising rates (bench/pipeline.py's run: workers,
   queue, tracking, micro-batcher, store) until a rate drops a frame, each side.

Before anything else it asks ``nvidia-smi`` for a GPU: without one it says so in one
line and exits 0, having installed and measured nothing. With one it makes the
running interpreter's environment able to run the GPU path: it removes what would
clash (plain ``onnxruntime`` beside ``onnxruntime-gpu``: both own the
``onnxruntime`` package, so both go and ``onnxruntime-gpu`` comes back; any CuPy
build other than the ``gpu`` extra's) and runs ``pip install -e '.[gpu]'`` when
something is missing (``--skip-install``: never). Exit status 0 when every check
passes, 1 when one fails or cannot run. The speeds are reported, never judged.

``--self-check-cpu`` runs the whole script with NumPy and the CPU provider on both
sides, without looking for a GPU or installing: it proves that the script runs
(the checks pass trivially), not that the GPU path works.

Usage: ``python bench/gpu.py [--real-dir DIR] [--skip-install] [--quick]
[--rates 60,90,...] [--seconds S] [--workers N] [--self-check-cpu]``
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # ahead of bench/, whose service.py would shadow the package

if TYPE_CHECKING:
    import numpy as np

    from acquisition.backend import ArrayBackend
    from acquisition.reconstruction import ReconstructionConfig

#: The checks' tolerances (issue 15): OPD maps, class probabilities, cell positions.
OPD_RMS_TOLERANCE_NM = 0.5
PROBABILITY_TOLERANCE = 1e-4
POSITION_TOLERANCE_PX = 1.0
#: The real holograms the tests read (tests/realdata.py).
REAL_FILES = (
    "hl60_hologram_with_bg.npz",
    "single_cell_hologram.tif",
    "single_cell_hologram_meta.h5",
)
#: Frame shapes measured, (H, W); printed as the camera's W x H.
SHAPES = ((1024, 1024), (1024, 1280))
RECONSTRUCTION_BATCHES = (1, 8)
CLASSIFIER_BATCHES = (1, 32, 256)
DEFAULT_RATES = "30,60,90,120,150,200,250,300,400"
NVIDIA_SMI_TIMEOUT_S = 30.0
#: The distributions that install the ``cupy`` package: from source, or a CUDA or
#: ROCm build.
CUPY_BUILD = re.compile(r"cupy(-cuda\d+x?|-rocm-[\d-]+)?")


@dataclass(frozen=True)
class Side:
    """One side of the comparison: where reconstruction and inference run."""

    backend: Literal["cupy", "numpy"]
    provider: Literal["cuda", "cpu"]

    @property
    def label(self) -> str:
        return f"{self.backend} / {self.provider.upper()}"


GPU = Side("cupy", "cuda")
CPU = Side("numpy", "cpu")


@dataclass(frozen=True)
class Row:
    """One line of the table; ``ok`` is None for a measurement (never judged)."""

    what: str
    case: str
    device: str
    host: str
    ratio: str = "-"
    check: str = "-"
    ok: bool | None = None


# -- before anything is imported or installed ---------------------------------------------


@dataclass(frozen=True)
class GpuProbe:
    """What ``nvidia-smi -L`` says: the GPUs, or why there are none."""

    gpus: tuple[str, ...]
    message: str
    broken: bool = False  # nvidia-smi is there but fails: a driver to fix


def probe_gpu(nvidia_smi: str | None = None) -> GpuProbe:
    """Ask ``nvidia-smi -L`` (on PATH unless given) for the machine's GPUs."""
    tool = nvidia_smi or shutil.which("nvidia-smi")
    if tool is None:
        return GpuProbe((), "No CUDA GPU here (nvidia-smi not found)")
    try:
        done = subprocess.run(
            [tool, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return GpuProbe(
            (), f"A GPU driver is installed but nvidia-smi does not answer ({exc})", broken=True
        )
    output = (done.stdout + done.stderr).strip()
    gpus = tuple(line.strip() for line in done.stdout.splitlines() if line.startswith("GPU "))
    if done.returncode == 0 and gpus:
        return GpuProbe(gpus, "; ".join(gpus))
    if "no devices were found" in output.lower() or (done.returncode == 0 and not gpus):
        return GpuProbe((), "No CUDA GPU here (nvidia-smi finds no device)")
    first = output.splitlines()[0] if output else f"exit status {done.returncode}"
    return GpuProbe((), f"A GPU driver is installed but nvidia-smi fails: {first}", broken=True)


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return canonicalize_name(Requirement(requirement).name)


def gpu_distributions(pyproject: Path = REPO / "pyproject.toml") -> tuple[set[str], set[str]]:
    """(what the GPU path needs here, what must not be installed beside it), from
    pyproject.toml: the project, its ``gpu`` extra, and whichever ONNX Runtime build
    it takes on this platform (the other build clashes with it, and so does any CuPy
    build that is not the extra's: they all own the ``cupy`` package)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    needed = {_name(project["name"])} | {_name(r) for r in project["optional-dependencies"]["gpu"]}
    runtimes = [
        Requirement(r) for r in project["dependencies"] if _name(r).startswith("onnxruntime")
    ]
    for requirement in runtimes:
        if requirement.marker is None or requirement.marker.evaluate():
            needed.add(_name(str(requirement)))
    clashing = {_name(str(r)) for r in runtimes} - needed
    installed = {_name(d.metadata["Name"]) for d in importlib.metadata.distributions()}
    clashing |= {n for n in installed if CUPY_BUILD.fullmatch(n) and n not in needed}
    return needed, clashing


def install_steps(needed: set[str], clashing: set[str], installed: set[str]) -> list[list[str]]:
    """The pip commands (arguments after ``pip``) that give the GPU path what it needs.

    A clashing ONNX Runtime build shares the ``onnxruntime`` package's files with the
    wanted one: removing it alone would break the other, so both go, and the
    editable install brings the wanted one back.
    """
    remove = sorted(clashing & installed)
    if any(n.startswith("onnxruntime") for n in remove):
        remove += sorted(n for n in needed & installed if n.startswith("onnxruntime"))
    steps = [["uninstall", "--yes", *remove]] if remove else []
    if remove or not needed <= installed:
        steps.append(["install", "--quiet", "-e", f"{REPO}[gpu]"])
    return steps


def ensure_installed(log: Callable[[str], None]) -> str:
    """Run :func:`install_steps` with this interpreter's pip; what was done.

    In a bare environment (a new venv: no ``packaging`` to read the requirements
    with) the project and its ``gpu`` extra are installed first, then the plan is
    made as anywhere else.
    """
    began = time.perf_counter()
    done: list[list[str]] = []

    def pip(step: list[str]) -> None:
        log(f"pip {' '.join(step)}")
        subprocess.run([sys.executable, "-m", "pip", *step], check=True)
        importlib.invalidate_caches()
        done.append(step)

    if importlib.util.find_spec("packaging") is None:
        pip(["install", "--quiet", "-e", f"{REPO}[gpu]"])
    needed, clashing = gpu_distributions()
    installed = {_name(d.metadata["Name"]) for d in importlib.metadata.distributions()}
    for step in install_steps(needed, clashing, installed):
        pip(step)
    if not done:
        return f"nothing to install ({', '.join(sorted(needed))} present)"
    ran = "; ".join("pip " + " ".join(step) for step in done)
    return f"{ran} ({time.perf_counter() - began:.0f} s)"


# -- checks ----------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


@dataclass(frozen=True)
class ReconstructionCase:
    """Holograms to reconstruct on both backends, as a caller would."""

    name: str
    config: ReconstructionConfig
    reference: np.ndarray | None
    frames: np.ndarray


def real_cases(real_dir: Path) -> list[ReconstructionCase]:
    """Each real hologram with its own background as the reference when the file
    carries one, and with the background fitted; the wavelength and pixel size from
    the file when it says them (as ``topgan reconstruct`` takes them)."""
    from acquisition.io import read_hologram
    from acquisition.reconstruction import ReconstructionConfig

    defaults = ReconstructionConfig()
    cases = []
    for name in REAL_FILES:
        hologram = read_hologram(real_dir / name)
        config = ReconstructionConfig(
            wavelength_nm=hologram.wavelength_nm or defaults.wavelength_nm,
            pixel_size_um=hologram.pixel_size_um or defaults.pixel_size_um,
        )
        if hologram.reference is not None:
            cases.append(
                ReconstructionCase(
                    f"{name}, reference", config, hologram.reference, hologram.frames
                )
            )
        cases.append(
            ReconstructionCase(f"{name}, fitted background", config, None, hologram.frames)
        )
    return cases


def simulated_cases(frames: int, shape: tuple[int, int] = (1024, 1280)) -> list[ReconstructionCase]:
    """``frames`` simulated SW480/SW620 holograms of the flipping interferometer (one
    batch), with the instrument's reference and with the background fitted."""
    import numpy as np

    from acquisition.reconstruction import ReconstructionConfig
    from acquisition.simulator.scene import FlowSimulator, SceneConfig

    scene = SceneConfig(shape=shape)
    simulator = FlowSimulator(scene, ["sw480", "sw620"], seed=1)
    holograms = np.stack([simulator.frame(i).hologram for i in range(frames)])
    config = ReconstructionConfig(
        wavelength_nm=scene.optics.wavelength_nm,
        pixel_size_um=scene.optics.pixel_size_um,
        sample_half=scene.sample_half,
    )
    size = f"{frames} simulated {shape[1]}x{shape[0]}"
    return [
        ReconstructionCase(f"{size}, reference", config, simulator.reference, holograms),
        ReconstructionCase(f"{size}, fitted background", config, None, holograms),
    ]


def same_cells(device: Sequence[Any], host: Sequence[Any]) -> bool:
    """Whether two segmentations (one per frame) kept the same cells, within
    :data:`POSITION_TOLERANCE_PX`, and rejected the same objects for the same reasons."""
    for d, h in zip(device, host, strict=True):
        if len(d.cells) != len(h.cells) or d.rejected != h.rejected:
            return False
        for a, b in zip(
            sorted(c.position_px for c in d.cells),
            sorted(c.position_px for c in h.cells),
            strict=True,
        ):
            if max(abs(a[0] - b[0]), abs(a[1] - b[1])) > POSITION_TOLERANCE_PX:
                return False
    return True


def compare_reconstruction(
    case: ReconstructionCase, device: ArrayBackend, host: ArrayBackend
) -> Row:
    """One case through the frame processor on both backends: OPD, sign, cells."""
    import numpy as np

    from acquisition.frames import FrameProcessor
    from acquisition.segmentation import SegmentationConfig

    results = [
        FrameProcessor(case.config, SegmentationConfig(), backend, case.reference).process(
            case.frames
        )
        for backend in (device, host)
    ]
    d, h = results
    diff = d.maps.opd_nm.astype(np.float64) - h.maps.opd_nm
    rms = float(np.sqrt(np.mean(diff**2)))
    cells = same_cells(d.segmentations, h.segmentations)
    ok = rms <= OPD_RMS_TOLERANCE_NM and d.maps.sign == h.maps.sign and cells
    described = [
        f"{len(r.cells)} cells, {sum(sum(s.rejected.values()) for s in r.segmentations)} "
        f"rejected, sign {r.maps.sign:+d}"
        for r in results
    ]
    return Row(
        "reconstruction agrees",
        case.name,
        described[0],
        described[1],
        check=(
            f"OPD {rms:.3g} nm RMS (max {float(np.abs(diff).max()):.3g}), "
            f"{'same cells' if cells else 'cells differ'}: {_verdict(ok)}"
        ),
        ok=ok,
    )


def check_reconstruction(
    device: ArrayBackend, host: ArrayBackend, real_dir: Path, frames: int
) -> list[Row]:
    cases = real_cases(real_dir) + simulated_cases(frames)
    return [compare_reconstruction(case, device, host) for case in cases]


def bundled_models() -> list[Path]:
    return sorted(p.parent for p in (REPO / "models").glob("*/model.onnx"))


def model_crops(manifest: Any, per_class: int, seed: int = 0) -> np.ndarray:
    """Simulated crops of the model's classes (its cell lines; SW480 when a class is
    not a simulated line), at its input size and pixel size."""
    from acquisition.simulator.datasets import simulate_direct
    from acquisition.simulator.phantoms import ALL_LINES

    lines = [c for c in manifest.classes if c in ALL_LINES] or ["sw480"]
    _, size, _ = manifest.input_shape
    data = simulate_direct(
        lines, per_class, seed=seed, crop_size=size, crop_pixel_size_um=manifest.pixel_size_um
    )
    opd: np.ndarray = data.opd
    return opd


def check_providers(device: Side, host: Side, models: list[Path], per_class: int) -> list[Row]:
    """Each model's probabilities on both execution providers."""
    import numpy as np

    from models.manifest import ModelError
    from models.runtime import ModelRuntime

    rows = []
    for directory in models:
        reference = ModelRuntime(directory, host.provider)
        crops = model_crops(reference.manifest, per_class)
        case = f"{directory.name} ({len(crops)} simulated crops)"
        try:
            runtime = ModelRuntime(directory, device.provider)
        except ModelError as exc:
            rows.append(Row("probabilities agree", case, f"cannot run: {exc}", "-", ok=False))
            continue
        p_device, p_host = runtime.predict(crops), reference.predict(crops)
        gap = float(np.abs(p_device - p_host).max())
        same = bool((p_device.argmax(1) == p_host.argmax(1)).all())
        ok = gap <= PROBABILITY_TOLERANCE
        rows.append(
            Row(
                "probabilities agree",
                case,
                runtime.providers[0],
                reference.providers[0],
                check=(
                    f"max diff {gap:.2g}, {'same' if same else 'different'} classes: {_verdict(ok)}"
                ),
                ok=ok,
            )
        )
    return rows


# -- speed ------------------------------------------------------------------------------------


def _ratio(device: float, host: float) -> str:
    return f"{device / host:.2f}x" if host > 0 and math.isfinite(device / host) else "-"


def measure_reconstruction(
    device: ArrayBackend, host: ArrayBackend, rounds: int, calls: int
) -> list[Row]:
    """Frames/s of ``Reconstructor.reconstruct`` (reference subtraction, unwrapping,
    background, OPD back on the host) on both backends, in interleaved rounds."""
    import numpy as np

    from acquisition.reconstruction import ReconstructionConfig, Reconstructor
    from bench.reconstruction import Case, interleaved, simulate

    rows = []
    for shape in SHAPES:
        hologram, reference = simulate(shape)
        config = ReconstructionConfig(sample_half="left")
        cases: dict[str, Case] = {}
        for side, backend in (("device", device), ("host", host)):
            reconstructor = Reconstructor(config, backend, reference=reference)
            for batch in RECONSTRUCTION_BATCHES:
                frames = hologram if batch == 1 else np.stack([hologram] * batch)
                cases[f"{side} {batch}"] = (
                    partial(reconstructor.reconstruct, frames),
                    max(1, calls // batch),
                )
        seconds = interleaved(cases, rounds)
        for batch in RECONSTRUCTION_BATCHES:
            on_device = batch / seconds[f"device {batch}"]
            on_host = batch / seconds[f"host {batch}"]
            rows.append(
                Row(
                    "reconstruction frames/s",
                    f"{shape[1]}x{shape[0]}, batch {batch}",
                    f"{on_device:.1f}",
                    f"{on_host:.1f}",
                    _ratio(on_device, on_host),
                )
            )
    return rows


def measure_classifier(model: Path, device: Side, host: Side, rounds: int, calls: int) -> list[Row]:
    """Cells/s of ``ModelRuntime.predict`` (normalisation included) on both providers."""
    import numpy as np

    from bench.reconstruction import Case, interleaved
    from models.manifest import ModelError
    from models.runtime import ModelRuntime

    host_runtime = ModelRuntime(model, host.provider)
    # The speed does not depend on what the crops show: a few, repeated to the batch.
    crops = np.resize(
        model_crops(host_runtime.manifest, 16), (max(CLASSIFIER_BATCHES), *host_runtime.crop_shape)
    )
    try:
        device_runtime = ModelRuntime(model, device.provider)
    except ModelError as exc:
        return [Row("classifier cells/s", model.name, f"cannot run: {exc}", "-", ok=False)]
    cases: dict[str, Case] = {}
    for side, runtime in (("device", device_runtime), ("host", host_runtime)):
        for batch in CLASSIFIER_BATCHES:
            cases[f"{side} {batch}"] = (
                partial(runtime.predict, crops[:batch]),
                max(1, calls * 8 // batch),
            )
    seconds = interleaved(cases, rounds)
    rows = []
    for batch in CLASSIFIER_BATCHES:
        on_device = batch / seconds[f"device {batch}"]
        on_host = batch / seconds[f"host {batch}"]
        rows.append(
            Row(
                "classifier cells/s",
                f"{model.name}, batch {batch}",
                f"{on_device:.0f}",
                f"{on_host:.0f}",
                _ratio(on_device, on_host),
            )
        )
    return rows


def measure_camera_loop(
    device: Side,
    host: Side,
    rates: list[float],
    seconds: float,
    workers: int,
    pool: int,
    log: Callable[[str], None],
    flow: bool = True,
    warmup_s: float = 5.0,
) -> list[Row]:
    """The camera loop (bench/pipeline.py's run) fed by the simulator camera at each
    rate in turn, each side until a rate drops a frame or is not delivered: a pool of
    ``pool`` frames of bench/pipeline.py's continuous flow (``flow``; else independent
    frames), each run measured after ``warmup_s`` (worker processes start, CuPy
    initialises, the geometry is built)."""
    import numpy as np

    from acquisition.cameras import SimulatedCamera
    from acquisition.simulator.scene import SceneConfig
    from bench.pipeline import FLOW, run, simulated

    camera = SimulatedCamera(
        ["sw480", "sw620"],
        SceneConfig(shape=(1024, 1024)),
        pool_frames=pool,
        seed=0,
        flow=FLOW if flow else None,
    )
    try:
        camera.open()
    except ValueError as exc:  # a pool too short for the flow to loop
        return [Row("camera loop frames/s", f"--pool {pool}", f"cannot run: {exc}", "-", ok=False)]
    cells = float(np.mean(camera.cells_per_frame))
    sides = (device, host)
    results: tuple[dict[float, dict[str, float]], ...] = ({}, {})
    with tempfile.TemporaryDirectory() as tmp:
        for side, found in zip(sides, results, strict=True):
            for rate in rates:
                log(f"camera loop on {side.label} at {rate:g} frames/s")
                folder = Path(tmp) / f"{len(found)}-{side.backend}-{id(found)}"
                folder.mkdir()
                r = run(
                    simulated(camera, rate),
                    rate,
                    seconds,
                    workers,
                    folder,
                    backend=side.backend,
                    provider=side.provider,
                    warmup_s=warmup_s,
                )
                found[rate] = r
                if r["dropped"] or r["fps"] < 0.95 * rate:
                    break

    def cell(found: dict[float, dict[str, float]], rate: float) -> str:
        r = found.get(rate)
        if r is None:
            return "- (a lower rate dropped)"
        return f"{r['fps']:.1f} ({r['dropped']:.0f} dropped, p99 {r['p99_ms']:.0f} ms)"

    rows = []
    on_device, on_host = results
    for rate in rates:
        if rate not in on_device and rate not in on_host:
            break
        d, h = on_device.get(rate), on_host.get(rate)
        rows.append(
            Row(
                "camera loop frames/s",
                f"asked {rate:g}/s, 1024x1024, {cells:.1f} cells a frame, {workers} workers",
                cell(on_device, rate),
                cell(on_host, rate),
                _ratio(d["fps"], h["fps"]) if d and h else "-",
            )
        )

    def best(found: dict[float, dict[str, float]]) -> float:
        return max((rate for rate, r in found.items() if not r["dropped"]), default=0.0)

    rows.append(
        Row(
            "camera loop frames/s",
            f"highest asked rate without a drop ({seconds:g} s each)",
            f"{best(on_device):g}",
            f"{best(on_host):g}",
            _ratio(best(on_device), best(on_host)),
        )
    )
    return rows


# -- the table --------------------------------------------------------------------------------


def table(rows: list[Row], device: Side, host: Side) -> str:
    head = ["what", "case", device.label, host.label, "left / right", "check"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.what, r.case, r.device, r.host, r.ratio, r.check]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--real-dir",
        type=Path,
        help="the real holograms (default: where the tests find them, tests/realdata.py)",
    )
    parser.add_argument("--skip-install", action="store_true", help="never run pip")
    parser.add_argument(
        "--self-check-cpu",
        action="store_true",
        help="NumPy and the CPU provider on both sides, no GPU needed: proves the script runs",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few frames and rounds, independent frames in the camera loop (a smoke run)",
    )
    parser.add_argument("--rates", default=DEFAULT_RATES, help="camera loop rates, frames/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="camera loop run per rate")
    parser.add_argument("--workers", type=int, default=2, help="camera loop worker processes")
    parser.add_argument(
        "--pool",
        type=int,
        default=64,
        help="distinct frames the camera cycles (the continuous flow needs at least 62)",
    )
    args = parser.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates must be comma-separated numbers, got {args.rates!r}")
    if not rates or min(rates) <= 0 or args.seconds <= 0 or args.workers < 1 or args.pool < 1:
        parser.error("--rates, --seconds, --workers and --pool must be positive")
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:5.0f} s] {message}", file=sys.stderr, flush=True)

    if args.self_check_cpu:
        device, host = CPU, CPU
        gpus, installed = "none asked (--self-check-cpu)", "nothing (--self-check-cpu)"
    else:
        probe = probe_gpu()
        if not probe.gpus:
            print(f"{probe.message}: nothing measured")
            return 1 if probe.broken else 0
        device, host = GPU, CPU
        gpus = probe.message
        try:
            installed = "skipped (--skip-install)" if args.skip_install else ensure_installed(log)
        except subprocess.CalledProcessError as exc:
            print(f"{' '.join(exc.cmd[1:])} failed (exit status {exc.returncode}): see above")
            return 1

    import logging

    import onnxruntime as ort

    from acquisition.backend import BackendUnavailableError, cpu_count, get_backend
    from models.runtime import cuda_status
    from service.settings import DEFAULT_MODEL

    logging.basicConfig(level=logging.WARNING)
    host_backend = get_backend(host.backend)
    try:
        device_backend = get_backend(device.backend)
    except BackendUnavailableError as exc:
        print(f"The GPU answers nvidia-smi but CuPy cannot run: {exc}")
        return 1
    cuda_ok, cuda_why = cuda_status()
    if device.provider == "cuda" and not cuda_ok:
        log(f"the CUDA provider cannot run ({cuda_why}): its checks fail, the loop uses the CPU")
    from tests.realdata import RealDataError, damaged, real_data_dir

    try:
        real_dir = args.real_dir or real_data_dir()
    except RealDataError as exc:
        print(f"The real holograms: {exc}; or give --real-dir")
        return 1
    if problems := damaged(real_dir):
        print(f"--real-dir does not hold the real holograms: {'; '.join(problems)}")
        return 1
    quick = args.quick
    rounds, calls = (2, 2) if quick else (10, 8)

    rows: list[Row] = []
    log("checking reconstruction")
    rows += check_reconstruction(device_backend, host_backend, real_dir, 2 if quick else 8)
    log("checking the execution providers")
    rows += check_providers(device, host, bundled_models(), 16 if quick else 64)
    log("measuring reconstruction")
    rows += measure_reconstruction(device_backend, host_backend, rounds, calls)
    log("measuring the classifier")
    rows += measure_classifier(DEFAULT_MODEL, device, host, rounds, calls)
    loop_device = device if device.provider != "cuda" or cuda_ok else Side(device.backend, "cpu")
    loop = measure_camera_loop(
        loop_device,
        host,
        rates,
        args.seconds,
        args.workers,
        args.pool,
        log,
        flow=not quick,
        warmup_s=2.0 if quick else 5.0,
    )
    if loop_device != device:
        loop = [replace(r, case=f"{r.case}; left: {loop_device.label}") for r in loop]
    rows += loop

    failed = [r for r in rows if r.ok is False]
    checks = [r for r in rows if r.ok is not None]
    print(
        f"# GPU bench: {gpus}; {device_backend.device} against {host_backend.device}; "
        f"onnxruntime {ort.__version__} (CUDA provider: {cuda_why}); {cpu_count()} cores; "
        f"install: {installed}"
    )
    print(table(rows, device, host))
    print(
        f"\n{len(checks) - len(failed)} of {len(checks)} checks passed "
        f"(OPD within {OPD_RMS_TOLERANCE_NM:g} nm RMS, same sign and cells; probabilities "
        f"within {PROBABILITY_TOLERANCE:g}); {time.perf_counter() - began:.0f} s in all"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
