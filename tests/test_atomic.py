"""Atomic writes: model folders and files appear complete under their name or not at all."""

import os
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxpet.models.pretrained
from jaxpet.atomic import atomic_folder
from jaxpet.init_model import main as init_model_main
from jaxpet.init_model import random_model
from jaxpet.models.pretrained import load_pretrained, save_pretrained


def test_a_failed_export_leaves_no_folder_and_no_partial_files(tmp_path, monkeypatch):
    lm = random_model("bert")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # the config is written first, then the weights fail: what a full disk does (patched where
    # the exporter looks it up)
    monkeypatch.setattr(jaxpet.models.pretrained, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        save_pretrained(lm, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []  # neither model/ nor a .model.*.partial folder


def test_a_new_export_replaces_the_old_folder_whole(tmp_path):
    out = tmp_path / "model"
    save_pretrained(random_model("bert", seed=0), out)
    (out / "stale.bin").write_bytes(b"old")
    new = random_model("bert", seed=1)
    save_pretrained(new, out)
    assert not (out / "stale.bin").exists()
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    # the new weights, leaf for leaf, not a mix with the older model's
    jax.tree.map(np.testing.assert_array_equal, load_pretrained(out).params, new.params)


def test_folder_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_folder(tmp_path / "out") as partial:
            (partial / "file").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "file").read_text() == "x"
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0700


def test_every_file_of_a_saved_model_follows_the_umask(tmp_path):
    lm = random_model("bert")
    old = os.umask(0o027)
    try:
        save_pretrained(lm, tmp_path / "model")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "model").iterdir()}
    assert "model.safetensors" in modes
    # safetensors writes its file 0600 on its own; a saved model must be readable by the group
    assert set(modes.values()) == {0o640}, modes


def test_init_model_refuses_a_folder_that_holds_something_else(tmp_path, capsys):
    keep = tmp_path / "data"
    keep.mkdir()
    (keep / "train.csv").write_text("1,a,b\n")
    assert init_model_main(["bert", str(keep)]) == 2
    assert "holds no model (no config.json)" in capsys.readouterr().err
    assert Path(keep / "train.csv").read_text() == "1,a,b\n"
