from __future__ import annotations

from pathlib import Path

from models.provenance import portable_command, portable_path


def test_paths_beside_the_directory_are_relative_to_it_others_are_names(tmp_path):
    models = tmp_path / "repo" / "models"
    model = models / "hs895"
    assert (
        portable_path(models / "pretrained" / "sperm-dcgan", model) == "../pretrained/sperm-dcgan"
    )
    assert portable_path(model / "extra.json", model) == "extra.json"
    assert portable_path(tmp_path / "data" / "hs895.h5", model) == "hs895.h5"
    # Relative paths are taken from the working directory, like the command's.
    assert portable_path(Path("x") / ".." / "cells.h5", Path("models/m"), within=Path(".")) == (
        "../../cells.h5"
    )
    assert portable_path(tmp_path / "a", Path("/top")) == "a", "a parent at / holds everything"


def test_commands_keep_what_was_typed_but_not_where(tmp_path):
    cwd = tmp_path / "repo"
    command = (
        f"topgan --seed 5 train classifier --method topgan-aug --data {tmp_path}/hs895.h5 "
        f"--gan {cwd}/models/pretrained/sperm-dcgan --name hs895 --out={cwd}/models/hs895 "
        "--train-size -1 --note 'two words' --extra ../checkout/models/x rel/dir"
    )
    assert portable_command(command, cwd) == (
        "topgan --seed 5 train classifier --method topgan-aug --data hs895.h5 "
        "--gan models/pretrained/sperm-dcgan --name hs895 --out=models/hs895 "
        "--train-size -1 --note 'two words' --extra x rel/dir"
    )
    assert portable_command("", cwd) == ""
    assert portable_command("topgan 'unbalanced", cwd) == "topgan 'unbalanced"
