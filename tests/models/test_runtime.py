from __future__ import annotations

import json
import threading
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest

from models.manifest import ModelError, read_model_dir, sha256_of
from models.runtime import (
    MicroBatcher,
    ModelHolder,
    ModelNotLoadedError,
    ModelRuntime,
    choose_providers,
)

REPO = Path(__file__).resolve().parents[2]


def _features_model(directory: str, classes: list[str], seed: int, data: str) -> None:
    """A bundled ``features`` model: it loads, and its manifest says how it was made."""
    m = ModelRuntime(REPO / "models" / directory, "cpu").manifest
    assert m.classes == classes
    assert (m.method, m.input_shape, m.pixel_size_um) == ("features", (1, 128, 128), 0.25)
    command = m.training["command"]
    assert "train classifier --method features" in command
    assert f"--data {data}" in command
    assert m.training["seed"] == seed
    assert len(m.training["data_sha256"]) == 64
    assert [f["name"] for f in m.training["features"]][:2] == ["area_um2", "dry_mass_pg"]
    assert 0.5 < m.metrics["cv_accuracy"] <= 1
    assert m.metrics["precision"] == "fp32"
    assert m.calibration is not None
    assert m.calibration.method == "out-of-fold"
    assert m.calibration.temperature > 0


def test_bundled_models_load_and_say_how_they_were_made():
    # Beside the served network (docs/evaluation/dev/served.md says why it is served).
    _features_model("sw480-sw620-features", ["sw480", "sw620"], 3, "sw480-sw620.h5")
    _features_model("hs895-features", ["hs895-sk", "hs895-t"], 5, "hs895.h5")


def _network_model(directory: str, classes: list[str], seed: int, data: str) -> None:
    """A bundled TOP-GAN-AUG network from the bundled GAN: it loads, its manifest says
    how it was made, and the int8 rule was applied as it says."""
    m = ModelRuntime(REPO / "models" / directory, "cpu").manifest
    assert m.classes == classes
    assert (m.method, m.input_shape, m.pixel_size_um) == ("topgan-aug", (1, 128, 128), 0.25)
    assert "train classifier --method topgan-aug" in m.training["command"]
    assert f"--data {data}" in m.training["command"]
    assert m.training["seed"] == seed
    assert 0.5 < m.metrics["validation_accuracy"] <= 1
    # --int8 keeps int8 only within 0.5 points of fp32.
    kept = m.metrics["validation_accuracy_int8"] >= m.metrics["validation_accuracy_fp32"] - 0.005
    assert m.metrics["precision"] == ("int8" if kept else "fp32")
    assert m.calibration is not None
    assert m.calibration.method == "validation"
    assert m.calibration.temperature > 0
    gan = REPO / "models" / "pretrained" / "sperm-dcgan"
    info = json.loads((gan / "gan.json").read_text())
    assert info["weights_sha256"] == sha256_of(gan / "gan.pt")
    assert m.training["gan_sha256"] == info["weights_sha256"]
    assert "train gan" in info["command"]


def test_the_bundled_networks_and_their_gan():
    _network_model("sw480-sw620", ["sw480", "sw620"], 3, "sw480-sw620.h5")  # the served default
    _network_model("hs895", ["hs895-sk", "hs895-t"], 5, "hs895.h5")


def test_no_bundled_model_carries_a_machine_path():
    """Exports drop the exporter's per-node stack traces (they named the training
    machine's files); manifests carry paths relative to the repository or bare names."""
    here = f"{REPO.parent}/"  # where this checkout sits, as any machine's path would be
    for onnx in sorted((REPO / "models").glob("*/model.onnx")):
        data = onnx.read_bytes()
        for marker in ("/home/", "/tmp/", here, "site-packages", '.py"', ".py:"):
            assert marker.encode() not in data, (onnx, marker)
        manifest = (onnx.parent / "manifest.json").read_text()
        for marker in ("/home/", "/tmp/", here):
            assert marker not in manifest, (onnx.parent, marker)


