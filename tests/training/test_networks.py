from __future__ import annotations

import pytest
import torch

from training.config import classifier_preset, gan_preset, network_preset, override
from training.networks import Classifier, Discriminator, Generator, init_weights


@pytest.mark.parametrize(("preset", "side", "channels"), [("paper", 128, 64), ("cpu", 64, 32)])
def test_shapes_follow_the_paper(preset, side, channels):
    net = network_preset(preset)
    assert (net.input_size, net.base_channels, net.latent) == (side, channels, 100)
    g, d = Generator(net), Discriminator(net)
    g.apply(init_weights)
    fake = g(torch.randn(3, 100))
    assert fake.shape == (3, 1, side, side)
    assert fake.abs().max() <= 1.0, "tanh output"
    assert d(fake).shape == (3,)
    convs = [m for m in d.trunk if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [channels, 2 * channels, 4 * channels, 8 * channels]
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in convs)
    norms = [m for m in d.trunk if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 3, "batch norm on every layer but the input one"
    slopes = {m.negative_slope for m in d.trunk if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}
    clf = Classifier(net, classes=2)
    assert clf(torch.zeros(4, 1, 128, 128)).shape == (4, 2), "both presets take 128-px crops"
    linears = [m for m in clf.head if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [100, 100, 2]
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in clf.head) == 3


def test_weights_start_as_in_the_paper():
    d = Discriminator(network_preset("cpu"))
    d.apply(init_weights)
    weights = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(weights.std().item() - 0.02) < 0.002


def test_presets_and_overrides():
    assert gan_preset("paper").epochs == 75
    assert gan_preset("paper").lr == 2e-4
    assert classifier_preset("paper").lr == 1e-5
    assert classifier_preset("paper").epochs == 900
    assert classifier_preset("paper").min_steps == 900
    assert classifier_preset("cpu").min_steps == 300
    assert override(gan_preset("cpu"), epochs=3).epochs == 3
    with pytest.raises(ValueError, match="unknown setting"):
        override(gan_preset("cpu"), epoch=3)
    with pytest.raises(ValueError, match="unknown preset"):
        network_preset("gpu")
