"""A full disk, as a file size limit (RLIMIT_FSIZE) of the train.py process: one clear error
line and exit status 2, no results.json and no model folder half-written, and a rerun with the
limit lifted ends with an uninterrupted run's results."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_kill_stages import assert_nothing_half_written, untimed
from test_train_cli import build_workspace

from jaxpet.cli import train_main

ROOT = Path(__file__).resolve().parents[2]
# Larger than every log, result and logits file of the tiny run, smaller than its model's
# weights (~90 kB) and than most of its checkpoint files.
LIMIT_BYTES = 60_000
RUN = ["pet.pattern_ids=[0]", "eval.zero_shot=false", "no_distillation=true"]


def limit_file_size() -> None:  # in the child, before train.py starts
    # ignored, SIGXFSZ no longer kills the process: the write fails with EFBIG instead,
    # as it fails with ENOSPC on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("full_disk"))


@pytest.mark.slow  # a child train.py and two in-process runs, ~1 min on 2 shared cores
@pytest.mark.parametrize("every, failing", [
    (0, "model.safetensors"),  # no checkpoints: the member's model export hits the limit
    (1, "checkpoints"),  # the first checkpoint's files hit it
])
def test_full_disk_stops_cleanly_and_a_rerun_finishes(workspace, tmp_path, capsys, every,
                                                      failing):
    args = ["--config", str(workspace["config"]), *RUN, f"checkpoint.every={every}"]
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert train_main([*args, f"output_dir={reference}"]) == 0
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"output_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          preexec_fn=limit_file_size)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [i for i, x in enumerate(lines) if x.startswith(
        "error: out of disk space (or over the file size limit) writing the run's outputs: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    last = lines[errors[0]:errors[0] + 2]
    assert "File too large" in last[0] and "rerun the same command" in last[0], last
    assert last[1] == "(set JAXPET_TRACEBACK=1 to see the traceback)"
    assert not [x for x in lines if x.startswith("ERROR:")], done.stderr
    if not every:
        # one line: no traceback. Known gap with checkpoints on: a write of the failed save
        # that is still in flight may print its own traceback after the line (seen in one of
        # two full-suite runs), so that case checks the line, not the silence after it.
        assert "Traceback" not in done.stderr and last == lines[-2:], done.stderr[-3000:]
    if every:
        assert failing in last[0]  # the error names the checkpoint file it could not write
    # nothing that claims a result: no results.json, no model folder, no partial leftovers
    member = out / "p0-s0"
    assert not (out / "results.json").exists() and not (member / "results.json").exists()
    assert not (member / "model").exists()
    assert not [p for p in member.iterdir() if p.name.startswith(".model")]
    assert_nothing_half_written(out)
    capsys.readouterr()
    assert train_main([*args, f"output_dir={out}"]) == 0
    assert_nothing_half_written(out)
    assert not list(out.rglob("*.orbax-checkpoint-tmp"))  # the failed save's folder is gone
    got, want = (json.loads((p / "results.json").read_text()) for p in (out, reference))
    assert untimed(got) == untimed(want)
    # the same steps from the same start (or a restored state): equal up to float32 rounding;
    # a skipped or repeated step is a whole Adam update of ~1e-3 per weight
    np.testing.assert_allclose(np.load(member / "eval_logits.npy"),
                               np.load(reference / "p0-s0" / "eval_logits.npy"),
                               rtol=1e-5, atol=1e-6)
    assert (member / "model" / "model.safetensors").stat().st_size > LIMIT_BYTES


# After a failed save, tensorstore writes still in flight call back into orbax's closed event
# loop (asyncio's own "Event loop is closed"), which Python reports as unraisable errors, one
# traceback each (seen in about 2 of 3 runs of the checkpoint case above). The child makes
# such a callback for real, then an unrelated unraisable error that must still be printed.
CLOSED_LOOP_CHILD = r"""
import asyncio, gc
from jaxpet.engine.checkpoint import Checkpointer

Checkpointer(__import__("sys").argv[1], 2)
loop = asyncio.new_event_loop()
loop.close()

class LateCallback:
    def __del__(self):
        loop.call_soon_threadsafe(print)

class Unrelated:
    def __del__(self):
        raise KeyError("an unrelated error")

LateCallback()
Unrelated()
gc.collect()
print("done")
"""


@pytest.mark.parametrize("traceback_env", ["", "1"])
def test_closed_loop_callbacks_print_nothing_but_other_errors_do(tmp_path, traceback_env):
    env = {**os.environ, "JAXPET_TRACEBACK": traceback_env}
    done = subprocess.run([sys.executable, "-c", CLOSED_LOOP_CHILD, str(tmp_path / "ck")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    assert "KeyError: 'an unrelated error'" in done.stderr
    # kept when the user asks for tracebacks
    assert ("RuntimeError: Event loop is closed" in done.stderr) == bool(traceback_env)


# The other writes of a failed save fail too, as asyncio tasks nobody awaits once the first
# error has been raised: asyncio logs each one as "Task exception was never retrieved" with its
# traceback when it is collected (seen in one full-suite run). The child fails a task inside a
# file under an `orbax` folder, as orbax's writes do, and an unrelated task that must still be
# logged.
ORPHAN_TASK_CHILD = r"""
import asyncio, gc, importlib.util, sys
from jaxpet.engine.checkpoint import Checkpointer

Checkpointer(sys.argv[1], 2)
spec = importlib.util.spec_from_file_location("writes", sys.argv[2])
writes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(writes)

async def unrelated():
    raise KeyError("an unrelated task error")

async def main():
    asyncio.ensure_future(writes.write())
    asyncio.ensure_future(unrelated())
    await asyncio.sleep(0.01)

loop = asyncio.new_event_loop()
loop.run_until_complete(main())
loop.close()
gc.collect()
print("done")
"""


@pytest.mark.parametrize("traceback_env", ["", "1"])
def test_orbax_write_tasks_never_awaited_print_nothing_but_other_tasks_do(tmp_path,
                                                                         traceback_env):
    writes = tmp_path / "site" / "orbax" / "writes.py"
    writes.parent.mkdir(parents=True)
    writes.write_text("async def write():\n    raise ValueError('File too large')\n")
    env = {**os.environ, "JAXPET_TRACEBACK": traceback_env}
    done = subprocess.run([sys.executable, "-c", ORPHAN_TASK_CHILD, str(tmp_path / "ck"),
                           str(writes)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    assert "KeyError: 'an unrelated task error'" in done.stderr
    assert done.stderr.count("exception was never retrieved") == 2 - (not traceback_env)
    # kept when the user asks for tracebacks
    assert ("ValueError: File too large" in done.stderr) == bool(traceback_env)
