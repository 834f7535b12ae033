"""Development runs: the choices behind the evaluation, made on dev datasets only.

The dev datasets are simulated like the evaluation's but with other seeds, so no
choice here ever saw an evaluation test fold. Each run is one method (with the cpu
preset of the code it ran on, named in ``schedule``) and a GAN, through the same
protocol as ``topgan evaluate`` (5 folds, training sizes 10, 20, 40). Results go to
``<task>.json`` beside this file; runs already there are skipped.

    topgan -q --seed 12 simulate cells --cell-line sw480,sw620 --count 400 --out sw-dev.h5
    topgan -q --seed 14 simulate cells --cell-line hs895-sk,hs895-t --count 400 --out hs-dev.h5
    OMP_NUM_THREADS=1 python docs/evaluation/dev/run.py --task sw --data sw-dev.h5 \\
        --pretrained models/pretrained/sperm-dcgan --methods cnn,topgan,topgan-aug
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from models.methods import TORCH_METHOD_NAMES, get_method
from training import config as cfg
from training.evaluate import evaluate

HERE = Path(__file__).resolve().parent
POSITIVE = {"sw": "sw620", "hs": "hs895-t"}
SIZES = [10, 20, 40]
SCHEDULE = "min 300 steps, selection off the plateau"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(POSITIVE), required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pretrained", "--gan", type=Path, required=True)
    parser.add_argument("--methods", required=True, help=", ".join(TORCH_METHOD_NAMES))
    args = parser.parse_args()
    path = HERE / f"{args.task}.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    for method in args.methods.split(","):
        gan = args.pretrained.name if get_method(method).pretrained else None
        if any((r["method"], r["gan"], r["schedule"]) == (method, gan, SCHEDULE) for r in runs):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            results = evaluate(
                args.data,
                Path(tmp),
                [method],
                SIZES,
                5,
                cfg.classifier_preset("cpu"),
                "cpu",
                pretrained=args.pretrained,
                positive=POSITIVE[args.task],
                seed=0,
            )
        runs.append(
            {
                "method": method,
                "gan": gan,
                "schedule": SCHEDULE,
                "data": args.data.name,
                "results": results,
            }
        )
        path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
        print(method, gan, "done", flush=True)


if __name__ == "__main__":
    main()
