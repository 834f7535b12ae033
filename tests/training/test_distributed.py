"""Data-parallel pretraining: the ranks' shares, the launch, and a real two-process
run under PyTorch's launcher (gloo on 127.0.0.1) that resumes a checkpoint, and whose
checkpoint a single process resumes and whose weights a classifier's trunk loads."""

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

from service.cli import main
from training.config import gan_preset, override
from training.distributed import Distributed, launched
from training.gan import train_gan
from training.networks import Classifier
from training.pretrained import load_pretrained

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
def test_cuda_without_a_device_is_a_one_line_error(data, tmp_path, capsys):
    args = ["train", "gan", "--data", str(data / "pool.h5"), "--out", str(tmp_path / "g")]
    assert main([*args, "--dry-run", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "topgan train gan: error: device cuda: PyTorch sees no CUDA device "
        "(--device auto uses the CPU)\n"
    )
    assert not (tmp_path / "g").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_pretrain_and_a_single_process_resumes(data, tmp_path):
    gan = tmp_path / "gan"
    # One epoch alone first (the cpu preset's batch of 64 takes the whole pool of 24:
    # one step per epoch), then two processes resume it for two more.
    one_epoch = override(gan_preset("cpu"), epochs=1)
    train_gan([data / "pool.h5"], gan, one_epoch, seed=3)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    command = ["-m", "service.cli", "--seed", "3", "train", "gan", "--data", str(data / "pool.h5")]
    command += ["--out", str(gan), "--resume", "--epochs", "3", "--device", "cpu"]
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    result = subprocess.run(
        [*launcher, *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
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
