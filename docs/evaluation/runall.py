"""Runs what the few-label report still lacks, and publishes each run as it ends.

For every task of ``fewlabels.TASKS`` and every row of ``fewlabels.RUNS`` whose run is
not yet under ``<task>/runs/``: simulates the data it needs (the evaluation set, the
unlabeled pool, the ceiling's labeled set, with the seeds the report names), pretrains
the task's own GAN or SSL trunk when the row needs it, runs ``topgan evaluate`` with
the protocol of the report, and copies the finished run into ``<task>/runs/``; then
the ceiling (``ceiling.py``) where ``<task>/ceiling.json`` is missing. The commands
are the report's own (``fewlabels.py`` prints them beside each table). Rerun
``fewlabels.py`` afterwards to write the report.

Work files (datasets, trunks, unfinished runs, logs) go to ``--work``, where every
command runs (so the commands the runs record name files as the report does); a step that
finished leaves a marker there, so a stopped run resumes where it was (a step cut
short starts again). ``--jobs`` independent steps run at once, each on one thread
(OMP_NUM_THREADS=1: two jobs on two cores). Steps are taken in the order of the
report's rows, task by task within a row, so the baselines land first.

Usage: ``python docs/evaluation/runall.py --work DIR [--jobs 2] [--tasks mcf10a-mcf7]
[--runs cnn,ssl-own,ceiling] [--dry-run]``
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from fewlabels import RUNS, SERVED_SIZE, TASKS, Row, Task, served_method  # noqa: E402

SIZES = "10,20,40,80,160"
SPERM = REPO / "models" / "pretrained" / "sperm-dcgan"


@dataclass
class Step:
    name: str
    command: list[str]
    needs: list[str] = field(default_factory=list)
    publish: tuple[Path, Path] | None = None  # (the finished run, where it goes)


def _topgan(*args: str) -> list[str]:
    """A topgan command line: the one beside this interpreter (its venv), else PATH's."""
    beside = Path(sys.executable).parent / "topgan"
    return [str(beside) if beside.exists() else "topgan", *args]


def positive(task: Task) -> str:
    return task.lines.split(",")[1]


def served_step(task: Task, work: Path) -> Step | None:
    """The served model's method at :data:`SERVED_SIZE` on the task's folds, unless its
    run is committed (``runs/<method>-640``)."""
    method, trunk = served_method()
    run = f"{method}-{SERVED_SIZE}"
    t = task.folder
    if (HERE / t / "runs" / run).exists() or trunk == "own":
        return None  # an own-pool trunk would need its pretraining step first
    pretrained = ["--pretrained", str(SPERM)] if trunk == "sperm" else []
    out = f"runs/{t}/{run}"
    command = _topgan("--seed", "0", "evaluate", "--data", f"{t}.h5", "--methods", method)
    command += [*pretrained, "--train-sizes", str(SERVED_SIZE), "--folds", "5"]
    command += ["--positive", positive(task), "--preset", "cpu", "--out", out]
    return Step(f"{t}:served", command, [f"{t}:data"], (work / out, HERE / t / "runs" / run))


def steps_for(
    task: Task, rows: list[Row], work: Path, ceiling_too: bool = True, served_too: bool = True
) -> list[Step]:
    """The steps ``task`` still needs for ``rows``, the data and trunks first."""
    data, pool, ceiling = task.seeds
    lines = task.lines
    t = task.folder
    steps = [
        Step(
            f"{t}:data",
            _topgan(
                "-q",
                "--seed",
                str(data),
                "simulate",
                "cells",
                "--cell-line",
                lines,
                "--count",
                "400",
                "--out",
                f"{t}.h5",
            ),
        ),
    ]
    trunks: dict[str, str] = {}
    for row in rows:
        if (HERE / t / "runs" / row.run / "results.json").exists():
            continue
        if row.trunk == "own":
            kind = "gan" if row.method.startswith("topgan") else "ssl"
            if kind not in trunks:
                if f"{t}:pool" not in {s.name for s in steps}:
                    steps.append(
                        Step(
                            f"{t}:pool",
                            _topgan(
                                "-q",
                                "--seed",
                                str(pool),
                                "simulate",
                                "cells",
                                "--cell-line",
                                lines,
                                "--count",
                                "1500",
                                "--out",
                                f"{t}-pool.h5",
                            ),
                        )
                    )
                steps.append(
                    Step(
                        f"{t}:{kind}",
                        _topgan(
                            "--seed",
                            "1",
                            "train",
                            kind,
                            "--data",
                            f"{t}-pool.h5",
                            "--out",
                            f"{kind}-{t}",
                            "--preset",
                            "cpu",
                        ),
                        [f"{t}:pool"],
                    )
                )
                trunks[kind] = f"{kind}-{t}"
            pretrained = ["--pretrained", trunks[kind]]
            needs = [f"{t}:data", f"{t}:{kind}"]
        elif row.trunk == "sperm":
            pretrained, needs = ["--pretrained", str(SPERM)], [f"{t}:data"]
        else:
            pretrained, needs = [], [f"{t}:data"]
        if any(s.name == f"{t}:{row.run}" for s in steps):
            continue  # one run, several rows (knn+features)
        out = f"runs/{t}/{row.run}"
        methods = ",".join(r.method for r in rows if r.run == row.run)
        steps.append(
            Step(
                f"{t}:{row.run}",
                _topgan(
                    "--seed",
                    "0",
                    "evaluate",
                    "--data",
                    f"{t}.h5",
                    "--methods",
                    methods,
                    *pretrained,
                    "--train-sizes",
                    SIZES,
                    "--folds",
                    "5",
                    "--positive",
                    positive(task),
                    "--preset",
                    "cpu",
                    "--out",
                    out,
                ),
                needs,
                (work / out, HERE / t / "runs" / row.run),
            )
        )
    if ceiling_too and not (HERE / t / "ceiling.json").exists():
        steps += [
            Step(
                f"{t}:ceiling-data",
                _topgan(
                    "-q",
                    "--seed",
                    str(ceiling),
                    "simulate",
                    "cells",
                    "--cell-line",
                    lines,
                    "--count",
                    "1000",
                    "--out",
                    f"{t}-ceiling.h5",
                ),
            ),
            Step(
                f"{t}:ceiling-model",
                _topgan(
                    "--seed",
                    "0",
                    "train",
                    "classifier",
                    "--method",
                    "cnn",
                    "--data",
                    f"{t}-ceiling.h5",
                    "--preset",
                    "cpu",
                    "--name",
                    "ceiling",
                    "--out",
                    f"ceiling-{t}",
                ),
                [f"{t}:ceiling-data"],
            ),
            Step(
                f"{t}:ceiling",
                [
                    sys.executable,
                    str(HERE / "ceiling.py"),
                    "--model",
                    f"ceiling-{t}",
                    "--data",
                    f"{t}.h5",
                    "--positive",
                    positive(task),
                    "--out",
                    str(HERE / t / "ceiling.json"),
                ],
                [f"{t}:data", f"{t}:ceiling-model"],
            ),
        ]
    served = served_step(task, work) if served_too else None
    if served is not None:
        steps.append(served)
    return steps


