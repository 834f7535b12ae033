"""Model directories: ``model.onnx`` plus ``manifest.json`` (docs/design.md, "Files (contract)").

A manifest names the model, its classes, its input (shape, pixel size, and how OPD
in nm maps to the network's input), how it was trained and evaluated, how its
probabilities were calibrated, and the sha256 of its ONNX file. A directory whose
manifest is incomplete or whose checksum does not match is refused with
:class:`ModelError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .methods import UnknownMethodError, get_method


class ModelError(ValueError):
    """A model directory that cannot be served as it is."""


@dataclass(frozen=True)
class Normalization:
    """OPD (nm) -> network input: clip to [opd_min_nm, opd_max_nm], map linearly to
    [out_min, out_max] (the GAN's tanh range [-1, 1] by default)."""

    opd_min_nm: float
    opd_max_nm: float
    out_min: float = -1.0
    out_max: float = 1.0

    @classmethod
    def fit(cls, opd_nm: np.ndarray) -> Normalization:
        """A range covering the data: its 0.1 and 99.9 percentiles (sampled on at most
        about 500 crops) widened to 10 nm steps, never above 0 nm at the low end and at
        least 10 nm wide."""
        sample = opd_nm[:: max(1, len(opd_nm) // 500)]
        lo, hi = np.percentile(sample, [0.1, 99.9])
        lo = math.floor(min(float(lo), 0.0) / 10) * 10
        hi = math.ceil(max(float(hi), lo + 10) / 10) * 10
        return cls(float(lo), float(hi))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        kind = data.get("kind", "linear")
        if kind != "linear":
            raise ModelError(f"unknown normalization kind {kind!r} (expected 'linear')")
        try:
            norm = cls(
                float(data["opd_min_nm"]),
                float(data["opd_max_nm"]),
                float(data.get("out_min", -1.0)),
                float(data.get("out_max", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"normalization needs opd_min_nm and opd_max_nm: {exc}") from None
        if not norm.opd_max_nm > norm.opd_min_nm:
            raise ModelError(
                f"normalization range is empty: {norm.opd_min_nm} .. {norm.opd_max_nm}"
            )
        return norm

    def to_dict(self) -> dict[str, Any]:
        """The manifest's (and gan.json's) ``normalization`` object."""
        return {
            "kind": "linear",
            "opd_min_nm": self.opd_min_nm,
            "opd_max_nm": self.opd_max_nm,
            "out_min": self.out_min,
            "out_max": self.out_max,
        }

    def apply(self, opd_nm: np.ndarray) -> np.ndarray:
        """(N, H, W) OPD in nm -> float32 network input of the same shape; training and
        the service both normalise with this."""
        lo, hi = self.opd_min_nm, self.opd_max_nm
        unit = (np.clip(opd_nm, lo, hi) - lo) / (hi - lo)
        return (unit * (self.out_max - self.out_min) + self.out_min).astype(np.float32)


#: How a model's temperature was fitted (training.calibration): on the training's
#: validation split, on the half of a large one that did not choose the epoch, on
#: out-of-fold logits of its training crops, or not at all.
CALIBRATION_METHODS = ("validation", "calibration-split", "out-of-fold", "none")


@dataclass(frozen=True)
class Calibration:
    """``calibration``: the temperature T that ``model.onnx`` already divides its
    logits by before its softmax (the service applies nothing more), how it was
    fitted, and the rest of its record (``details``: crops, prior, ECE and NLL
    before and after on those crops, or a ``note`` saying why there is none). A
    manifest without it (models made before calibration) is T = 1."""

    temperature: float = 1.0
    method: str = "none"
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        if not isinstance(data, dict) or "temperature" not in data or "method" not in data:
            raise ModelError("manifest calibration needs temperature and method")
        try:
            temperature = float(data["temperature"])
        except (TypeError, ValueError):
            raise ModelError(
                f"calibration temperature must be a number, got {data['temperature']!r}"
            ) from None
        if not (math.isfinite(temperature) and temperature > 0):
            raise ModelError(f"calibration temperature must be positive, got {temperature}")
        method = str(data["method"])
        if method not in CALIBRATION_METHODS:
            raise ModelError(
                f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}"
            )
        details = {k: v for k, v in data.items() if k not in ("temperature", "method")}
        return cls(temperature, method, details)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "method": self.method, **self.details}


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: read with :meth:`from_dict`, written with :meth:`to_dict`
    (by :func:`write_model_dir`, which fills in ``onnx_sha256``)."""

    name: str
    version: str
    created: str
    classes: list[str]
    input_shape: tuple[int, int, int]
    pixel_size_um: float
    normalization: Normalization
    method: str
    onnx_sha256: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: None: a model from before calibration, read as T = 1 (see :attr:`temperature`).
    calibration: Calibration | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        missing = [
            k
            for k in ("name", "version", "created", "classes", "input", "method", "onnx_sha256")
            if k not in data
        ]
        if missing:
            raise ModelError(f"manifest lacks {', '.join(missing)}")
        inp = data["input"]
        if not isinstance(inp, dict) or "shape" not in inp or "normalization" not in inp:
            raise ModelError(
                "manifest input needs shape [C, H, W], pixel_size_um and normalization"
            )
        shape = tuple(int(v) for v in inp["shape"])
        if len(shape) != 3 or min(shape) < 1:
            raise ModelError(f"manifest input shape must be [C, H, W], got {inp['shape']}")
        classes = [str(c) for c in data["classes"]]
        if len(classes) < 2:
            raise ModelError(f"a classifier needs at least two classes, got {classes}")
        try:
            get_method(str(data["method"]))
        except UnknownMethodError as exc:
            raise ModelError(str(exc)) from None
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            created=str(data["created"]),
            classes=classes,
            input_shape=(shape[0], shape[1], shape[2]),
            pixel_size_um=float(inp.get("pixel_size_um", 0.25)),
            normalization=Normalization.from_dict(inp["normalization"]),
            method=str(data["method"]),
            onnx_sha256=str(data["onnx_sha256"]),
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            calibration=(
                Calibration.from_dict(data["calibration"]) if "calibration" in data else None
            ),
            raw=data,
        )

    @property
    def temperature(self) -> float:
        """The temperature inside ``model.onnx`` (1.0 for a model without calibration)."""
        return 1.0 if self.calibration is None else self.calibration.temperature

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json``, its keys in the contract's order
        (``calibration`` only when the model has it)."""
        data = {
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "classes": list(self.classes),
            "input": {
                "shape": list(self.input_shape),
                "pixel_size_um": self.pixel_size_um,
                "normalization": self.normalization.to_dict(),
            },
            "method": self.method,
            "training": self.training,
            "metrics": self.metrics,
        }
        if self.calibration is not None:
            data["calibration"] = self.calibration.to_dict()
        data["onnx_sha256"] = self.onnx_sha256
        return data

    def summary(self) -> dict[str, Any]:
        """What the API reports with every classification."""
        return {
            "name": self.name,
            "version": self.version,
            "method": self.method,
            "classes": self.classes,
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_model_dir(directory: Path) -> tuple[Manifest, Path]:
    """Check ``directory`` and return its manifest and ONNX path."""
    if not directory.is_dir():
        raise ModelError(f"model directory {directory} does not exist")
    manifest_path = directory / "manifest.json"
    onnx_path = directory / "model.onnx"
    if not manifest_path.is_file():
        raise ModelError(f"{directory} has no manifest.json")
    if not onnx_path.is_file():
        raise ModelError(f"{directory} has no model.onnx")
    try:
        data = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{manifest_path} must hold a JSON object")
    manifest = Manifest.from_dict(data)
    actual = sha256_of(onnx_path)
    if actual != manifest.onnx_sha256:
        raise ModelError(
            f"{onnx_path} does not match its manifest (sha256 {actual[:12]}..., manifest says "
            f"{manifest.onnx_sha256[:12]}...): the file was changed or corrupted"
        )
    return manifest, onnx_path


def write_model_dir(directory: Path, onnx_bytes: bytes, manifest: Manifest) -> Path:
    """Write ``model.onnx`` and ``manifest.json``, whose ``onnx_sha256`` is set to the
    ONNX bytes' digest (whatever ``manifest`` held)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(onnx_bytes)
    manifest = replace(manifest, onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest())
    (directory / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return directory
