"""What the two pretrainings (``training.gan`` and ``training.ssl``) share: the crops
and the output folder they start from, the checks on a checkpoint they resume, and
how many steps a run takes (``--epochs`` a total counted from the first run)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .config import NetworkConfig
from .data import Crops, load_crops
from .distributed import Distributed


def start(
    data: Sequence[str | Path], out: Path, net: NetworkConfig, ddp: Distributed
) -> tuple[Crops, Path]:
    """The crops of ``data`` (refused when their size is not the network's) and the
    checkpoint's path in ``out`` (created by the main process)."""
    crops = load_crops(data)
    if crops.opd.shape[1] != net.crop_size:
        raise ValueError(
            f"the crops are {crops.opd.shape[1]} px, the network takes {net.crop_size}"
        )
    if ddp.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return crops, out / "checkpoint.pt"


def load_checkpoint(
    path: Path, net: NetworkConfig, epochs: int, device: torch.device
) -> dict[str, Any]:
    """The checkpoint at ``path``, refused when it was trained with another network or
    has already done the ``epochs`` a resumed run is asked for in all."""
    state: dict[str, Any] = torch.load(path, map_location=device, weights_only=False)
    if state["network"] != asdict(net):
        raise ValueError(f"{path} was trained with another network: {state['network']}")
    done = state["epoch"]
    if done >= epochs:
        raise ValueError(
            f"{path} has already trained {done} epochs, as many as --epochs {epochs} asks "
            f"for in all: give --epochs above {done} (a total) to keep pretraining"
        )
    return state


def last_step(
    step: int, epoch: int, epochs: int, steps_per_epoch: int, max_steps: int | None
) -> int:
    """The step a run from ``step`` (at ``epoch``) stops at: the remaining epochs of
    ``epochs`` in all, each one pass over the data given now (a crop archive that grew
    since is read whole), capped at ``max_steps`` more."""
    total = step + (epochs - epoch) * steps_per_epoch
    return total if max_steps is None else min(total, step + max_steps)