def test_manifest_errors(models_root, tmp_path):
    src = models_root / "m1"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes((src / "model.onnx").read_bytes())
    manifest = json.loads((src / "manifest.json").read_text())
    cases: list[tuple[dict[str, object], str]] = [
        ({"classes": ["one"]}, "at least two classes"),
        ({"method": "svm"}, "unknown method"),
        ({"input": {"shape": [1, 128], "normalization": {}}}, "shape must be"),
        ({"onnx_sha256": "0" * 64}, "does not match its manifest"),
    ]
    for change, message in cases:
        (bad / "manifest.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(ModelError, match=message):
            read_model_dir(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_model_dir(bad)
    with pytest.raises(ModelError, match="does not exist"):
        read_model_dir(tmp_path / "none")


def test_batcher_serves_many_callers_in_batches(models_root):
    holder = ModelHolder("cpu")
    runtime = holder.load(models_root / "m1")
    sizes: list[int] = []
    batcher = MicroBatcher(
        holder, max_batch=16, max_wait_s=0.02, on_batch=lambda n, s: sizes.append(n)
    )
    rng = np.random.default_rng(0)
    requests = [
        rng.normal(200, 50, (int(n), 128, 128)).astype(np.float32) for n in rng.integers(1, 4, 20)
    ]
    big = rng.normal(200, 50, (40, 128, 128)).astype(np.float32)
    start = threading.Barrier(len(requests))
    futures = []

    def submit(x):
        start.wait()
        futures.append(batcher.submit(x))

    threads = [threading.Thread(target=submit, args=(x,)) for x in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    big_future = batcher.submit(big)
    wait([*futures, big_future], timeout=30)
    got = {id(f): f.result().probabilities for f in futures}
    assert sum(len(p) for p in got.values()) == sum(len(x) for x in requests)
    np.testing.assert_allclose(big_future.result().probabilities, runtime.predict(big), atol=1e-6)
    assert max(sizes) <= 16, "no ONNX Runtime call exceeds max_batch"
    assert len(sizes) < len(requests), "requests were batched together"
    batcher.close()


def test_batcher_without_model_and_providers():
    batcher = MicroBatcher(ModelHolder("cpu"))
    with pytest.raises(ModelNotLoadedError):
        batcher.submit(np.zeros((1, 128, 128), np.float32)).result(5)
    batcher.close()
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="auto, cuda or cpu"):
        choose_providers("tpu")  # type: ignore[arg-type]


def test_batcher_drops_a_request_its_caller_gave_up(models_root):
    """A request cancelled while it waits for company takes no result, and the
    batcher goes on serving the others (set_result on it would end the thread)."""
    holder = ModelHolder("cpu")
    holder.load(models_root / "m1")
    sizes: list[int] = []
    batcher = MicroBatcher(holder, max_wait_s=1.0, on_batch=lambda n, s: sizes.append(n))
    crops = np.random.default_rng(1).normal(200, 50, (3, 128, 128)).astype(np.float32)
    given_up = batcher.submit(crops[:2])
    assert given_up.cancel()
    kept = batcher.submit(crops[2:])
    assert kept.result(timeout=30).probabilities.shape == (1, 2)
    assert sizes == [1], "only the request still awaited was run"
    assert batcher.submit(crops).result(timeout=30).probabilities.shape == (3, 2)
    batcher.close()


def test_a_request_that_does_not_wait_runs_with_what_is_queued(models_root):
    """A no-wait request (the camera loop's frame) ends the wait of a batch already
    waiting for company and runs with it in one call; alone, it does not wait at all
    (the batch window here is a minute: a request that waited would time out)."""
    holder = ModelHolder("cpu")
    runtime = holder.load(models_root / "m1")
    sizes: list[int] = []
    batcher = MicroBatcher(holder, max_wait_s=60.0, on_batch=lambda n, s: sizes.append(n))
    crops = np.random.default_rng(2).normal(200, 50, (5, 128, 128)).astype(np.float32)
    waiting = batcher.submit(crops[:2])
    prompt = batcher.submit(crops[2:], wait=False)
    np.testing.assert_allclose(
        prompt.result(timeout=30).probabilities, runtime.predict(crops[2:]), atol=1e-6
    )
    assert waiting.result(timeout=30).probabilities.shape == (2, 2)
    assert sizes == [5], "both requests ran in one call"
    alone = batcher.submit(crops[:1], wait=False)
    assert alone.result(timeout=30).probabilities.shape == (1, 2)
    assert sizes == [5, 1]
    batcher.close()
