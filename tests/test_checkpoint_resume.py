"""Checkpoints: sharded restore, SIGTERM saves, SIGKILL + resume equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import multiprocess_worker as worker
import numpy as np
import pytest

from jaxpet.engine.checkpoint import Checkpointer
from jaxpet.engine.sharding import make_mesh

STEPS = 8
WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")


def _start(tmp_path, ckpt, out, sleep: float) -> subprocess.Popen:
    cmd = [sys.executable, WORKER, "--out", str(out), "--steps", str(STEPS), "--fsdp", "2",
           "--ckpt", str(ckpt), "--save-every", "2", "--sleep", str(sleep)]
    return subprocess.Popen(cmd, env=worker.worker_env(8, str(tmp_path / "jit-cache")),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _committed_steps(ckpt) -> list[int]:
    if not os.path.isdir(ckpt):
        return []
    return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def _wait_for_step(proc: subprocess.Popen, ckpt, min_step: int, timeout: float = 240) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [s for s in _committed_steps(ckpt) if s >= min_step]
        if steps:
            return steps[-1]
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace")
            pytest.fail(f"worker exited early ({proc.returncode}):\n{out[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


def _run_to_end(tmp_path, ckpt, out) -> dict[str, np.ndarray]:
    proc = _start(tmp_path, ckpt, out, sleep=0.0)
    output = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    return dict(np.load(out / "params.npz"))


def test_sigterm_then_sigkill_then_resume_matches_uninterrupted(tmp_path):
    # The uninterrupted run (it also fills the compilation cache the other runs share).
    reference = _run_to_end(tmp_path, tmp_path / "ref-ckpt", tmp_path / "ref-out")
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    # 1) SIGTERM after the first periodic checkpoint: the run saves where it is and exits.
    proc = _start(tmp_path, ckpt, out, sleep=0.4)
    _wait_for_step(proc, ckpt, 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stdout.read().decode(errors="replace")[-3000:]
    after_term = _committed_steps(ckpt)
    assert after_term and after_term[-1] >= 2
    assert not os.path.exists(out / "params.npz")
    # 2) Resume, then SIGKILL once a later checkpoint exists (no chance to clean up).
    proc = _start(tmp_path, ckpt, out, sleep=0.4)
    _wait_for_step(proc, ckpt, after_term[-1] + 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = _committed_steps(ckpt)[-1]
    assert after_term[-1] < killed_at < STEPS
    # 3) Resume to the end.
    resumed = _run_to_end(tmp_path, ckpt, out)
    assert _committed_steps(ckpt)[-1] == STEPS
    logged = json.loads((out / "losses.json").read_text())
    # The last run logged only the steps after the checkpoint it resumed from.
    assert min(int(s) for s in logged) > killed_at
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_restore_into_another_mesh(tmp_path):
    _, state, _ = worker.setup(make_mesh(data=4, fsdp=2), num_steps=STEPS)
    with Checkpointer(tmp_path / "ck", max_to_keep=1) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(int(state.step), state) is False  # not a save_every step
        assert ckpt.save(int(state.step), state, force=True)
        ckpt.wait()
        assert ckpt.latest_step() == 0
        # Target: the same state laid out on a 1-device mesh.
        other = make_mesh(data=1, devices=jax.devices()[:1])
        single = jax.sharding.NamedSharding(other, jax.sharding.PartitionSpec())
        target = jax.tree.map(lambda x: jax.device_put(np.zeros(x.shape, x.dtype), single), state)
        restored = ckpt.restore(None, target)
    assert int(restored.step) == 0
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert a.sharding.mesh.devices.size == 1
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
