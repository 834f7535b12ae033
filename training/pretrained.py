"""Pretrained trunks, whichever pretraining made them: a GAN folder (``gan.pt``, the
discriminator's trunk; :mod:`training.gan`) or an SSL folder (``ssl.pt``;
:mod:`training.ssl`), loaded into one :class:`Pretrained`.

A trunk comes with the normalisation it was pretrained at, and a classifier
fine-tuned from it keeps that one: its filters learned OPD at that scale, and a
normalisation refitted on a handful of training crops would show them another one
in every fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.manifest import Normalization, sha256_of
from models.methods import get_method
from models.provenance import portable_path

from .config import NetworkConfig

#: Each kind's weights file and the command that writes it.
WEIGHTS = {"gan": "gan.pt", "ssl": "ssl.pt"}
COMMANDS = {"gan": "topgan train gan", "ssl": "topgan train ssl"}
NAMES = {"gan": "a GAN", "ssl": "an SSL"}


@dataclass(frozen=True)
class Pretrained:
    """A pretrained trunk: its ``kind`` ("gan" or "ssl"), folder, weights (keyed as a
    classifier's ``trunk`` takes them), network, the pretraining's normalisation and
    the weights file's sha256."""

    kind: str
    directory: Path
    trunk: dict[str, torch.Tensor]
    network: NetworkConfig
    normalization: Normalization
    sha256: str

    @property
    def weights(self) -> Path:
        return self.directory / WEIGHTS[self.kind]

    def record(self, base: Path) -> dict[str, Any]:
        """What a manifest or results.json written in ``base`` records of it (the
        folder as a portable path)."""
        return {
            "path": portable_path(self.directory, base),
            "kind": self.kind,
            "sha256": self.sha256,
        }


def load_pretrained(directory: Path) -> Pretrained:
    """The trunk in ``directory``: a GAN folder's discriminator trunk or an SSL folder's
    trunk, with its network and normalisation."""
    found = [kind for kind, name in WEIGHTS.items() if (directory / name).is_file()]
    if not found:
        raise ValueError(
            f"{directory} holds neither gan.pt nor ssl.pt: train one with "
            f"'{COMMANDS['gan']}' or '{COMMANDS['ssl']}'"
        )
    if len(found) > 1:
        raise ValueError(f"{directory} holds both gan.pt and ssl.pt: keep one pretraining a folder")
    kind = found[0]
    path = directory / WEIGHTS[kind]
    state = torch.load(path, map_location="cpu", weights_only=False)
    if kind == "gan":
        trunk = {
            k.removeprefix("trunk."): v
            for k, v in state["discriminator"].items()
            if k.startswith("trunk.")
        }
    else:
        trunk = state["trunk"]
    return Pretrained(
        kind=kind,
        directory=directory,
        trunk=trunk,
        network=NetworkConfig(**state["network"]),
        normalization=Normalization.from_dict(state["normalization"]),
        sha256=sha256_of(path),
    )


def pretrained_for(method: str, pretrained: Pretrained | None) -> Pretrained | None:
    """The trunk ``method`` starts from (None for a method that needs none); a
    one-line error when it needs one and has none, or one of the other kind."""
    kind = get_method(method).pretrained
    if kind is None:
        return None
    if pretrained is None:
        raise ValueError(
            f"method {method} needs --pretrained DIR: {NAMES[kind]} folder from "
            f"'{COMMANDS[kind]}' ({WEIGHTS[kind]})"
        )
    if pretrained.kind != kind:
        raise ValueError(
            f"method {method} needs {NAMES[kind]} folder ({WEIGHTS[kind]}, from "
            f"'{COMMANDS[kind]}'); {pretrained.directory} is {NAMES[pretrained.kind]} "
            f"folder ({pretrained.weights.name})"
        )
    return pretrained


def trunk_record(start: Pretrained | None, base: Path) -> dict[str, Any]:
    """The keys a manifest's ``training`` (and results.json's ``meta``) written in
    ``base`` give the pretrained trunk: ``pretrained`` (its folder relative to ``base``,
    kind and sha256, or None) and, as manifests did before SSL trunks, ``gan`` and
    ``gan_sha256`` for a GAN (else None)."""
    gan = start if start is not None and start.kind == "gan" else None
    return {
        "pretrained": start.record(base) if start else None,
        "gan": portable_path(gan.directory, base) if gan else None,
        "gan_sha256": gan.sha256 if gan else None,
    }
