"""The paper's 3-channel colour encoding (--channels 3): a jet colour map of the
normalised OPD inside the networks, so the served model still takes OPD crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from models.runtime import ModelRuntime
from service.cli import main
from training.networks import colour_encode


def test_jet_colours():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]).view(1, 1, 1, 5)
    rgb = ((colour_encode(x)[0, :, 0].T + 1) / 2).numpy()
    # dark blue, cyan-blue, green, yellow-red, dark red: the jet map at 0, 1/4, 1/2, 3/4, 1
    expected = [[0, 0, 0.5], [0, 0.5, 1], [0.5, 1, 0.5], [1, 0.5, 0], [0.5, 0, 0]]
    np.testing.assert_allclose(rgb, expected, atol=1e-6)
    beyond = colour_encode(torch.tensor([-3.0, 3.0]).view(1, 1, 1, 2))
    np.testing.assert_allclose(beyond, colour_encode(torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2)))


def test_colour_gan_and_topgan_classifier_are_servable(data, tmp_path):
    gan = tmp_path / "gan"
    assert (
        main(
            [
                "-q",
                "train",
                "gan",
                "--data",
                str(data / "pool.h5"),
                "--out",
                str(gan),
                "--channels",
                "3",
                "--dry-run",
            ]
        )
        == 0
    )
    assert json.loads((gan / "gan.json").read_text())["network"]["channels"] == 3
    with Image.open(gan / "samples-epoch-001.png") as grid:
        assert grid.mode == "RGB"
    model = tmp_path / "model"
    args = [
        "-q",
        "train",
        "classifier",
        "--method",
        "topgan",
        "--data",
        str(data / "cells.h5"),
        "--gan",
        str(gan),
        "--channels",
        "3",
        "--out",
        str(model),
        "--dry-run",
    ]
    assert main(args) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [1, 128, 128]
    assert manifest["training"]["network"]["channels"] == 3
    probabilities = ModelRuntime(model, "cpu").predict(
        np.random.default_rng(0).normal(200, 50, (3, 128, 128)).astype(np.float32)
    )
    assert probabilities.shape == (3, 2)
    # A one-channel GAN does not fit a colour classifier: a one-line error.
    plain = tmp_path / "plain"
    assert (
        main(
            [
                "-q",
                "train",
                "gan",
                "--data",
                str(data / "pool.h5"),
                "--out",
                str(plain),
                "--dry-run",
            ]
        )
        == 0
    )
    mismatch = [
        "-q",
        "train",
        "classifier",
        "--method",
        "topgan",
        "--data",
        str(data / "cells.h5"),
        "--gan",
        str(plain),
        "--channels",
        "3",
        "--out",
        str(tmp_path / "m2"),
        "--dry-run",
    ]
    assert main(mismatch) == 2


@pytest.mark.parametrize("method", ["imagenet"])
def test_colour_encoding_is_refused_where_it_does_not_apply(data, tmp_path, method):
    args = [
        "-q",
        "train",
        "classifier",
        "--method",
        method,
        "--data",
        str(data / "cells.h5"),
        "--channels",
        "3",
        "--out",
        str(tmp_path / "m"),
        "--dry-run",
    ]
    assert main(args) == 2
