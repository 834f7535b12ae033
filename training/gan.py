"""DCGAN pretraining on unlabeled crops (the sperm pool), with checkpoints and resume.

The output folder holds ``checkpoint.pt`` (everything needed to resume: both
networks, both optimizers, the config, epoch, step, normalisation, seed, and the
runs so far with the data files each saw), ``gan.pt`` (weights only, what the
classifier starts from), ``gan.json`` (how it was made) and a grid of generated
cells per epoch (``samples-epoch-NNN.png``). Under torchrun the processes share
each batch (:mod:`training.distributed`).

Resuming trains until the run has done ``config.epochs`` epochs in all (a total,
counted from the first run), on the data given now: a crop archive that grew since
is read whole, each epoch one pass over it; the normalisation stays the
checkpoint's, so the trunk sees OPD on one scale throughout. A checkpoint that has
already reached ``config.epochs`` is refused rather than resumed to no effect.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from models.manifest import Normalization, sha256_of
from models.provenance import portable_command, portable_path

from . import pretraining
from .config import GanConfig
from .data import dihedral
from .distributed import Distributed
from .networks import Discriminator, Generator, colour_encode, init_weights

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


def _grid(images: torch.Tensor, path: Path) -> None:
    """Save (N, C, H, W) images in [-1, 1] (C 1: grey, 3: colour) as a square grid PNG."""
    n, channels = images.shape[:2]
    side = int(np.ceil(np.sqrt(n)))
    h, w = images.shape[2:]
    grid = np.zeros((side * h, side * w) + ((3,) if channels == 3 else ()), np.uint8)
    chosen = images.permute(0, 2, 3, 1) if channels == 3 else images[:, 0]
    pixels = ((chosen.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    for i in range(n):
        r, c = divmod(i, side)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = pixels[i]
    Image.fromarray(grid).save(path)


def train_gan(
    data: Sequence[str | Path],
    out: Path,
    config: GanConfig,
    seed: int = 0,
    resume: bool = False,
    progress: Progress | None = None,
    command: str = "",
    ddp: Distributed | None = None,
) -> Path:
    """Train (or resume) a DCGAN on the crops in ``data``; return ``out/gan.pt``.

    ``ddp``: this process's place in a distributed launch (default: alone, on the
    CPU); every process returns once rank 0 has written the outputs."""
    ddp = ddp or Distributed()
    device = ddp.device
    torch.manual_seed(seed)
    generator_rng = torch.Generator().manual_seed(seed)
    net = config.network
    crops, checkpoint_path = pretraining.start(data, out, net, ddp)

    g, d = Generator(net).to(device), Discriminator(net).to(device)
    g.apply(init_weights)
    d.apply(init_weights)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    epoch0, step = 0, 0
    runs: list[dict[str, Any]] = []
    norm = Normalization.fit(crops.opd)
    if resume and checkpoint_path.exists():
        state = pretraining.load_checkpoint(checkpoint_path, net, config.epochs, device)
        g.load_state_dict(state["generator"])
        d.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        epoch0, step = state["epoch"], state["step"]
        norm = Normalization.from_dict(state["normalization"])
        generator_rng.set_state(state["rng"].cpu())
        runs = list(state.get("runs", []))
        if ddp.is_main:
            seen = runs[-1]["crops"] if runs else "?"
            logger.info(
                "resuming from epoch %d, step %d, on %d crops (the last run's: %s); "
                "normalisation kept from the checkpoint",
                epoch0,
                step,
                len(crops.opd),
                seen,
            )
    ddp.agree(step, "the step to resume from")
    data_files = [{"file": portable_path(f, out), "sha256": sha256_of(f)} for f in crops.files]
    # What trains: wrapped for several processes; g and d themselves are saved.
    train_g, train_d = ddp.wrap(g), ddp.wrap(d)

    factor = net.crop_size // net.input_size
    x_all = torch.from_numpy(norm.apply(crops.opd))[:, None]
    if factor > 1:
        x_all = nn.functional.avg_pool2d(x_all, factor)
    n = len(x_all)
    steps_per_epoch = max(1, n // config.batch_size)
    total = pretraining.last_step(step, epoch0, config.epochs, steps_per_epoch, config.max_steps)
    run = {"from_epoch": epoch0, "to_epoch": epoch0, "crops": n, "data": data_files}
    runs.append(run)
    loss = nn.BCEWithLogitsLoss()
    fixed_noise = torch.randn(64, net.latent, generator=torch.Generator().manual_seed(seed + 1))
    if ddp.is_main:
        logger.info(
            "GAN: %d crops, %d steps per epoch, seed %d, normalisation %s",
            n,
            steps_per_epoch,
            seed,
            norm.to_dict(),
        )
    started = time.monotonic()
    epoch = epoch0
    while step < total:
        train_g.train()
        train_d.train()
        order = torch.randperm(n, generator=generator_rng)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            real = x_all[order[b * config.batch_size : (b + 1) * config.batch_size]]
            if config.dihedral:
                real = dihedral(real, generator_rng)
            z = torch.randn(len(real), net.latent, generator=generator_rng)
            # Every process draws the whole batch (the generators stay in step) and
            # trains on its share.
            mine = ddp.share(len(real))
            real, z = real[mine].to(device), z[mine].to(device)
            if net.channels == 3:
                real = colour_encode(real)
            ones = torch.ones(len(real), device=device)
            fake = train_g(z)
            opt_d.zero_grad()
            loss_d = loss(train_d(real), ones) + loss(
                train_d(fake.detach()), torch.zeros_like(ones)
            )
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad()
            loss_g = loss(train_d(fake), ones)
            loss_g.backward()
            opt_g.step()
            step += 1
            if progress and ddp.is_main:
                progress(step, total)
        epoch += 1
        run["to_epoch"] = epoch
        losses = {"d": ddp.mean(loss_d.item()), "g": ddp.mean(loss_g.item())}
        if ddp.is_main:  # only rank 0 writes
            g.eval()
            with torch.no_grad():
                _grid(g(fixed_noise.to(device)).cpu(), out / f"samples-epoch-{epoch:03d}.png")
            torch.save(
                {
                    "generator": g.state_dict(),
                    "discriminator": d.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "network": asdict(net),
                    "config": asdict(config),
                    "epoch": epoch,
                    "step": step,
                    "normalization": norm.to_dict(),
                    "seed": seed,
                    "rng": generator_rng.get_state(),
                    "last_losses": losses,
                    "runs": runs,
                },
                checkpoint_path,
            )
            logger.info(
                "epoch %d: step %d, loss D %.3f, loss G %.3f", epoch, step, *losses.values()
            )

    weights = out / "gan.pt"
    if ddp.is_main:
        torch.save(
            {
                "generator": g.state_dict(),
                "discriminator": d.state_dict(),
                "network": asdict(net),
                "normalization": norm.to_dict(),
                "epoch": epoch,
                "step": step,
                "seed": seed,
            },
            weights,
        )
        info: dict[str, Any] = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "network": asdict(net),
            "config": asdict(config),
            "normalization": norm.to_dict(),
            "data": data_files,
            "crops": n,
            "runs": runs,
            "seed": seed,
            "epochs": epoch,
            "steps": step,
            "processes": ddp.world_size,
            "device": device.type,
            "seconds": round(time.monotonic() - started, 1),
            "command": portable_command(command),
            "weights_sha256": sha256_of(weights),
        }
        (out / "gan.json").write_text(json.dumps(info, indent=2) + "\n")
    ddp.barrier()
    return weights
