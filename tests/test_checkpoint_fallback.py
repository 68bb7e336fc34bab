"""A broken latest checkpoint: resume falls back to the newest one that restores, and says so."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet.engine.checkpoint import Checkpointer


def state_at(step: int) -> dict:
    return {"step": jnp.asarray(step), "w": jnp.full((4, 3), float(step))}


def saved_checkpoints(folder: Path) -> Checkpointer:
    checkpointer = Checkpointer(folder, max_to_keep=3)
    for step in (1, 2):
        checkpointer.save(step, state_at(step), force=True)
    checkpointer.wait()
    return checkpointer


def truncate_a_data_file(step_dir: Path) -> None:
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 64
             and "METADATA" not in p.name.upper() and p.suffix != ".json"]
    assert files, f"no data file under {step_dir}"
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def delete_the_array_data(step_dir: Path) -> None:
    """The tensorstore chunks gone (a copy that stopped half-way): the metadata still lists
    the arrays, their bytes are missing."""
    found = [p for p in step_dir.rglob("d") if p.is_dir()]
    assert found, f"no array data folder under {step_dir}"
    for folder in found:
        for chunk in folder.iterdir():
            chunk.unlink()


@pytest.mark.parametrize("corrupt", [truncate_a_data_file, delete_the_array_data],
                         ids=["truncated-file", "no-array-data"])
def test_resume_falls_back_to_the_newest_checkpoint_that_restores(tmp_path, corrupt):
    saved_checkpoints(tmp_path / "ckpt").close()
    corrupt(tmp_path / "ckpt" / "2")
    checkpointer = Checkpointer(tmp_path / "ckpt", max_to_keep=3)
    with pytest.warns(UserWarning, match=r"ckpt/2 does not restore .*trying an older one"):
        step, state = checkpointer.restore_latest(state_at(0))
    assert step == 1
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 1.0))  # step 1's values
    assert (tmp_path / "ckpt" / "2").is_dir()  # the broken one is kept for inspection
    checkpointer.close()


def test_no_checkpoint_restores_gives_the_starting_state(tmp_path):
    saved_checkpoints(tmp_path / "ckpt").close()
    for step in (1, 2):
        truncate_a_data_file(tmp_path / "ckpt" / str(step))
    checkpointer = Checkpointer(tmp_path / "ckpt", max_to_keep=3)
    with pytest.warns(UserWarning, match="does not restore") as caught:
        step, state = checkpointer.restore_latest(state_at(0))
    assert step is None and float(state["w"][0, 0]) == 0.0
    assert sum("does not restore" in str(w.message) for w in caught) == 2  # each one named
    checkpointer.close()
