from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented():
    text = README.read_text()
    for name, field in Settings.model_fields.items():
        assert f"`TOPGAN_{name.upper()}`" in text, name
        assert field.description, name


def test_sources_and_priorities(tmp_path, monkeypatch):
    config = tmp_path / "topgan.toml"
    config.write_text('port = 9001\nsample_half = "right"\napi_key = "from-file"\n')
    monkeypatch.setenv("TOPGAN_API_KEY", "from-env")
    monkeypatch.delenv("TOPGAN_CONFIG", raising=False)
    settings = load_settings(config, host="0.0.0.0")
    assert settings.port == 9001
    assert settings.sample_half == "right"
    assert settings.api_key == "from-env", "the environment overrides the file"
    assert settings.host == "0.0.0.0"


def test_bad_settings_name_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("TOPGAN_CONFIG", raising=False)
    with pytest.raises(ValidationError, match="camera"):
        Settings(camera="webcam")
    with pytest.raises(ValidationError, match="port"):
        Settings(port=70000)
    with pytest.raises(ValidationError, match="unknown cell line 'nope'"):
        Settings(simulated_lines="sw480, nope")
    with pytest.raises(ValidationError, match="no cell line"):
        Settings(simulated_lines=" , ")
    assert Settings(simulated_lines=" sw480 ,sw620").simulated_lines == "sw480,sw620"
    with pytest.raises(ValueError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    monkeypatch.setenv("TOPGAN_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match="batch_size"):
        Settings()
