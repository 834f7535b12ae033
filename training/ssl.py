"""Self-supervised pretraining of the classifier's trunk on unlabeled crops (SimCLR).

Why beside the GAN: a DCGAN's discriminator learns what tells real crops from
generated ones, which need not be what tells cell lines apart (on the dev data its
frozen trunk reads out no better than a random one; docs/evaluation/dev). SimCLR
(Chen et al. 2020) trains the trunk so that two views of the same crop map close
together and views of other crops apart (NT-Xent on a projection head), which asks
for features that survive what does not change a cell: its orientation, a small
shift, the focus and the noise. Those views are drawn in OPD (nm) before a FIXED
normalisation fitted once on the pool, and none rescales the OPD, so the features
stay tied to the physical scale a classifier later sees (its crops normalised the
same way).

The network is exactly the classifier's front (:class:`ContrastiveNet`: the input
pooling, the ``channels`` encoder and the trunk of :mod:`training.networks`, under
the classifier's attribute names) plus a projection head that only the loss uses.

The output folder holds ``checkpoint.pt`` (everything needed to resume: network,
optimizer, config, epoch, step, normalisation, seed, the augmentation generator's
state, the losses so far), ``ssl.pt`` (the trunk's weights, network and
normalisation: what a classifier starts from, :mod:`training.pretrained`) and
``ssl.json`` (how it was made). Under torchrun the processes share each batch and
gather their projections, so that each crop's negatives are the whole batch's
(:mod:`training.distributed`). Batch norm stays per process there, which SimCLR
feels more than the GAN: both views of a crop are normalised with one process's
statistics and most of its negatives with others', a cue the loss can use without
learning better features (the SimCLR paper's reason for global batch norm); large
shares keep it small.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from acquisition.simulator.optics import defocus_phase_per_um
from models.manifest import Normalization, sha256_of
from models.provenance import portable_command, portable_path

from . import pretraining
from .config import NetworkConfig, SslConfig
from .data import dihedral
from .distributed import Distributed
from .networks import encoder, input_pool, trunk

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


class ContrastiveNet(nn.Module):
    """Crops at ``crop_size`` (normalised OPD) -> projections: the classifier's
    ``pool``, ``encode`` and ``trunk`` (so ``trunk``'s state dict loads into a
    :class:`training.networks.Classifier` as it is), then Flatten -> FC(hidden) -> BN ->
    ReLU -> FC(dim). The flattened trunk output is what the classifier's head reads,
    so the head here reads the same."""

    def __init__(self, cfg: NetworkConfig, hidden: int, dim: int) -> None:
        super().__init__()
        self.pool = input_pool(cfg)
        self.encode = encoder(cfg)
        self.trunk = trunk(cfg)
        side = cfg.input_size // 16
        self.projection = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8 * cfg.base_channels * side * side, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.trunk(self.encode(self.pool(x))))


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """SimCLR's loss: for each of the 2N projections, cross-entropy of picking its
    other view among the 2N - 1 others by cosine similarity / ``temperature``; the mean
    over all 2N, or over ``rows`` of them (indices into ``cat([z1, z2])``: a process's
    share of a gathered batch), each still against all 2N."""
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    every = torch.arange(2 * n, device=z.device)
    anchors, rows = (z, every) if rows is None else (z[rows], rows)
    similarity = (anchors @ z.T) / temperature
    similarity = similarity.masked_fill(rows[:, None] == every, -math.inf)
    return nn.functional.cross_entropy(similarity, (rows + n) % (2 * n))


def gathered_nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, ddp: Distributed, size: int
) -> torch.Tensor:
    """NT-Xent of a batch of ``size`` crops of which this process holds its share's
    projections (``z1``, ``z2``: the share's two views): the share's rows against the
    whole batch, gathered from every process, and weighted by the share's size so
    that the mean over the processes, which DDP's gradient averaging takes, is
    :func:`nt_xent` of the whole batch (to rounding). Alone: :func:`nt_xent`."""
    if ddp.world_size == 1:
        return nt_xent(z1, z2, temperature)
    both = ddp.gather(torch.stack([z1, z2], dim=1), size)  # one collective for both views
    mine = ddp.share(size)
    first = torch.arange(mine.start, mine.stop, device=z1.device)
    weight = ddp.world_size * len(first) / size  # 1 when the processes divide the batch
    return nt_xent(both[:, 0], both[:, 1], temperature, torch.cat([first, first + size])) * weight


class OpdViews:
    """Random views of (N, 1, H, W) OPD crops in nm, each still a plausible measurement:
    a dihedral transform; a sub-pixel shift (a phase ramp on the OPD's spectrum, so the
    map is interpolated without blurring); defocus by ``dz`` um (the field
    exp(i 2 pi OPD / lambda) propagated by the angular spectrum, its phase change
    added back as OPD: what a quantitative-phase instrument would read out of focus);
    additive white noise in nm. No intensity rescale.

    A call draws the whole batch's randomness and computes the views of the crops it
    ``keep``s (a process's share), so that the generator's stream does not depend on
    how many processes share the batch."""

    def __init__(
        self,
        config: SslConfig,
        shape: tuple[int, int],
        pixel_size_um: float,
        wavelength_nm: float | None,
    ) -> None:
        if config.defocus_um and wavelength_nm is None:
            raise ValueError(
                "the data files were recorded at different wavelengths; defocus needs one "
                "(train on one instrument's files, or set defocus_um 0)"
            )
        self.config = config
        self.wavelength_nm = wavelength_nm or math.nan
        h, w = shape
        self._fy = torch.fft.fftfreq(h)[:, None]
        self._fx = torch.fft.fftfreq(w)[None, :]
        self._defocus = torch.from_numpy(
            defocus_phase_per_um(shape, self.wavelength_nm, pixel_size_um).astype(np.float32)
        )

    def _uniform(self, n: int, half_width: float, generator: torch.Generator) -> torch.Tensor:
        """(n, 1, 1, 1) draws from [-half_width, half_width]."""
        return (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * half_width

    def shift(self, opd_nm: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """``opd_nm`` moved by (dy, dx) pixels (each (N, 1, 1, 1)), periodically."""
        # The ramp is separable: two thin factors instead of an (N, 1, H, W) exponential.
        ramp_y = torch.polar(torch.ones_like(dy * self._fy), -2 * math.pi * dy * self._fy)
        ramp_x = torch.polar(torch.ones_like(dx * self._fx), -2 * math.pi * dx * self._fx)
        return torch.fft.ifft2(torch.fft.fft2(opd_nm) * ramp_y * ramp_x).real

    def defocus(self, opd_nm: torch.Tensor, dz_um: torch.Tensor) -> torch.Tensor:
        """``opd_nm`` as measured ``dz_um`` (N, 1, 1, 1) out of focus: the phase of the
        propagated field, taken relative to the focused one (small at mild defocus, so
        it needs no unwrapping) and added back to the OPD."""
        k = 2 * math.pi / self.wavelength_nm  # rad per nm of OPD
        field = torch.polar(torch.ones_like(opd_nm), k * opd_nm)
        propagator = torch.polar(torch.ones_like(self._defocus), dz_um * self._defocus)
        moved = torch.fft.ifft2(torch.fft.fft2(field) * propagator)
        return opd_nm + torch.angle(moved * field.conj()) / k

    def __call__(
        self, opd_nm: torch.Tensor, generator: torch.Generator, keep: slice = slice(None)
    ) -> torch.Tensor:
        c, n = self.config, len(opd_nm)
        x = dihedral(opd_nm, generator)[keep]
        if c.shift_px:
            dy, dx = (self._uniform(n, c.shift_px, generator) for _ in range(2))
            x = self.shift(x, dy[keep], dx[keep])
        if c.defocus_um:
            x = self.defocus(x, self._uniform(n, c.defocus_um, generator)[keep])
        if c.noise_nm:
            sigma = torch.rand(n, 1, 1, 1, generator=generator) * c.noise_nm
            x = x + sigma[keep] * torch.randn(opd_nm.shape, generator=generator)[keep]
        return x


def train_ssl(
    data: Sequence[str | Path],
    out: Path,
    config: SslConfig,
    seed: int = 0,
    resume: bool = False,
    progress: Progress | None = None,
    command: str = "",
    ddp: Distributed | None = None,
) -> Path:
    """Train (or resume) SimCLR on the crops in ``data`` (their labels, if any, are not
    read); return ``out/ssl.pt``.

    ``ddp``: this process's place in a distributed launch (default: alone, on the
    CPU); every process returns once rank 0 has written the outputs."""
    ddp = ddp or Distributed()
    device = ddp.device
    torch.manual_seed(seed)
    generator_rng = torch.Generator().manual_seed(seed)
    net = config.network
    crops, checkpoint_path = pretraining.start(data, out, net, ddp)

    model = ContrastiveNet(net, config.projection_hidden, config.projection_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    epoch, step = 0, 0
    losses: list[dict[str, float]] = []
    norm = Normalization.fit(crops.opd)
    if resume and checkpoint_path.exists():
        state = pretraining.load_checkpoint(checkpoint_path, net, config.epochs, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, losses = state["epoch"], state["step"], state["losses"]
        norm = Normalization.from_dict(state["normalization"])
        generator_rng.set_state(state["rng"].cpu())
        if ddp.is_main:
            logger.info("resuming from epoch %d, step %d", epoch, step)
    ddp.agree(step, "the step to resume from")
    train_model = ddp.wrap(model)  # what trains; model itself is saved

    views = OpdViews(config, crops.opd.shape[1:], crops.pixel_size_um, crops.wavelength_nm)
    x_all = torch.from_numpy(crops.opd)[:, None]
    n = len(x_all)
    steps_per_epoch = max(1, n // config.batch_size)
    # --epochs is a total counted from the first run, as for the GAN.
    total = pretraining.last_step(step, epoch, config.epochs, steps_per_epoch, config.max_steps)
    if ddp.is_main:
        logger.info(
            "SSL: %d crops, %d steps per epoch, seed %d, normalisation %s",
            n,
            steps_per_epoch,
            seed,
            norm.to_dict(),
        )

    def normalised(opd_nm: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(norm.apply(opd_nm.numpy())).to(device)

    started = time.monotonic()
    while step < total:
        train_model.train()
        order = torch.randperm(n, generator=generator_rng)
        epoch_loss, batches = 0.0, 0
        for b in range(steps_per_epoch):
            if step >= total:
                break
            crops_nm = x_all[order[b * config.batch_size : (b + 1) * config.batch_size]]
            # Every process draws the whole batch's views (the generators stay in step)
            # and computes its share's; the loss gathers the projections.
            mine = ddp.share(len(crops_nm))
            v1 = normalised(views(crops_nm, generator_rng, mine))
            v2 = normalised(views(crops_nm, generator_rng, mine))
            optimizer.zero_grad()
            z1, z2 = train_model(torch.cat([v1, v2])).chunk(2)
            loss = gathered_nt_xent(z1, z2, config.temperature, ddp, len(crops_nm))
            loss.backward()
            optimizer.step()
            epoch_loss, batches, step = epoch_loss + loss.item(), batches + 1, step + 1
            if progress and ddp.is_main:
                progress(step, total)
        epoch += 1
        # The processes' mean is the whole batch's loss (gathered_nt_xent).
        epoch_mean = ddp.mean(epoch_loss / batches)
        losses.append({"epoch": epoch, "step": step, "loss": round(epoch_mean, 4)})
        if ddp.is_main:  # only rank 0 writes
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "network": asdict(net),
                    "config": asdict(config),
                    "epoch": epoch,
                    "step": step,
                    "normalization": norm.to_dict(),
                    "seed": seed,
                    "rng": generator_rng.get_state(),
                    "losses": losses,
                },
                checkpoint_path,
            )
            logger.info("epoch %d: step %d, NT-Xent %.3f", epoch, step, losses[-1]["loss"])

    weights = out / "ssl.pt"
    if ddp.is_main:
        torch.save(
            {
                "trunk": model.trunk.state_dict(),
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
            "method": "simclr",
            "network": asdict(net),
            "config": asdict(config),
            "normalization": norm.to_dict(),
            "pixel_size_um": crops.pixel_size_um,
            "wavelength_nm": crops.wavelength_nm,
            "data": [{"file": portable_path(f, out), "sha256": sha256_of(f)} for f in crops.files],
            "crops": n,
            "seed": seed,
            "epochs": epoch,
            "steps": step,
            "processes": ddp.world_size,
            "device": device.type,
            # This run's training time (a resumed run: since it resumed).
            "seconds": round(time.monotonic() - started, 1),
            "losses": losses,
            "command": portable_command(command),
            "weights_sha256": sha256_of(weights),
        }
        (out / "ssl.json").write_text(json.dumps(info, indent=2) + "\n")
    ddp.barrier()
    return weights
