"""Data-parallel pretraining under PyTorch's own launcher, ``torchrun``.

``torchrun --nproc-per-node N -m service.cli train gan ...`` (or ``train ssl``)
starts N processes and tells each its place in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`launched`
reads it, joins the process group (gloo on the CPU, NCCL on CUDA) and always leaves
it; without a launcher it is one process, rank 0 of 1, and every method of
:class:`Distributed` is a no-op, so that a plain run computes exactly what it did
before this module existed.

How a training loop divides the work (the ``training.gan`` and ``training.ssl``
loops):

- **The batch is global.** The config's ``batch_size`` is the batch of one
  optimiser step whatever the number of processes; each process trains on its
  :meth:`Distributed.share` of it and DistributedDataParallel averages the
  gradients, which is the gradient of the whole batch's mean loss (exactly when the
  number of processes divides the batch; otherwise shares differ by one crop and
  weigh a little differently). So the learning rate, the steps per epoch and the
  number of epochs do not change with the number of processes: more processes divide
  each step's work, they do not change the optimisation (batch norm aside, below).
- **One random stream.** Every process holds the whole data tensor and draws, from
  the same seeded generator, the same epoch permutation and the same augmentation and
  noise for the whole batch, then keeps its share. The generators stay in step, the
  shares of a batch are disjoint and cover it, and resuming with another number of
  processes continues the same stream.
- **A loss across the batch is gathered.** A loss that compares each item with the
  others in its batch (SimCLR's NT-Xent takes its negatives from the batch) must see
  the whole batch, not a share: :meth:`Distributed.gather` collects the shares'
  outputs in batch order and passes each process the gradient of its own rows from
  every process's loss. Each process's loss is then the mean over its own rows
  against the whole batch, weighted by its share's size, so that the mean over the
  processes (what DDP's gradient averaging takes) is the whole batch's loss.
- **Batch norm per process.** Each process normalises with its own share's
  statistics (PyTorch's SyncBatchNorm refuses CPU modules, torch 2.13: "SyncBatchNorm
  layers only work with GPU modules"; and one behaviour on every device is easier to
  reason about). A DCGAN already normalises its real and generated batches
  separately; the statistics get noisier as shares shrink (the paper's batch of 64
  leaves 16 crops to each of 4 processes), so keep shares from getting small. DDP
  copies rank 0's running statistics to the others at each forward pass, so the
  saved ones are rank 0's. Without batch norm, N processes train what one does, to
  rounding.
- **Rank 0 writes.** Only it saves checkpoints, weights, sample grids and the
  training record, and reports progress; the saved weights are the unwrapped
  modules' ``state_dict`` (no ``module.`` prefix), which a single-process resume and
  the classifier load as they are. To resume, every process loads the same
  checkpoint: on several machines the output folder must be one they all see.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.function import FunctionCtx
from torch.nn.parallel import DistributedDataParallel

from .config import DEVICES, DeviceName

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """One process's place among those training together (alone: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Whether this process writes the outputs and reports (rank 0)."""
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` (already on :attr:`device`) to train with: wrapped in
        DistributedDataParallel when there are several processes, else itself. Keep
        the unwrapped module to save, and to run on rank 0 alone (a wrapped module's
        forward pass is a collective every process must join)."""
        if self.world_size == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def share(self, size: int) -> slice:
        """This process's contiguous part of a batch of ``size`` items: the parts of
        the ranks are disjoint, cover the batch in rank order and differ by at most one."""
        if size < self.world_size:
            raise ValueError(
                f"a batch of {size} crop(s) cannot be split across {self.world_size} "
                "processes: use fewer processes or a larger batch"
            )
        base, extra = divmod(size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def shares(self, size: int) -> list[slice]:
        """Every rank's :meth:`share` of a batch of ``size`` items, in rank order."""
        return [Distributed(rank, self.world_size).share(size) for rank in range(self.world_size)]

    def gather(self, mine: torch.Tensor, size: int) -> torch.Tensor:
        """The whole batch of ``size`` items, from every process's ``mine`` (the rows of
        its :meth:`share`, on :attr:`device`), in batch order; the gradient each process
        gets for its ``mine`` is the sum of every process's gradient for those rows (so
        a loss over the gathered batch trains each share on all of it). Alone:
        ``mine`` itself. A collective every process must join."""
        if self.world_size == 1:
            return mine
        expected = len(range(size)[self.share(size)])
        if len(mine) != expected:
            raise ValueError(f"rank {self.rank} holds {len(mine)} rows of its share of {expected}")
        gathered: torch.Tensor = _Gather.apply(mine, self.shares(size), self.rank)
        return gathered

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the processes (e.g. a loss for the log)."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def agree(self, value: int, what: str) -> None:
        """Raise on every process unless all hold the same ``value`` (e.g. the step a
        resume starts from: processes that disagree would wait on each other forever)."""
        if self.world_size == 1:
            return
        low = torch.tensor([value], dtype=torch.int64, device=self.device)
        high = low.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if low.item() != high.item():
            raise ValueError(
                f"the processes disagree on {what} ({low.item()} to {high.item()}): "
                "does every machine see the same output folder?"
            )

    def barrier(self) -> None:
        """Wait until every process gets here (e.g. until rank 0 has written)."""
        if self.world_size > 1:
            dist.barrier()


class _Gather(torch.autograd.Function):
    """All-gather along the first axis whose backward sends each process the summed
    gradient of its own rows. Written here rather than taken from
    ``torch.distributed.nn.functional.all_gather`` (deprecated in torch 2.13) because
    the shares may differ by one row and that one shapes every part like the caller's
    tensor: here the shorter shares are padded to the longest and cut after."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, mine: torch.Tensor, shares: list[slice], rank: int
    ) -> torch.Tensor:
        longest = max(s.stop - s.start for s in shares)
        padded = mine.new_zeros((longest, *mine.shape[1:]))
        padded[: len(mine)] = mine
        parts = [torch.empty_like(padded) for _ in shares]
        dist.all_gather(parts, padded)
        ctx.mine = shares[rank]  # type: ignore[attr-defined]
        return torch.cat([part[: s.stop - s.start] for part, s in zip(parts, shares, strict=True)])

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        # Every process holds its loss's gradient for the whole batch; the sum over the
        # processes is the gradient of their summed losses. An all_reduce of the whole
        # (a batch of projections is small) works on gloo and NCCL alike.
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.mine], None, None  # type: ignore[attr-defined]


def _launch_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) as torchrun sets them; None without a launcher."""
    if "WORLD_SIZE" not in os.environ:
        return None
    values = []
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = os.environ.get(name)
        try:
            values.append(int(raw or ""))
        except ValueError:
            raise ValueError(
                f"{name} must be an integer under a distributed launch (torchrun sets it), "
                f"got {raw!r}"
            ) from None
    rank, world_size, local_rank = values
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"RANK {rank} of WORLD_SIZE {world_size} is no place in a launch")
    return rank, world_size, local_rank


def resolve_device(name: DeviceName, local_rank: int = 0) -> torch.device:
    """The device of ``name`` for the process of ``local_rank`` on its machine."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    available = torch.cuda.is_available()
    if name == "cpu" or (name == "auto" and not available):
        return torch.device("cpu")
    if not available:
        raise ValueError("device cuda: PyTorch sees no CUDA device (--device auto uses the CPU)")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {local_rank} has no GPU of its own ({torch.cuda.device_count()} "
            "seen): start at most one process per GPU"
        )
    return torch.device("cuda", local_rank)


@contextmanager
def launched(device: DeviceName = "auto") -> Iterator[Distributed]:
    """This process's :class:`Distributed`, in the process group while the block runs.

    Without torchrun's environment, or with a world of one, there is no group to
    join. Joining waits until every process has joined, so a check made by every
    process before it (e.g. of the output folder) is made before any writes.
    """
    env = _launch_env()
    rank, world_size, local_rank = env or (0, 1, 0)
    resolved = resolve_device(device, local_rank)
    if world_size == 1:
        yield Distributed(device=resolved)
        return
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    dist.init_process_group(backend, device_id=resolved if resolved.type == "cuda" else None)
    try:
        if rank == 0:
            logger.info("%d processes (%s), device %s", world_size, backend, resolved.type)
        yield Distributed(rank, world_size, resolved)
    finally:
        dist.destroy_process_group()
