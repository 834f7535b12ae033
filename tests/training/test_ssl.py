"""Self-supervised pretraining (training.ssl) and pretrained trunks of either kind
(training.pretrained) as the classifiers take them."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from acquisition.simulator.optics import band_limit
from models.manifest import sha256_of
from models.runtime import ModelRuntime
from service.cli import main
from training.config import override, ssl_preset
from training.data import load_crops
from training.pretrained import load_pretrained
from training.ssl import OpdViews, nt_xent, train_ssl


def _train(kind, data, out, *extra):
    args = ["-q", "train", kind, "--data", str(data / "pool.h5"), "--out", str(out)]
    assert main([*args, "--dry-run", *extra]) == 0


def _classifier(method, data, pretrained, out, option="--pretrained"):
    args = ["-q", "train", "classifier", "--method", method, "--data", str(data / "cells.h5")]
    return main([*args, option, str(pretrained), "--out", str(out), "--dry-run"])


@pytest.fixture(scope="module")
def ssl_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ssl")
    _train("ssl", data, out)
    return out


@pytest.fixture(scope="module")
def gan_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan")
    _train("gan", data, out)
    return out


def test_a_dry_run_writes_a_folder_that_resume_continues(data, ssl_dir, tmp_path, caplog):
    state = torch.load(ssl_dir / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (1, 2)
    keys = {"model", "optimizer", "network", "config", "normalization", "seed", "rng", "losses"}
    assert keys <= set(state)
    info = json.loads((ssl_dir / "ssl.json").read_text())
    # Beside the folder: relative to it (models.provenance).
    assert info["data"] == [
        {"file": f"../{data.name}/pool.h5", "sha256": sha256_of(data / "pool.h5")}
    ]
    assert info["crops"] == 24
    assert info["weights_sha256"] == sha256_of(ssl_dir / "ssl.pt")
    assert [r["step"] for r in info["losses"]] == [2]
    # The normalisation is the pool's, in nm, and goes with the weights.
    weights = torch.load(ssl_dir / "ssl.pt", weights_only=False)
    assert weights["normalization"] == info["normalization"] == state["normalization"]
    assert weights["normalization"]["opd_max_nm"] > 50

    folder = tmp_path / "ssl"
    _train("ssl", data, folder)
    caplog.set_level(logging.INFO, logger="training.ssl")
    _train("ssl", data, folder, "--resume")  # the folder it wrote: continued
    assert "resuming from epoch 1, step 2" in caplog.text
    resumed = json.loads((folder / "ssl.json").read_text())
    assert [r["step"] for r in resumed["losses"]] == [2, 4], "a resumed dry run: 2 more steps"
    # --epochs is a total, as for the GAN: one more epoch, then a finished run is refused.
    config = override(ssl_preset("cpu"), epochs=3, batch_size=8, max_steps=2)
    train_ssl([data / "pool.h5"], folder, config, seed=0, resume=True)
    resumed = json.loads((folder / "ssl.json").read_text())
    assert [r["step"] for r in resumed["losses"]] == [2, 4, 6]
    assert torch.load(folder / "checkpoint.pt", weights_only=False)["step"] == 6
    with pytest.raises(ValueError, match="already trained 3 epochs"):
        train_ssl([data / "pool.h5"], folder, config, seed=0, resume=True)
    # The same seed trains the same trunk.
    again = tmp_path / "again"
    _train("ssl", data, again)
    first = torch.load(ssl_dir / "ssl.pt", weights_only=False)["trunk"]
    for key, value in torch.load(again / "ssl.pt", weights_only=False)["trunk"].items():
        assert torch.equal(value, first[key]), key
    assert main(["-q", "train", "ssl", "--data", str(data), "--out", str(again)]) == 2


def test_a_classifier_starts_from_the_ssl_trunk(data, ssl_dir, tmp_path):
    model = tmp_path / "model"
    assert _classifier("ssl", data, ssl_dir, model) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    pretrained = load_pretrained(ssl_dir)
    assert pretrained.kind == "ssl"
    # The pool is sperm (-10..90 nm or so), the cells reach hundreds of nm: the trunk's
    # scale would clip them, so the classifier fits its own and says why.
    assert manifest["input"]["normalization"]["opd_max_nm"] > pretrained.normalization.opd_max_nm
    assert manifest["training"]["normalization_source"].startswith(
        "training crops: the ssl pretraining's"
    )
    record = manifest["training"]["pretrained"]
    assert record["kind"] == "ssl"
    assert record["sha256"] == sha256_of(ssl_dir / "ssl.pt")
    assert (manifest["training"]["gan"], manifest["training"]["gan_sha256"]) == (None, None)
    probabilities = ModelRuntime(model, "cpu").predict(
        np.random.default_rng(0).normal(200, 50, (3, 128, 128)).astype(np.float32)
    )
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    # The fine-tuned trunk started from the pretrained one: the loaded weights are it.
    trunk = torch.load(ssl_dir / "ssl.pt", weights_only=False)["trunk"]
    assert all(torch.equal(pretrained.trunk[k], v) for k, v in trunk.items())


def test_topgan_records_its_gan_and_gan_is_an_alias(data, gan_dir, tmp_path):
    model = tmp_path / "topgan"
    assert _classifier("topgan", data, gan_dir, model, option="--gan") == 0
    manifest = json.loads((model / "manifest.json").read_text())
    gan = json.loads((gan_dir / "gan.json").read_text())
    training = manifest["training"]
    assert training["normalization_source"].startswith("training crops: the gan pretraining's")
    assert manifest["input"]["normalization"] != gan["normalization"]
    assert training["pretrained"]["kind"] == "gan"
    assert training["gan_sha256"] == training["pretrained"]["sha256"] == gan["weights_sha256"]
    assert training["gan"] == training["pretrained"]["path"]


def test_a_method_given_the_other_kind_of_folder_is_refused(
    data, ssl_dir, gan_dir, tmp_path, capsys
):
    capsys.readouterr()
    assert _classifier("ssl", data, gan_dir, tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert err == (
        "topgan train classifier: error: method ssl needs an SSL folder (ssl.pt, from "
        f"'topgan train ssl'); {gan_dir} is a GAN folder (gan.pt)\n"
    )
    assert _classifier("topgan-aug", data, ssl_dir, tmp_path / "b") == 2
    assert "method topgan-aug needs a GAN folder (gan.pt, from 'topgan train gan')" in (
        capsys.readouterr().err
    )
    assert _classifier("ssl", data, tmp_path, tmp_path / "c") == 2
    assert "holds neither gan.pt nor ssl.pt" in capsys.readouterr().err
    # evaluate checks every method against the folder before it trains any.
    args = ["-q", "evaluate", "--data", str(data / "cells.h5"), "--methods", "cnn,ssl"]
    args += ["--train-sizes", "4", "--folds", "2", "--dry-run", "--gan", str(gan_dir)]
    assert main([*args, "--out", str(tmp_path / "eval")]) == 2
    assert "method ssl needs an SSL folder" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
    assert not any((tmp_path / m).exists() for m in "abc")


def test_views_keep_the_opd_quantitative(data):
    crops = load_crops([data / "cells.h5"])
    config = ssl_preset("cpu")
    views = OpdViews(config, (128, 128), crops.pixel_size_um, crops.wavelength_nm)
    x = torch.from_numpy(crops.opd[:4])[:, None]
    zero = torch.zeros(4, 1, 1, 1)
    torch.testing.assert_close(views.defocus(x, zero), x, atol=1e-3, rtol=0)
    # A whole-pixel shift is a roll; a sub-pixel one keeps the dry mass (the OPD's sum).
    torch.testing.assert_close(
        views.shift(x, zero + 3, zero - 2), torch.roll(x, (3, -2), (2, 3)), atol=1e-3, rtol=0
    )
    half = views.shift(x, zero + 0.5, zero + 0.25)
    torch.testing.assert_close(half.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=1e-5, atol=0)
    # Defocus is the simulator's angular-spectrum propagation of the field (its pupil
    # wide open), read back as OPD relative to the focused field.
    wavelength_nm = crops.wavelength_nm
    assert wavelength_nm is not None
    k = 2 * math.pi / wavelength_nm
    field = np.exp(1j * k * crops.opd[0].astype(np.float64))
    moved = band_limit(field, 1.0, 2.0, wavelength_nm, crops.pixel_size_um)
    expected = crops.opd[0] + np.angle(moved * field.conj()) / k
    got = views.defocus(x[:1], zero[:1] + 2.0)[0, 0].numpy()
    np.testing.assert_allclose(got, expected, atol=0.05)
    assert np.abs(got - crops.opd[0]).max() > 1  # 2 um out of focus changes the map
    # A view is one of the dihedral transforms of the crop plus at most that much noise.
    only_noise = override(config, shift_px=0.0, defocus_um=0.0, noise_nm=2.0)
    flat = OpdViews(only_noise, (128, 128), crops.pixel_size_um, None)
    view = flat(x, torch.Generator().manual_seed(0))
    dihedral = [torch.rot90(x, r, (2, 3)) for r in range(4)]
    dihedral += [torch.flip(d, (3,)) for d in dihedral]
    nearest = torch.stack([(view - d).std((1, 2, 3)) for d in dihedral]).amin(0)
    assert (nearest <= 2.0).all()
    with pytest.raises(ValueError, match="defocus needs one"):
        OpdViews(config, (128, 128), crops.pixel_size_um, None)


def test_nt_xent_and_the_config():
    n, temperature = 4, 0.5
    z = torch.eye(n, 8)
    # Each projection's partner at cosine 1, the other 2n - 2 at 0.
    expected = -math.log(math.exp(2) / (math.exp(2) + 2 * n - 2))
    assert nt_xent(z, z, temperature).item() == pytest.approx(expected, rel=1e-6)
    assert nt_xent(z, z.flip(0), temperature).item() > expected
    with pytest.raises(ValueError, match="unknown setting"):
        override(ssl_preset("cpu"), temprature=0.1)
    with pytest.raises(ValueError, match="noise_nm must be >= 0"):
        override(ssl_preset("cpu"), noise_nm=-1.0)


def test_a_trunks_scale_travels_unless_it_would_clip_the_cells(ssl_dir):
    from training.fit import input_normalization

    trunk = load_pretrained(ssl_dir)
    lo, hi = trunk.normalization.opd_min_nm, trunk.normalization.opd_max_nm
    inside = np.random.default_rng(0).uniform(lo, hi, (4, 16, 16)).astype(np.float32)
    norm, source = input_normalization(trunk, inside)
    assert (norm, source) == (trunk.normalization, "pretraining (ssl)")
    beyond = inside + (hi - lo)  # cells reaching far above the pool's range
    norm, source = input_normalization(trunk, beyond)
    assert norm.opd_max_nm > hi
    assert source.startswith("training crops: the ssl pretraining's")
    assert "would clip these cells" in source
    assert input_normalization(None, inside)[1] == "training crops"
