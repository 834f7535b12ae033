"""What training writes records no path of the machine it ran on (models.provenance)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from models.manifest import sha256_of
from training.classifier import train_classifier
from training.config import classifier_preset, gan_preset, override
from training.evaluate import evaluate
from training.gan import train_gan


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _machine_free(record: dict[str, Any], root: Path) -> None:
    for text in _strings(record):
        assert str(root) not in text, text
        assert not text.startswith("/"), text
        assert "../.." not in text, text


def test_training_records_no_absolute_path(data, tmp_path, monkeypatch):
    """Data outside the working directory, the GAN and the model inside it, every path
    given absolute: the manifest, gan.json and results.json keep none of them."""
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    cells = tmp_path / "elsewhere" / "cells.h5"
    cells.parent.mkdir()
    shutil.copy(data / "cells.h5", cells)
    monkeypatch.chdir(project)
    gan, model = project / "models" / "pretrained" / "gan", project / "models" / "m"
    config = override(gan_preset("cpu"), epochs=1, batch_size=8, max_steps=1)
    train_gan([data / "pool.h5"], gan, config, command=f"topgan train gan --out {gan}")
    info = json.loads((gan / "gan.json").read_text())
    assert info["data"][0]["file"] == "pool.h5"
    assert info["command"] == "topgan train gan --out models/pretrained/gan"
    _machine_free(info, tmp_path)

    tiny = override(classifier_preset("cpu"), epochs=1, max_steps=1, batch_size=4)
    command = f"topgan train classifier --method topgan --data {cells} --gan {gan} --out {model}"
    train_classifier("topgan", cells, model, tiny, "cpu", pretrained=gan, command=command)
    manifest = json.loads((model / "manifest.json").read_text())
    training = manifest["training"]
    assert training["data"] == "cells.h5"
    assert training["pretrained"]["path"] == training["gan"] == "../pretrained/gan"
    assert training["command"] == (
        "topgan train classifier --method topgan --data cells.h5 --gan models/pretrained/gan "
        "--out models/m"
    )
    _machine_free(manifest, tmp_path)

    out = project / "eval"
    evaluate(
        cells,
        out,
        ["knn", "topgan"],
        [4],
        2,
        tiny,
        "cpu",
        pretrained=gan,
        command=f"topgan evaluate --data {cells} --gan {gan} --out {out}",
    )
    meta = json.loads((out / "results.json").read_text())["meta"]
    # results.json's paths are relative to its folder, the command's to the working one.
    assert (meta["data"], meta["gan"]) == ("cells.h5", "../models/pretrained/gan")
    assert meta["data_sha256"] == sha256_of(cells)
    assert meta["pretrained"]["path"] == "../models/pretrained/gan"
    expected = "topgan evaluate --data cells.h5 --gan models/pretrained/gan --out eval"
    assert meta["command"] == expected
    _machine_free(meta, tmp_path)
