"""Which recipe should the bundled models be: the served recipe at its own scale.

The bundled models are trained by ``topgan train classifier`` on a whole 800-crop
dataset, not on 10-160 crops. This trains each method given exactly as the bundled
models are made (the command, its defaults, one thread) on a dev dataset, loads the
exported ONNX model as the service does (``models.runtime.ModelRuntime``) and scores
it on a second dev dataset of the same two lines, simulated with another seed (no
evaluation file is read): accuracy, with its 95 % Wilson interval, and the ECE of the
calibrated probabilities the model answers. Results go to ``served.json`` beside this
file (runs already there are skipped); the table is printed.

    topgan -q --seed 12 simulate cells --cell-line sw480,sw620 --count 400 --out sw-dev.h5
    topgan -q --seed 52 simulate cells --cell-line sw480,sw620 --count 400 --out sw-dev-test.h5
    OMP_NUM_THREADS=1 python docs/evaluation/dev/served.py --task sw --data sw-dev.h5 \\
        --test sw-dev-test.h5 --pretrained models/pretrained/sperm-dcgan \\
        --methods features,topgan-aug
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from models.runtime import ModelRuntime  # noqa: E402
from training.data import load_crops  # noqa: E402
from training.metrics import expected_calibration_error  # noqa: E402

#: The bundled models' seeds (models/README.md): the same for every method here.
SEEDS = {"sw": 3, "hs": 5}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of ``k`` successes in ``n``."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mcnemar(a: str, b: str) -> tuple[int, int, float]:
    """Crops only ``a`` got right, only ``b`` got right, and the exact two-sided
    McNemar p-value (binomial on the discordant pairs) of two methods on the same crops."""
    only_a = sum(x == "1" and y == "0" for x, y in zip(a, b, strict=True))
    only_b = sum(x == "0" and y == "1" for x, y in zip(a, b, strict=True))
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return only_a, only_b, min(1.0, 2 * tail)


def train(method: str, task: str, data: Path, pretrained: Path, out: Path) -> float:
    """``topgan train classifier`` as models/README.md makes the bundled models; seconds."""
    topgan = Path(sys.executable).parent / "topgan"
    command = [str(topgan) if topgan.exists() else "topgan", "-q", "--seed", str(SEEDS[task])]
    command += ["train", "classifier", "--method", method, "--data", str(data)]
    if method.startswith(("topgan", "ssl")):
        command += ["--pretrained", str(pretrained)]
    command += ["--preset", "cpu", "--name", f"dev-{task}", "--out", str(out)]
    started = time.monotonic()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.monotonic() - started


def score(model_dir: Path, test: Path) -> dict[str, float | int]:
    """The exported model, loaded as the service loads it, on every crop of ``test``."""
    runtime = ModelRuntime(model_dir, provider="cpu", threads=1)
    crops = load_crops([test])
    classes = list(runtime.manifest.classes)
    truth = np.array([classes.index(crops.class_names[i]) for i in crops.label])
    probabilities = np.concatenate(
        [runtime.predict(crops.opd[i : i + 256]) for i in range(0, len(crops.opd), 256)]
    )
    correct = probabilities.argmax(1) == truth
    right = int(correct.sum())
    low, high = wilson(right, len(truth))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    return {
        "crops": len(truth),
        "accuracy": right / len(truth),
        "accuracy_low": low,
        "accuracy_high": high,
        "ece": expected_calibration_error(probabilities, truth),
        # A network's validation split; features: its cross-validation on the training crops.
        "validation_accuracy": manifest["metrics"].get(
            "validation_accuracy", manifest["metrics"].get("cv_accuracy", float("nan"))
        ),
        "temperature": manifest.get("calibration", {}).get("temperature", float("nan")),
        "correct": "".join("1" if c else "0" for c in correct),  # per test crop, in file order
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(SEEDS), required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--pretrained", type=Path, default=REPO / "models/pretrained/sperm-dcgan")
    parser.add_argument("--methods", default="features,topgan-aug")
    args = parser.parse_args()
    path = HERE / "served.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    for method in args.methods.split(","):
        if any(r["task"] == args.task and r["method"] == method for r in runs):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            seconds = train(method, args.task, args.data, args.pretrained, Path(tmp) / "model")
            result = score(Path(tmp) / "model", args.test)
        runs.append(
            {
                "task": args.task,
                "method": method,
                "data": args.data.name,
                "test": args.test.name,
                "train_seconds": round(seconds, 1),
                **result,
            }
        )
        path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    print(
        "| task | method | accuracy (%) [95 % interval] | ECE (%) | validation or CV accuracy (%) | T |"
    )
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['task']} | {r['method']} | {100 * r['accuracy']:.1f} "
            f"[{100 * r['accuracy_low']:.1f}, {100 * r['accuracy_high']:.1f}] | "
            f"{100 * r['ece']:.1f} | {100 * r['validation_accuracy']:.1f} | "
            f"{r['temperature']:.2f} |"
        )
    for task in sorted({r["task"] for r in runs}):
        of_task = [r for r in runs if r["task"] == task and "correct" in r]
        for i, a in enumerate(of_task):
            for b in of_task[i + 1 :]:
                only_a, only_b, p = mcnemar(a["correct"], b["correct"])
                print(
                    f"{task}: {a['method']} right where {b['method']} was wrong on {only_a} "
                    f"crops, the reverse on {only_b} (McNemar exact p = {p:.3g})"
                )


if __name__ == "__main__":
    main()
