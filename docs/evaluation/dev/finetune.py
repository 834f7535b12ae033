"""Fine-tuning pretrained trunks on dev data: which recipe, against cnn and features.

Each run is one method under one recipe (cpu-preset classifier settings changed by
``--set``) through the protocol of ``topgan evaluate`` (5 folds, training sizes 10 and
40 by default) on a dev dataset simulated with other seeds than the evaluation's.
Runs go to ``finetune-<task>.json`` beside this file (a run already there, same
method, recipe and trunk, is skipped) and the table of all runs to stdout. The
commands and what they gave: ssl.md beside this file.

    topgan -q --seed 12 simulate cells --cell-line sw480,sw620 --count 400 --out sw-dev.h5
    OMP_NUM_THREADS=1 python docs/evaluation/dev/finetune.py --task sw --data sw-dev.h5 \\
        --pretrained ssl-sw --methods ssl --recipe "lr 1e-4" --set lr=1e-4
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from models.methods import get_method
from training import config as cfg
from training.evaluate import evaluate
from training.report import markdown_table, size_cells

HERE = Path(__file__).resolve().parent
POSITIVE = {"sw": "sw620", "hs": "hs895-t"}


def setting(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key, json.loads(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(POSITIVE), required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pretrained", type=Path)
    parser.add_argument("--methods", required=True)
    parser.add_argument("--sizes", default="10,40")
    parser.add_argument("--recipe", default="plain", help="the recipe's name in the table")
    parser.add_argument("--set", type=setting, nargs="*", default=[], metavar="KEY=JSON")
    args = parser.parse_args()
    path = HERE / f"finetune-{args.task}.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    config = cfg.override(cfg.classifier_preset("cpu"), **dict(args.set))
    sizes = [int(s) for s in args.sizes.split(",")]
    for method in args.methods.split(","):
        trunk = args.pretrained.name if args.pretrained and get_method(method).pretrained else None
        key = (method, args.recipe, trunk)
        if any((r["method"], r["recipe"], r["trunk"]) == key for r in runs):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            results = evaluate(
                args.data,
                Path(tmp),
                [method],
                sizes,
                5,
                config,
                "cpu",
                pretrained=args.pretrained,
                positive=POSITIVE[args.task],
                seed=0,
            )
        runs.append(
            {
                "method": method,
                "recipe": args.recipe,
                "settings": dict(args.set),
                "trunk": trunk,
                "data": args.data.name,
                "results": results,
            }
        )
        path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    every = sorted({r["train_size"] for run in runs for r in run["results"]})
    rows = [
        [
            run["method"],
            run["trunk"] or "-",
            run["recipe"],
            *size_cells(run["results"], run["method"], every),
        ]
        for run in runs
    ]
    print("\n".join(markdown_table(["method", "trunk", "recipe", *map(str, every)], rows)))


if __name__ == "__main__":
    main()
