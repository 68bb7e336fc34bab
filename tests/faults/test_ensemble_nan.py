"""The finite-loss guard of ensemble-parallel training (fit_ensemble, pet.parallel_members):
the first non-finite step of any member stops the run naming the step, the stage, the member
and the last good checkpoint, as jaxpet.engine.training.fit does for one member."""

from __future__ import annotations

import json
import os
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_cli import build_workspace

from jaxpet.cli import train_main
from jaxpet.engine.checkpoint import Checkpointer
from jaxpet.engine.ensemble_training import EnsembleTrainer, fit_ensemble
from jaxpet.engine.fit import NonFiniteLossError
from jaxpet.engine.sharding import make_mesh
from jaxpet.runs.outputs import read_jsonl

STEPS = 6


def squared_error(params, batch, rng):
    error_B = params["w"] * batch["x"] - batch["y"]
    return jnp.mean(error_B**2), {}


def batch_fn(nan_member: int, nan_step: int):
    """Member m's batch at `step` (0-based); one NaN input at (nan_member, nan_step): a test
    hook in the data only, the guard sees it as any other non-finite loss."""

    def batch(step: int) -> dict[str, np.ndarray]:
        x_MxB = np.tile(np.arange(1.0, 5.0, dtype=np.float32), (2, 1)) + step
        if step == nan_step:
            x_MxB[nan_member, 1] = np.nan
        return {"x": x_MxB, "y": 3.0 * x_MxB}

    return batch


@pytest.mark.parametrize("log_every", [1, 50])  # 50: noticed at the checkpoint, not the log
def test_nan_at_a_chosen_step_stops_the_ensemble(tmp_path, log_every):
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    trainer = EnsembleTrainer(squared_error, optax.sgd(1e-3), mesh, num_members=2,
                              constant_keys=())
    logged: list[dict[int, float]] = [{}, {}]
    writers = [lambda s, m, log=log: log.__setitem__(s, m["loss"]) for log in logged]
    params = {"w": np.zeros((), np.float32)}
    # the NaN enters at 0-based step 3: the 4th update, logged and guarded as step 4
    with Checkpointer(tmp_path / "p0-s0+p1-s0" / "checkpoints", 5, 1) as ckpt:
        with pytest.raises(NonFiniteLossError, match=re.escape(
                f"p0-s0+p1-s0 (member 1): non-finite loss or gradient at step 4; training "
                f"stopped (last good checkpoint: step 3 in {ckpt.directory})")):
            fit_ensemble(trainer, trainer.init([params, params]), batch_fn(1, 3), STEPS,
                         seeds=[0, 1], checkpointer=ckpt, log_every=log_every,
                         metrics_writers=writers, progress=False)
        assert ckpt.all_steps() == [1, 2, 3]  # nothing saved from the NaN state on
    if log_every == 1:  # the delayed log reaches the bad step and stops there
        assert sorted(logged[1]) == [1, 2, 3, 4] and np.isnan(logged[1][4])
        assert all(np.isfinite(logged[0][s]) for s in (1, 2, 3, 4))
        assert all(np.isfinite(logged[1][s]) for s in (1, 2, 3))


def test_nan_without_checkpoints_names_that_there_is_none():
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    trainer = EnsembleTrainer(squared_error, optax.sgd(1e-3), mesh, num_members=2,
                              constant_keys=())
    params = {"w": np.zeros((), np.float32)}
    with pytest.raises(NonFiniteLossError, match=re.escape(
            "training (member 0): non-finite loss or gradient at step 2; training stopped (no "
            "checkpoint was saved (checkpoint.every is 0))")):
        fit_ensemble(trainer, trainer.init([params, params]), batch_fn(0, 1), STEPS,
                     seeds=[0, 1], log_every=1, progress=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("ensemble_nan"))


@pytest.mark.slow  # a train.py run of two members compiled together, ~40 s on 2 shared cores
def test_parallel_members_with_a_huge_learning_rate(capsys, workspace, tmp_path):
    out = tmp_path / "out"
    # one update at a learning rate of 1e30 sends the weights to ~1e30: step 2's loss is NaN
    status = train_main(["--config", str(workspace["config"]), f"output_dir={out}",
                         "pet.parallel_members=true", "pet.learning_rate=1e30",
                         "pet.max_steps=4", "checkpoint.every=1", "eval.zero_shot=false",
                         "no_distillation=true"])
    err = capsys.readouterr().err
    group = out / "parallel-checkpoints" / "p0-s0+p1-s0"
    assert status == 2 and "Traceback" not in err
    assert ("p0-s0+p1-s0 (member 0, 1): non-finite loss or gradient at step 2; training "
            f"stopped (last good checkpoint: step 1 in {group / 'checkpoints'})") in err
    for member in ("p0-s0", "p1-s0"):
        log = read_jsonl(out / member / "metrics.jsonl")
        assert [r["step"] for r in log] == [1, 2]
        assert np.isfinite(log[0]["loss"]) and not np.isfinite(float(log[1]["loss"] or "nan"))
        assert not (out / member / "results.json").exists()
    assert not (out / "results.json").exists()
    assert sorted(p.name for p in (group / "checkpoints").iterdir()) == ["1"]
    assert json.loads((out / "fingerprint.json").read_text())["pet.learning_rate"] == 1e30


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_and_names_the_checkpoint(tmp_path, capsys, signum, status):
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    trainer = EnsembleTrainer(squared_error, optax.sgd(1e-3), mesh, num_members=2,
                              constant_keys=())
    clean = batch_fn(0, -1)

    def signalled(step: int) -> dict[str, np.ndarray]:
        if step == 2:  # arrives while the 3rd step is prepared: that step still completes
            os.kill(os.getpid(), signum)
        return clean(step)

    params = {"w": np.zeros((), np.float32)}
    with Checkpointer(tmp_path / "ck", 5, 0) as ckpt:
        with pytest.raises(SystemExit) as stopped:
            fit_ensemble(trainer, trainer.init([params, params]), signalled, STEPS,
                         seeds=[0, 1], checkpointer=ckpt, progress=False)
        assert stopped.value.code == status and ckpt.all_steps() == [3]
    assert capsys.readouterr().err == "interrupted, checkpoint at step 3\n"


def test_a_checkpoint_beyond_max_steps_is_refused(tmp_path):
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    trainer = EnsembleTrainer(squared_error, optax.sgd(1e-3), mesh, num_members=2,
                              constant_keys=())
    params = {"w": np.zeros((), np.float32)}
    with Checkpointer(tmp_path / "ck", 5, 0) as ckpt:
        fit_ensemble(trainer, trainer.init([params, params]), batch_fn(0, -1), 4, seeds=[0, 1],
                     checkpointer=ckpt, progress=False)
        # restoring step 4 would report 4-step members as this 2-step run's result
        with pytest.raises(ValueError, match="holds a checkpoint at step 4, beyond this run's 2"):
            fit_ensemble(trainer, trainer.init([params, params]), batch_fn(0, -1), 2,
                         seeds=[0, 1], checkpointer=ckpt, progress=False)
