"""train.py as 2 jax.distributed processes: a SIGTERM to one stops both behind one checkpoint,
and the same command again ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import multiprocess_worker as worker
import numpy as np
import pytest
from test_train_cli import REPO, build_workspace

from jaxpet.cli import train_main
from jaxpet.runs.outputs import read_jsonl

STEPS = 8
# One pattern, no distillation, no zero-shot pass: the member's training loop is what is tested.
# checkpoint.every is larger than the run, so the only checkpoints are the SIGTERM one and the
# final one.
OVERRIDES = ["pet.pattern_ids=[0]", "no_distillation=true", f"pet.max_steps={STEPS}",
             "checkpoint.every=1000", "checkpoint.keep=5", "mesh.data=2", "eval.zero_shot=false"]
# train.py itself, with a sleep before each batch so that the signal lands inside the loop on a
# fast machine too (the sleep changes no number).
SLOW_TRAIN_PY = """\
import runpy, sys, time
from jaxpet.data.batching import Batcher
call = Batcher.__call__
Batcher.__call__ = lambda self, step: (time.sleep(0.3), call(self, step))[1]
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("multiprocess_cli"))


@pytest.fixture(scope="module")
def reference(workspace):
    """The uninterrupted run: one process driving the same 2-device data mesh."""
    out = workspace["root"] / "out-reference"
    assert train_main(["--config", str(workspace["config"]), f"output_dir={out}",
                       *OVERRIDES]) == 0
    return out / "p0-s0"


def _launch(workspace, out: Path) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{worker.free_port()}"
    procs = []
    for pid in range(2):
        cmd = [sys.executable, "-c", SLOW_TRAIN_PY, str(REPO / "train.py"),
               "--config", str(workspace["config"]), f"output_dir={out}", *OVERRIDES,
               f"distributed.coordinator_address={address}", "distributed.num_processes=2",
               f"distributed.process_id={pid}"]
        procs.append(subprocess.Popen(cmd, env=worker.worker_env(num_devices=1), cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def _finish(procs: list[subprocess.Popen], expected_rc: int) -> list[str]:
    """worker.finish, and no process printed a traceback (a stop must be one clean line)."""
    outputs = worker.finish(procs, expected_rc)
    for i, output in enumerate(outputs):
        assert "Traceback" not in output, f"process {i}:\n{output[-4000:]}"
    return outputs


# XLA's CPU collectives give two processes a fixed 30 s to meet at their first cross-process
# program; on a loaded 2-core machine one process can compile that much later than the other.
# That is the test machine's timing, not jaxpet's behaviour, so such a start is retried once.
GLOO_RENDEZVOUS_TIMEOUT = "Gloo context initialization failed"


def _wait_for_logged_steps(procs: list[subprocess.Popen], log: Path, steps: int) -> bool:
    """True once `log` has `steps` lines; False when the processes ended at the collectives'
    rendezvous timeout before training (the caller relaunches); fails on any other end."""
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= steps:
            return True
        if any(p.poll() is not None for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.wait(timeout=120)
            outputs = [p.stdout.read().decode(errors="replace") for p in procs]
            if not log.exists() and any(GLOO_RENDEZVOUS_TIMEOUT in o for o in outputs):
                return False
            pytest.fail("a process finished before it was signalled:\n"
                        + "\n".join(o[-3000:] for o in outputs))
        time.sleep(0.05)
    for p in procs:
        p.kill()
    pytest.fail(f"{log} did not reach {steps} steps in 240 s")


def _losses(folder: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(folder / "metrics.jsonl")]


@pytest.mark.slow
def test_sigterm_to_one_train_py_process_then_relaunch_matches_uninterrupted(
    workspace, reference, tmp_path
):
    out = tmp_path / "out"
    member = out / "p0-s0"

    # 1) SIGTERM to process 1 only, once process 0 has logged two steps of the member's loop.
    procs = _launch(workspace, out)
    if not _wait_for_logged_steps(procs, member / "metrics.jsonl", 2):
        procs = _launch(workspace, out)  # the same command again, as a user would
        assert _wait_for_logged_steps(procs, member / "metrics.jsonl", 2), (
            "the processes missed the collectives' rendezvous twice")
    procs[1].send_signal(signal.SIGTERM)
    # Process 0 was never signalled: exit status 143 there means the stop vote reached it.
    _finish(procs, expected_rc=143)
    stopped = _losses(member)
    stop_step = stopped[-1][0]
    assert 2 <= stop_step < STEPS
    # one line per step: a second process appending its own copy of the log would show here
    assert [s for s, _ in stopped] == list(range(1, stop_step + 1))
    checkpoints = sorted(int(p.name) for p in (member / "checkpoints").iterdir()
                         if p.name.isdigit())
    assert checkpoints == [stop_step], "one checkpoint, at the step where both processes stopped"
    assert not (member / "results.json").exists()

    # 2) The same command again resumes there, finishes and writes the member's results.
    _finish(_launch(workspace, out), expected_rc=0)
    resumed, expected = _losses(member), _losses(reference)
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))
    # The resumed run must replay neither a batch nor an rng key: a step that reuses step s-1's
    # batch or key changes its loss by > 1e-3 here; 1e-5 admits only the reduction order of the
    # 2-process all-reduce against the single process's.
    np.testing.assert_allclose([v for _, v in resumed], [v for _, v in expected], rtol=1e-5)
    for name in ("eval_logits.npy", "unlabeled_logits.npy"):
        # the same bound for the trained parameters' logits on the dev and unlabeled sets
        np.testing.assert_allclose(np.load(member / name), np.load(reference / name),
                                   rtol=1e-5, atol=1e-5, err_msg=name)
    result, want = (json.loads((f / "results.json").read_text()) for f in (member, reference))
    assert result["metrics"] == want["metrics"]
    predicted, wanted = (read_jsonl(f / "predictions.jsonl") for f in (member, reference))
    assert [(p["guid"], p["label"]) for p in predicted] == [(p["guid"], p["label"]) for p in wanted]