def ordered(steps: list[Step]) -> list[Step]:
    """Data and trunks before the runs that need them; the runs in the report's row
    order, task after task within a row; ceilings last."""
    rank = {row.run: i for i, row in enumerate(RUNS)}

    def key(step: Step) -> tuple[int, int]:
        task, what = step.name.split(":")
        order = [t.folder for t in TASKS].index(task)
        if what in rank:
            return (1 + rank[what], order)
        if what.startswith("ceiling"):
            return (len(RUNS) + 1, order)
        if what == "served":
            return (len(RUNS) + 2, order)
        return (0, order)

    return sorted(steps, key=key)


def run(steps: list[Step], work: Path, jobs: int) -> int:
    """Run ``steps`` in ``work``, ``jobs`` at once, each once its ``needs`` are done;
    publish each finished run. 0 when every step is done, else 1."""
    done_dir = work / "done"
    logs = work / "logs"
    done_dir.mkdir(parents=True, exist_ok=True)
    logs.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }

    def finished(name: str) -> bool:
        return (done_dir / name.replace(":", "__")).exists()

    pending = [s for s in steps if not finished(s.name)]
    running: dict[str, tuple[subprocess.Popen[bytes], Step, float]] = {}
    failed = False
    while pending or running:
        for name, (process, step, began) in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            seconds = time.monotonic() - began
            if process.returncode:
                print(
                    f"{time.strftime('%H:%M:%S')} FAILED {name} (its log: "
                    f"{logs / name.replace(':', '__')})",
                    flush=True,
                )
                failed = True
                continue
            if step.publish is not None:
                source, target = step.publish
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(source, target)
            (done_dir / name.replace(":", "__")).write_text(f"{seconds:.0f}\n")
            print(f"{time.strftime('%H:%M:%S')} done {name} in {seconds / 60:.1f} min", flush=True)
        if failed:
            pending = [s for s in pending if all(finished(n) for n in s.needs)]
        ready = [s for s in pending if all(finished(n) for n in s.needs)]
        while ready and len(running) < jobs:
            step = ready.pop(0)
            pending.remove(step)
            print(f"{time.strftime('%H:%M:%S')} start {step.name}", flush=True)
            with open(logs / step.name.replace(":", "__"), "wb") as log:
                running[step.name] = (
                    subprocess.Popen(
                        step.command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work
                    ),
                    step,
                    time.monotonic(),
                )
        if pending and not running and not ready:
            break  # what is left needs a step that failed
        time.sleep(5)
    return 1 if failed or pending else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the work files")
    parser.add_argument("--jobs", type=int, default=2, help="steps at once (one thread each)")
    parser.add_argument("--tasks", help="task folders, comma-separated (default: all)")
    parser.add_argument(
        "--runs",
        help="run folders, ceiling and/or served (the served model's method at "
        f"{SERVED_SIZE} crops), comma-separated (default: all of them)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run none")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    tasks = [t for t in TASKS if not args.tasks or t.folder in args.tasks.split(",")]
    rows = [r for r in RUNS if not args.runs or r.run in args.runs.split(",")]
    asked = args.runs.split(",") if args.runs else []
    ceiling_too, served_too = not asked or "ceiling" in asked, not asked or "served" in asked
    if not tasks or not (rows or ceiling_too or served_too):
        parser.error("no task or no run matches")
    work = args.work.resolve()
    steps = ordered([s for t in tasks for s in steps_for(t, rows, work, ceiling_too, served_too)])
    if args.dry_run:
        for s in steps:
            print(f"{s.name}: {shlex.join(s.command)}")
        return 0
    return run(steps, work, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
