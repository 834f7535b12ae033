"""Data-parallel pretraining: the ranks' shares, the launch, the gathered NT-Xent of
two gloo processes against one process's, and real two-process runs under PyTorch's
launcher (gloo on 127.0.0.1) of the GAN (resuming a checkpoint) and of SSL, whose
checkpoints a single process resumes and whose weights a classifier's trunk loads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from service.cli import main
from training.config import gan_preset, override
from training.distributed import Distributed, launched
from training.gan import train_gan
from training.networks import Classifier
from training.pretrained import load_pretrained
from training.ssl import gathered_nt_xent, nt_xent

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_the_ranks_shares_are_disjoint_and_cover_the_batch(world_size):
    for size in range(world_size, 40):
        shares = [Distributed(rank, world_size).share(size) for rank in range(world_size)]
        indices = [i for share in shares for i in range(size)[share]]
        assert indices == list(range(size)), (world_size, size)
        lengths = [len(range(size)[share]) for share in shares]
        assert max(lengths) - min(lengths) <= 1, lengths
    with pytest.raises(ValueError, match=f"cannot be split across {world_size} processes"):
        Distributed(0, world_size).share(world_size - 1)


def test_without_a_launcher_training_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    module = torch.nn.Linear(2, 1)
    with launched("cpu") as ddp:
        assert (ddp.rank, ddp.world_size, ddp.device, ddp.is_main) == (
            0,
            1,
            torch.device("cpu"),
            True,
        )
        assert not dist.is_initialized()
        assert ddp.wrap(module) is module
        assert ddp.share(5) == slice(0, 5)
        assert ddp.mean(0.25) == 0.25
        ddp.agree(3, "anything")
        ddp.barrier()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match="RANK must be an integer"), launched("cpu"):
        pass
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="RANK 2 of WORLD_SIZE 2"), launched("cpu"):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there to train on")
@pytest.mark.parametrize("what", ["gan", "ssl"])
def test_cuda_without_a_device_is_a_one_line_error(what, data, tmp_path, capsys):
    args = ["train", what, "--data", str(data / "pool.h5"), "--out", str(tmp_path / "g")]
    assert main([*args, "--dry-run", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"topgan train {what}: error: device cuda: PyTorch sees no CUDA device "
        "(--device auto uses the CPU)\n"
    )
    assert not (tmp_path / "g").exists()


#: Batches the gathered NT-Xent is checked on: two processes divide the first, not
#: the second (shares of 3 and 2 crops).
GATHERED_SIZES = (6, 5)


def _projections(size: int) -> torch.Tensor:
    """(size, 2, 16): two views' projections of each crop of a batch."""
    return torch.randn(size, 2, 16, generator=torch.Generator().manual_seed(size))


