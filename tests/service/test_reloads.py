"""Where POST /model/reload may load from, and the reloaded model across restarts
(service/reloads.py), on real model directories and the service's own start."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from service.classification import Classification
from service.metrics import Metrics
from service.reloads import ModelPathError, ServedModelFile, model_roots, resolve_model_path
from service.settings import BUNDLED_MODELS, Settings


def settings_for(tmp: Path, root: Path, model_dir: Path | None) -> Settings:
    return Settings(
        camera="none",
        models_root=root,
        model_dir=model_dir,
        served_model_file=tmp / "state" / "served-model.json",
        database_url=f"sqlite:///{tmp}/results.sqlite",
        execution_provider="cpu",
    )


def served_directory(settings: Settings) -> Path | None:
    """The model directory the service serves when it starts with ``settings``."""
    classification = Classification.start(settings, Metrics())
    try:
        runtime = classification.runtime
        return None if runtime is None else Path(runtime.directory)
    finally:
        classification.close()


def test_reloads_load_from_the_models_root_or_the_bundled_models(tmp_path, models_root):
    settings = settings_for(tmp_path, models_root, None)
    roots = model_roots(settings)
    assert roots == [models_root.resolve(), BUNDLED_MODELS.resolve()]
    assert resolve_model_path("m1", roots) == (models_root / "m1").resolve()
    assert resolve_model_path(str(models_root / "m2"), roots) == (models_root / "m2").resolve()
    assert resolve_model_path("hs895", roots) == (BUNDLED_MODELS / "hs895").resolve()
    (tmp_path / "elsewhere").mkdir()
    for path, status in (
        ("missing", 404),
        ("../elsewhere", 403),
        (str(tmp_path / "elsewhere"), 403),
        ("m1\0", 422),
    ):
        with pytest.raises(ModelPathError) as error:
            resolve_model_path(path, roots)
        assert error.value.status == status, path


def test_a_restart_serves_the_reloaded_model_until_the_configuration_changes(
    tmp_path, models_root, caplog
):
    root = tmp_path / "models"
    shutil.copytree(models_root, root)
    settings = settings_for(tmp_path, root, root / "m1")
    assert served_directory(settings) == root / "m1"  # nothing remembered: the configured

    classification = Classification.start(settings, Metrics())
    try:
        classification.reload_model(root / "m2")
    finally:
        classification.close()
    remembered = json.loads(settings.served_model_file.read_text())
    assert remembered["directory"] == str((root / "m2").resolve())
    assert remembered["model_dir"] == str((root / "m1").resolve())
    assert (remembered["name"], remembered["version"]) == ("small", "2")
    assert served_directory(settings) == (root / "m2").resolve(), "the reload survives"

    # The configuration names another model since: it is the newer decision.
    caplog.set_level(logging.INFO, logger="service.reloads")
    other = settings_for(tmp_path, root, BUNDLED_MODELS / "hs895")
    assert served_directory(other) == BUNDLED_MODELS / "hs895"
    assert "serving the configured model" in caplog.text

    # A remembered model that no longer loads gives way to the configured one.
    with (root / "m2" / "model.onnx").open("ab") as f:
        f.write(b"\0")
    assert served_directory(settings) == root / "m1"
    assert "does not load, serving the configured one" in caplog.text
    shutil.rmtree(root / "m2")
    assert served_directory(settings) == root / "m1"
    assert "is gone" in caplog.text
    settings.served_model_file.write_text("{not json")
    assert served_directory(settings) == root / "m1"
    assert "is unreadable" in caplog.text


def test_a_memory_that_cannot_be_written_costs_the_memory_not_the_reload(
    tmp_path, models_root, caplog
):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    memory = ServedModelFile(blocked / "served-model.json", models_root / "m1")
    settings = settings_for(tmp_path, models_root, models_root / "m1")
    classification = Classification.start(settings, Metrics())
    classification.served = memory
    try:
        manifest = classification.reload_model(models_root / "m2")
        assert manifest.version == "2"
        runtime = classification.runtime
        assert runtime is not None
        assert runtime.manifest.version == "2"
    finally:
        classification.close()
    assert "a restart will not serve it" in caplog.text
    assert memory.recall() is None
