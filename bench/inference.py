"""Classifier inference speed: PyTorch eager vs ONNX Runtime fp32 vs int8, side by side.

For the paper-size network (128 px, 64..512 channels), the cpu preset (64 px
inside, half the channels; the cnn, topgan and ssl methods share it) and the
``features`` method (fixed QPI features and a logistic regression; fp32 only), at
batch 1 and 32, cells per second in one run; then
the fine-tuning time on 160 training images (seconds per epoch, and for a fixed
number of epochs). Weights are random (speed does not depend on them); int8 is
calibrated on simulated crops.

Usage: ``python bench/inference.py [--seconds 2] [--epochs 5]``
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnxruntime as ort
import torch

from acquisition.simulator.datasets import simulate_direct
from models.manifest import Normalization
from training.config import classifier_preset, network_preset, override
from training.data import Crops
from training.export import export_onnx
from training.features import fit_features
from training.fit import fit
from training.networks import Classifier, WithSoftmax
from training.quantize import quantize_int8


def rate(fn, cells: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n * cells / (time.perf_counter() - start)


def session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs to time")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = simulate_direct(["sw480", "sw620"], 80, seed=0)
    x_all = Normalization.fit(data.opd).apply(data.opd)[:, None]
    print(f"# inference benchmark: {torch.get_num_threads()} threads, cells per second")
    header = [
        "network",
        "batch",
        "PyTorch eager",
        "ONNX Runtime fp32",
        "ONNX Runtime int8",
        "fp32 / eager",
        "int8 / eager",
    ]
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|---|")
    features, _ = fit_features(data.opd, data.label, 2, data.pixel_size_um, seed=0)
    x_nm = features.norm.apply(data.opd)[:, None]  # the features model takes OPD in nm
    for preset in ("paper", "cpu", "features"):
        model: torch.nn.Module
        if preset == "features":
            model, inputs = features.model, x_nm
            wrapped = WithSoftmax(model).eval()
            fp32 = export_onnx(model, 128, torch.from_numpy(inputs[:8]))
            sessions = {"fp32": session(fp32)}
        else:
            net = network_preset(preset)
            model, inputs = Classifier(net, 2).eval(), x_all
            fp32 = export_onnx(model, net.crop_size, torch.from_numpy(inputs[:8]))
            int8 = quantize_int8(fp32, inputs[:64])
            wrapped = WithSoftmax(model).eval()
            sessions = {"fp32": session(fp32), "int8": session(int8)}
        for batch in (1, 32):
            x = inputs[:batch]
            xt = torch.from_numpy(x)

            def eager(xt: torch.Tensor = xt, net: torch.nn.Module = wrapped) -> None:
                with torch.no_grad():
                    net(xt)

            r_eager = rate(eager, batch, args.seconds)
            r = {
                k: rate(lambda s=s, x=x: s.run(None, {"x": x}), batch, args.seconds)
                for k, s in sessions.items()
            }
            int8_rate = f"{r['int8']:.0f}" if "int8" in r else "-"
            int8_ratio = f"{r['int8'] / r_eager:.1f}x" if "int8" in r else "-"
            print(
                f"| {preset} | {batch} | {r_eager:.0f} | {r['fp32']:.0f} | {int8_rate} | "
                f"{r['fp32'] / r_eager:.1f}x | {int8_ratio} |"
            )
            sys.stdout.flush()

    print(f"\nFine-tuning on 160 images ({args.epochs} epochs, batch 16, no early stop):")
    crops = Crops(data.opd, data.label, data.class_names, data.pixel_size_um, [])
    for preset in ("paper", "cpu"):
        config = override(classifier_preset(preset), epochs=args.epochs, patience=args.epochs)
        _, _, record = fit("cnn-aug", crops, np.arange(160), config, None, seed=0)
        seconds = record["train_seconds"]
        print(
            f"- {preset}: {seconds:.1f} s, {seconds / record['epochs_run']:.2f} s per epoch "
            f"({128} training + {32} validation crops)"
        )
    print("\nTarget: >= 500 cells/s for the paper-size network on 2 cores (ONNX Runtime).")
    print("The paper: 3.38 s to fine-tune on 160 images on a P100 GPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
