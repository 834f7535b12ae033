"""Fixtures of the training tests: small simulated crop files."""

from __future__ import annotations

import pytest

from acquisition.cropfile import write_crop_dataset
from acquisition.simulator.datasets import simulate_direct


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``pool.h5``: 24 unlabeled sperm crops; ``cells.h5``: 12 sw480 and 12 sw620."""
    root = tmp_path_factory.mktemp("train")
    write_crop_dataset(root / "pool.h5", simulate_direct(["sperm"], 24, seed=1))
    write_crop_dataset(root / "cells.h5", simulate_direct(["sw480", "sw620"], 12, seed=2))
    return root
