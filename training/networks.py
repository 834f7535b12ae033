"""The DCGAN of TOP-GAN and the classifier built on its discriminator (PyTorch).

Generator: noise (latent) -> FC -> (8 c, s/16, s/16) -> four 5x5 stride-2
transposed convolutions with batch norm and ReLU -> (channels, s, s), tanh.
Discriminator: four 5x5 stride-2 convolutions (c, 2c, 4c, 8c), batch norm except
on the input layer, LeakyReLU 0.1 -> FC -> one logit (the sigmoid is in the loss).
Classifier: the discriminator's convolutional trunk plus FC(hidden) -> FC(hidden)
-> FC(classes), dropout before each, softmax at export.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .config import NetworkConfig


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) for convolutions and linear layers; N(1, 0.02) for batch-norm scales."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def colour_encode(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) normalised OPD in [-1, 1] -> (N, 3, H, W) jet colours in [-1, 1].

    The paper feeds its networks colour images of the OPD maps; jet is piecewise
    linear, so it is a few clamps that export to ONNX as they are."""
    t = ((x + 1) / 2).clamp(0, 1)
    rgb = [(1.5 - (4 * t - centre).abs()).clamp(0, 1) for centre in (3.0, 2.0, 1.0)]
    return torch.cat(rgb, dim=1) * 2 - 1


class ColourEncode(nn.Module):
    """:func:`colour_encode` as a layer (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return colour_encode(x)


def encoder(cfg: NetworkConfig) -> nn.Module:
    """What turns the one-channel input into the trunk's ``channels``."""
    return ColourEncode() if cfg.channels == 3 else nn.Identity()


class Generator(nn.Module):
    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        c = cfg.base_channels
        self.start = cfg.input_size // 16
        self.top = 8 * c
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent, self.top * self.start * self.start, bias=False),
            nn.BatchNorm1d(self.top * self.start * self.start),
            nn.ReLU(True),
        )
        layers: list[nn.Module] = []
        widths = [8 * c, 4 * c, 2 * c, c]
        for w_in, w_out in itertools.pairwise(widths):
            layers += [
                nn.ConvTranspose2d(w_in, w_out, 5, 2, 2, output_padding=1, bias=False),
                nn.BatchNorm2d(w_out),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(c, cfg.channels, 5, 2, 2, output_padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, self.top, self.start, self.start)
        return self.net(x)


def trunk(cfg: NetworkConfig) -> nn.Sequential:
    """The discriminator's convolutions: (channels, s, s) -> (8 c, s/16, s/16)."""
    c = cfg.base_channels
    widths = [cfg.channels, c, 2 * c, 4 * c, 8 * c]
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Conv2d(w_in, w_out, 5, 2, 2, bias=i == 0))
        if i > 0:
            layers.append(nn.BatchNorm2d(w_out))
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.trunk = trunk(cfg)
        side = cfg.input_size // 16
        self.head = nn.Linear(8 * cfg.base_channels * side * side, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1)).squeeze(1)


def input_pool(cfg: NetworkConfig) -> nn.Module:
    """Crops at ``crop_size`` -> ``input_size`` (average pooling; none when equal)."""
    factor = cfg.crop_size // cfg.input_size
    return nn.AvgPool2d(factor) if factor > 1 else nn.Identity()


def classifier_head(features: int, classes: int, hidden: int, dropout: float) -> nn.Sequential:
    """The paper's head on a trunk's ``features`` outputs: FC(hidden) -> FC(hidden) ->
    FC(classes), dropout before each."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(features, hidden),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, classes),
    )


class Classifier(nn.Module):
    """Crops at ``crop_size`` in, class logits out; pools to ``input_size`` first."""

    def __init__(
        self, cfg: NetworkConfig, classes: int, hidden: int = 100, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.pool = input_pool(cfg)
        self.encode = encoder(cfg)
        self.trunk = trunk(cfg)
        side = cfg.input_size // 16
        self.head = classifier_head(8 * cfg.base_channels * side * side, classes, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self.encode(self.pool(x))))


class WithSoftmax(nn.Module):
    """What is exported: calibrated probabilities, the softmax of the logits divided by
    the model's ``temperature`` (training.calibration), instead of logits."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x) / self.temperature, dim=1)
