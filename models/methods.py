"""The classification methods: one registry that the manifest, training and evaluation
read instead of spelling the names (or parsing them) each on their own.

``knn`` is NumPy only; every other method is a PyTorch module exported to ONNX:
``features`` (fixed QPI features of each cell, area, dry mass, OPD statistics, shape,
texture and radial profile, through an L2 logistic regression; no network is
trained), ``cnn`` (the TOP-GAN classifier from random weights), ``imagenet``
(EfficientNet-Lite0 pretrained on ImageNet), ``topgan`` (the trunk of a pretrained
DCGAN's discriminator) and ``ssl`` (the same trunk pretrained self-supervised,
training.ssl); ``-aug`` adds dihedral augmentation of the training batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Method:
    """What a method is made of.

    needs_torch : a PyTorch network (trained, then exported to ONNX); False for knn
    pretrained : the kind of pretrained trunk the network starts from (training.pretrained):
        "gan" (a DCGAN's discriminator, gan.pt) or "ssl" (self-supervised, ssl.pt);
        None: no pretrained folder
    augment : training batches go through random dihedral transforms
    imagenet : EfficientNet-Lite0 with its ImageNet weights
    features : fixed QPI features and a logistic regression (training.features), not a
        network trained by gradient descent; never quantised to int8
    """

    name: str
    needs_torch: bool = True
    pretrained: Literal["gan", "ssl"] | None = None
    augment: bool = False
    imagenet: bool = False
    features: bool = False

    @property
    def trains_network(self) -> bool:
        """A network trained by :func:`training.fit.fit` (and quantisable to int8)."""
        return self.needs_torch and not self.features


#: Every method, in the order reports list them.
METHODS: tuple[Method, ...] = (
    Method("knn", needs_torch=False),
    Method("features", features=True),
    Method("cnn"),
    Method("cnn-aug", augment=True),
    Method("imagenet", imagenet=True),
    Method("topgan", pretrained="gan"),
    Method("topgan-aug", pretrained="gan", augment=True),
    Method("ssl", pretrained="ssl"),
    Method("ssl-aug", pretrained="ssl", augment=True),
)
METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in METHODS)
#: The methods that need PyTorch (every one exported from a PyTorch module).
TORCH_METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in METHODS if m.needs_torch)
#: The methods that train a network (training.fit), which int8 quantisation takes.
NETWORK_METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in METHODS if m.trains_network)

_BY_NAME = {m.name: m for m in METHODS}


class UnknownMethodError(ValueError):
    """A method name that is not in :data:`METHODS`."""


def get_method(name: str) -> Method:
    """The registered method called ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}"
        ) from None
