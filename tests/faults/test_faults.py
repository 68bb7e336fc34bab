"""Fault and bad-input cases of train.py: each ends with a correct result or a clear early error
(exit status, message), and leaves no stale or half-written result file behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_train_cli import build_workspace

from jaxpet.cli import train_main
from jaxpet.runs.outputs import read_jsonl

REPO = Path(__file__).resolve().parents[2]
# fast settings shared by every run here: one pattern, no zero-shot pass, no distillation
FAST = ["pet.pattern_ids=[0]", "eval.zero_shot=false", "no_distillation=true"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("faults"))


def run_cli(capsys, workspace: dict, out: Path, *overrides: str, flags: tuple = ()) -> tuple:
    """train_main on the workspace config into `out`; returns (status, stdout, stderr)."""
    status = train_main(["--config", str(workspace["config"]), *flags, f"output_dir={out}",
                         *FAST, *overrides])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (checkpoints included) by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_no_partial_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def finished(workspace, tmp_path_factory):
    """A finished 3-step run on its own copy of the data (case 1 edits a data file)."""
    root = tmp_path_factory.mktemp("finished")
    data = root / "agnews"
    shutil.copytree(workspace["data"], data)
    out = root / "out"
    umask = os.umask(0o022)  # case 12 checks the files' modes against it
    try:
        status = train_main(["--config", str(workspace["config"]), f"output_dir={out}",
                             f"task.data_dir={data}", *FAST])
    finally:
        os.umask(umask)
    assert status == 0
    return {"out": out, "data": data}


# Case 1: a rerun with a changed config must not report the old results as its own.
@pytest.mark.parametrize("overrides, shown", [
    (["seed=7"], "seed 3 -> 7"),
    (["pet.learning_rate=0.01"], "pet.learning_rate 0.001 -> 0.01"),
    (["pet.max_steps=5"], "pet.max_steps 3 -> 5"),
])
def test_changed_config_stops_before_any_work(capsys, workspace, finished, overrides, shown):
    out = finished["out"]
    before = snapshot(out)
    status, printed, err = run_cli(capsys, workspace, out, f"task.data_dir={finished['data']}",
                                   *overrides)
    assert status == 2
    assert "holds results of a different run: 1 key(s) differ" in err and shown in err
    assert "new output_dir" in err and "--overwrite" in err
    assert "reusing" not in printed and "training" not in printed
    # nothing in the folder changed: results, config.yaml and checkpoints are the old run's
    assert snapshot(out) == before


def test_changed_data_file_is_named(capsys, workspace, finished, tmp_path):
    data = tmp_path / "agnews"
    shutil.copytree(finished["data"], data)
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    with open(data / "test.csv", "a", encoding="utf-8") as f:
        f.write('"1","minister border","the minister says."\n')
    before = snapshot(out)
    status, _, err = run_cli(capsys, workspace, out, f"task.data_dir={data}")
    assert status == 2
    # the data folder's path changed too (a copy); its changed file is named by itself
    assert "task.data_dir:files/test.csv" in err and "task.data_dir:files/train.csv" not in err
    assert snapshot(out) == before


def test_settings_that_cannot_change_results_keep_the_run(capsys, workspace, finished):
    out = finished["out"]
    members = json.loads((out / "results.json").read_text())["members"]
    status, printed, _ = run_cli(capsys, workspace, out, f"task.data_dir={finished['data']}",
                                 "logging.every=2", "logging.progress=true", "eval.batch_size=4",
                                 "checkpoint.keep=5", "eval.zero_shot=true")
    assert status == 0 and "p0-s0: results.json exists, reusing it" in printed
    assert json.loads((out / "results.json").read_text())["members"] == members


def test_overwrite_refuses_a_folder_that_is_not_a_run(capsys, workspace, tmp_path):
    out = tmp_path / "not-a-run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    status, _, err = run_cli(capsys, workspace, out, flags=("--overwrite",))
    assert status == 2 and "not a jaxpet run folder" in err
    assert (out / "notes.txt").read_text() == "keep me"


# Case 2: a shorter max_steps after a kill must not restore a later checkpoint as the result.
def test_shorter_max_steps_after_a_kill(capsys, workspace, tmp_path):
    out = tmp_path / "out"
    status, _, _ = run_cli(capsys, workspace, out, "pet.max_steps=4", "checkpoint.every=2")
    assert status == 0
    # what a kill after the step-4 checkpoint leaves: checkpoints, no results
    for name in ("results.json", "p0-s0/results.json", "summary.md"):
        (out / name).unlink()
    assert (out / "p0-s0" / "checkpoints" / "4").is_dir()
    before = snapshot(out)
    status, printed, err = run_cli(capsys, workspace, out, "pet.max_steps=2",
                                   "checkpoint.every=2")
    assert status == 2 and "pet.max_steps 4 -> 2" in err
    assert snapshot(out) == before and not (out / "p0-s0" / "results.json").exists()
    (out / "p0-s0" / "stale-marker").write_text("old")
    status, printed, _ = run_cli(capsys, workspace, out, "pet.max_steps=2", "checkpoint.every=2",
                                 flags=("--overwrite",))
    assert status == 0 and "reusing" not in printed
    assert not (out / "p0-s0" / "stale-marker").exists()
    assert "max_steps: 2" in (out / "config.yaml").read_text()
    assert_no_partial_files(out)
    # trained anew for 2 steps: its log holds steps 1 and 2 only, its last checkpoint is 2
    assert [r["step"] for r in read_jsonl(out / "p0-s0" / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in (out / "p0-s0" / "checkpoints").iterdir()) == ["2"]


# Case 4: a NaN loss stops the run at its first step instead of reporting a NaN-trained model.
def test_non_finite_loss_stops_the_run(capsys, workspace, tmp_path):
    out = tmp_path / "out"
    # one update with a learning rate of 1e30 sends the weights to ~1e30: step 2's loss is NaN
    status, printed, err = run_cli(capsys, workspace, out, "pet.learning_rate=1e30",
                                   "pet.max_steps=4", "checkpoint.every=1")
    assert status == 2
    assert (f"p0-s0: non-finite loss or gradient at step 2; training stopped (last good "
            f"checkpoint: step 1 in {out / 'p0-s0' / 'checkpoints'})") in err
    assert "Traceback" not in err
    # the log agrees: step 1 finite, step 2 the first non-finite loss, nothing after it
    log = read_jsonl(out / "p0-s0" / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2]
    assert np.isfinite(log[0]["loss"]) and not np.isfinite(float(log[1]["loss"] or "nan"))
    # no result claims a model, and no checkpoint holds the NaN state
    assert not (out / "results.json").exists() and not (out / "p0-s0" / "results.json").exists()
    assert sorted(p.name for p in (out / "p0-s0" / "checkpoints").iterdir()) == ["1"]
    assert_no_partial_files(out)


# Cases 5, 6, 7 and 11's range error: settings that would turn a stage off without a word or
# fail late are refused before the model loads, naming the key and its allowed range.
@pytest.mark.parametrize("overrides, message", [
    (["pet.unlabeled_batch_size=0"],  # the workspace trains with pet.lm_training on
     "config key 'pet.unlabeled_batch_size' must be >= 1 for the auxiliary MLM loss"),
    (["no_distillation=false", "classifier.unlabeled_batch_size=0"],
     "config key 'classifier.unlabeled_batch_size' must be >= 1 for distillation"),
    (["pet.learning_rate=-0.1"], "config key 'pet.learning_rate' must be > 0, got -0.1"),
    (["classifier.learning_rate=0"], "config key 'classifier.learning_rate' must be > 0, got 0"),
    (["checkpoint.every=-1"], "config key 'checkpoint.every' must be >= 0, got -1"),
    (["checkpoint.keep=0"], "config key 'checkpoint.keep' must be >= 1, got 0"),
    (["classifier.temperature=0"], "config key 'classifier.temperature' must be > 0, got 0"),
    (["pet.mlm_probability=1.5"], "config key 'pet.mlm_probability' must be in (0, 1], got 1.5"),
    (["pet.unlabeled_batch_size=-2"],
     "config key 'pet.unlabeled_batch_size' must be >= 0, got -2"),
    (["no_distillation=false", "pet.lm_training=false", "task.unlabeled_examples=0"],
     "config key 'task.unlabeled_examples' is 0, but distillation (no_distillation is false) "
     "needs unlabeled examples"),
    (["task.test_examples=0"], "config key 'task.test_examples' must be -1 (all) or >= 1"),
])
def test_bad_settings_fail_before_the_model_loads(capsys, workspace, tmp_path, overrides,
                                                  message):
    out = tmp_path / "out"
    status, printed, err = run_cli(capsys, workspace, out, *overrides)
    assert status == 2 and message in err and "Traceback" not in err
    assert "memory estimate" not in printed  # printed once the model has loaded
    assert not out.exists()  # nothing written, so nothing stale to reuse after the fix



# Case 3: two runs on one output_dir; a lock left by a killed run.
def test_a_second_run_on_a_locked_folder_stops_and_a_dead_holder_is_stale(capsys, workspace,
                                                                          tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxpet.runs.lock import RunLock; "
         "lock = RunLock(sys.argv[1], enabled=True); lock.acquire(); print('locked', flush=True); "
         "time.sleep(600)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, printed, err = run_cli(capsys, workspace, out)
        assert status == 2 and "Traceback" not in err
        assert f"output_dir {out} is in use by process {holder.pid} on " in err
        assert "training" not in printed
        assert sorted(p.name for p in out.iterdir()) == [".jaxpet.lock"]  # nothing written
    finally:
        holder.kill()  # SIGKILL: no cleanup, its lock file stays behind
        holder.wait()
    assert f"process {holder.pid} on" in (out / ".jaxpet.lock").read_text()
    # the next run takes the stale lock over (and here stops at its missing data, after it)
    status, _, err = run_cli(capsys, workspace, out, f"task.data_dir={tmp_path / 'missing'}")
    assert status == 2 and "file not found" in err
    assert f"stale lock of process {holder.pid} on" in err
    assert not (out / ".jaxpet.lock").exists()  # released when the run ended


# Case 11: malformed inputs get one line naming the file and line (or the key).
@pytest.mark.parametrize("text, message", [
    ("method: pet\ntask: {name: agnews\n  data_dir: x\n",
     "bad.yaml, line 3 column 11: invalid YAML: did not find expected ',' or '}'"),
    ("- method: pet\n- seed: 1\n", "bad.yaml, line 1: the config must be a mapping of keys"),
    ("method: pet\n\tseed: 1\n", "bad.yaml, line 2 column 1: invalid YAML: found a tab"),
])
def test_malformed_config_file(capsys, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    status = train_main(["--config", str(path)])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2  # the error, then the JAXPET_TRACEBACK hint


def test_non_utf8_byte_is_reported_on_its_line(capsys, workspace, tmp_path):
    data = tmp_path / "agnews"
    shutil.copytree(workspace["data"], data)
    lines = (data / "train.csv").read_bytes().splitlines(keepends=True)
    assert len(lines) > 40
    lines[39] = lines[39].replace(b"the", b"th\xe9", 1)  # a Latin-1 byte on line 40
    (data / "train.csv").write_bytes(b"".join(lines))
    status, printed, err = run_cli(capsys, workspace, tmp_path / "out", f"task.data_dir={data}")
    assert status == 2 and f"{data / 'train.csv'}:40: not valid utf-8" in err
    assert "memory estimate" not in printed


def test_output_dir_naming_a_file(capsys, workspace, tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("mine")
    for out in (path, path / "run"):
        status, _, err = run_cli(capsys, workspace, out)
        assert status == 2 and "Traceback" not in err
        assert f"config key 'output_dir' ({out}): {path} exists and is not a folder" in err
    assert path.read_text() == "mine"


# Case 12: written files get the umask's mode; Ctrl-C stops training with one line.
def test_written_files_follow_the_umask(finished):
    out = finished["out"]
    written = ["results.json", "config.yaml", "fingerprint.json", "summary.md",
               "p0-s0/results.json", "p0-s0/eval_logits.npy", "p0-s0/predictions.jsonl"]
    modes = {name: oct((out / name).stat().st_mode & 0o777) for name in written}
    assert modes == {name: oct(0o644) for name in written}  # 0666 less the run's umask 022


@pytest.mark.slow
def test_ctrl_c_names_the_checkpoint_without_tracebacks(workspace, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "--config", str(workspace["config"]),
         f"output_dir={out}", *FAST, "pet.max_steps=1000", "checkpoint.every=1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = out / "p0-s0" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 300
        while not (log.exists() and len(log.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=180)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    step = int(re.search(r"^interrupted, checkpoint at step (\d+)$", err, re.M).group(1))
    steps = sorted(int(p.name) for p in (out / "p0-s0" / "checkpoints").iterdir())
    assert step >= 2 and steps[-1] == step  # the step it names is the newest checkpoint
    assert not (out / "p0-s0" / "results.json").exists() and not (out / "results.json").exists()
    assert_no_partial_files(out)