def _gathered_nt_xent_process(rank: int, world_size: int, folder: Path) -> None:
    """One gloo process: NT-Xent of its share of each batch, and its share's gradient."""
    dist.init_process_group(
        "gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=world_size
    )
    try:
        ddp = Distributed(rank, world_size)
        results = {}
        for size in GATHERED_SIZES:
            mine = _projections(size)[ddp.share(size)].requires_grad_()
            loss = gathered_nt_xent(mine[:, 0], mine[:, 1], 0.5, ddp, size)
            loss.backward()
            results[size] = (loss.detach(), mine.grad)
        torch.save(results, folder / f"rank-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_gather_the_whole_batchs_nt_xent(tmp_path):
    mp.spawn(_gathered_nt_xent_process, args=(2, tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank-{r}.pt") for r in range(2)]
    for size in GATHERED_SIZES:
        z = _projections(size).requires_grad_()
        expected = nt_xent(z[:, 0], z[:, 1], 0.5)
        expected.backward()
        assert z.grad is not None
        # DDP averages over the processes: the mean of their losses and of their
        # gradients is the whole batch's, negatives from the other process included.
        losses = torch.stack([r[size][0] for r in ranks])
        torch.testing.assert_close(losses.mean(), expected.detach())
        gradient = torch.cat([r[size][1] for r in ranks]) / 2
        torch.testing.assert_close(gradient, z.grad)
        # Not a share's NT-Xent among its own crops alone.
        alone = nt_xent(z[:3, 0], z[:3, 1], 0.5)
        assert abs(losses[0].item() - alone.item()) > 0.1, size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_processes(*args: str) -> list[str]:
    """stderr's lines of ``topgan ARGS`` run by two gloo processes under torchrun (this
    repository's code), which must succeed."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    result = subprocess.run(
        [*launcher, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_two_processes_pretrain_and_a_single_process_resumes(data, tmp_path):
    gan = tmp_path / "gan"
    # One epoch alone first (the cpu preset's batch of 64 takes the whole pool of 24:
    # one step per epoch), then two processes resume it for two more.
    one_epoch = override(gan_preset("cpu"), epochs=1)
    train_gan([data / "pool.h5"], gan, one_epoch, seed=3)
    command = ["--seed", "3", "train", "gan", "--data", str(data / "pool.h5"), "--out", str(gan)]
    lines = _two_processes(*command, "--resume", "--epochs", "3", "--device", "cpu")
    assert sum("training.distributed: 2 processes (gloo), device cpu" in x for x in lines) == 1
    assert sum("resuming from epoch 1, step 1" in x for x in lines) == 1  # rank 0 reports
    assert lines.count(f"wrote {gan / 'gan.pt'}") == 1
    state = torch.load(gan / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (3, 3)
    info = json.loads((gan / "gan.json").read_text())
    assert (info["processes"], info["device"], info["steps"]) == (2, "cpu", 3)
    assert sorted(p.name for p in gan.glob("samples-*.png")) == [
        f"samples-epoch-00{e}.png" for e in (1, 2, 3)
    ]
    # Saved unwrapped: the keys a single process has, no DistributedDataParallel prefix.
    assert not any(k.startswith("module.") for k in state["discriminator"])

    train_gan([data / "pool.h5"], gan, override(one_epoch, epochs=4), seed=3, resume=True)
    assert torch.load(gan / "checkpoint.pt", weights_only=False)["step"] == 4
    info = json.loads((gan / "gan.json").read_text())
    assert (info["processes"], info["steps"]) == (1, 4)

    # The classifier's trunk takes the discriminator's as it was saved.
    state = torch.load(gan / "gan.pt", weights_only=False)
    trunk = load_pretrained(gan)
    classifier = Classifier(trunk.network, classes=2)
    classifier.trunk.load_state_dict(trunk.trunk)
    for key, value in classifier.trunk.state_dict().items():
        assert torch.equal(value, state["discriminator"][f"trunk.{key}"]), key


def test_two_processes_pretrain_ssl_and_a_single_process_resumes(data, tmp_path):
    ssl = tmp_path / "ssl"
    train = ["train", "ssl", "--data", str(data / "pool.h5"), "--out", str(ssl), "--dry-run"]
    lines = _two_processes(*train, "--device", "cpu")
    assert sum("training.distributed: 2 processes (gloo), device cpu" in x for x in lines) == 1
    assert sum("SSL: 24 crops, 3 steps per epoch" in x for x in lines) == 1  # rank 0 reports
    assert lines.count(f"wrote {ssl / 'ssl.pt'}") == 1
    state = torch.load(ssl / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (1, 2)
    assert not any(k.startswith("module.") for k in state["model"])
    info = json.loads((ssl / "ssl.json").read_text())
    assert (info["processes"], info["device"], info["steps"]) == (2, "cpu", 2)
    assert info["losses"][0]["loss"] > 0

    assert main(["-q", *train, "--resume"]) == 0  # alone: two steps more
    state = torch.load(ssl / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (2, 4)
    info = json.loads((ssl / "ssl.json").read_text())
    assert (info["processes"], info["steps"]) == (1, 4)
    assert [r["step"] for r in info["losses"]] == [2, 4]

    # The classifier's trunk takes the one the processes and the resume trained.
    trunk = load_pretrained(ssl)
    assert trunk.kind == "ssl"
    classifier = Classifier(trunk.network, classes=2)
    classifier.trunk.load_state_dict(trunk.trunk)
    for key, value in classifier.trunk.state_dict().items():
        assert torch.equal(value, state["model"][f"trunk.{key}"]), key
