from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from models.manifest import Manifest, ModelError
from models.methods import (
    METHOD_NAMES,
    METHODS,
    NETWORK_METHOD_NAMES,
    TORCH_METHOD_NAMES,
    UnknownMethodError,
    get_method,
)


def test_the_registry_names_each_method_once_in_report_order():
    assert METHOD_NAMES == (
        "knn",
        "features",
        "cnn",
        "cnn-aug",
        "imagenet",
        "topgan",
        "topgan-aug",
        "ssl",
        "ssl-aug",
    )
    assert METHOD_NAMES[1:] == TORCH_METHOD_NAMES
    assert NETWORK_METHOD_NAMES == (
        "cnn",
        "cnn-aug",
        "imagenet",
        "topgan",
        "topgan-aug",
        "ssl",
        "ssl-aug",
    )
    assert len(set(METHOD_NAMES)) == len(METHODS)


def test_what_each_method_is_made_of():
    flags = {
        m.name: (m.needs_torch, m.pretrained, m.augment, m.imagenet, m.features) for m in METHODS
    }
    assert flags == {
        "knn": (False, None, False, False, False),
        "features": (True, None, False, False, True),
        "cnn": (True, None, False, False, False),
        "cnn-aug": (True, None, True, False, False),
        "imagenet": (True, None, False, True, False),
        "topgan": (True, "gan", False, False, False),
        "topgan-aug": (True, "gan", True, False, False),
        "ssl": (True, "ssl", False, False, False),
        "ssl-aug": (True, "ssl", True, False, False),
    }
    assert [m.name for m in METHODS if m.trains_network] == list(NETWORK_METHOD_NAMES)
    assert get_method("ssl-aug") is METHODS[-1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHODS[0].needs_torch = True  # type: ignore[misc]


def test_unknown_methods_are_refused_by_the_registry_and_the_manifest():
    with pytest.raises(UnknownMethodError, match="unknown method 'svm'; known: knn, features, cnn"):
        get_method("svm")
    manifest = {
        "name": "m",
        "version": "1",
        "created": "2026-11-22T00:00:00Z",
        "classes": ["a", "b"],
        "input": {
            "shape": [1, 128, 128],
            "normalization": {"opd_min_nm": 0.0, "opd_max_nm": 100.0},
        },
        "onnx_sha256": "0" * 64,
    }
    for name in METHOD_NAMES:
        assert Manifest.from_dict({**manifest, "method": name}).method == name
    with pytest.raises(ModelError, match="unknown method 'topgan-big'"):
        Manifest.from_dict({**manifest, "method": "topgan-big"})


def test_models_imports_neither_torch_nor_training_nor_service():
    code = (
        "import sys; import models.methods, models.manifest, models.runtime; "
        "sys.exit(any(m in sys.modules for m in ('torch', 'training', 'service')))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0
