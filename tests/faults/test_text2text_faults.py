"""text2text runs check their folder's fingerprint and lock it as PET runs do: a rerun with a
changed setting or data file stops before any work naming what changed, --overwrite starts
afresh, and a second run on a folder in use stops naming the run that holds it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_t5 import make_t5_tokenizer, make_tiny_t5

from jaxpet.cli import train_main
from jaxpet.engine.training import FAST_CPU_COMPILE
from jaxpet.runs.outputs import read_jsonl
from jaxpet.text2text.config import load_text2text_config
from jaxpet.text2text.run import run

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "configs" / "t5_tiny_offline.yaml"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """A tiny T5, a copy of the sentiment data and a finished 2-step run on them."""
    root = tmp_path_factory.mktemp("t2t_faults")
    model = root / "tiny-t5"
    make_t5_tokenizer(str(model))
    make_tiny_t5(str(model), "1.0", vocab_size=224, seed=2)
    data = root / "data"
    data.mkdir()
    for name in ("sentiment_train.jsonl", "sentiment_dev.jsonl"):
        shutil.copy(ROOT / "tests" / "data" / "t2t" / name, data / name)
    overrides = [f"model.name={model}", f"text2text.data_dir={data}", "text2text.max_steps=2",
                 "checkpoint.every=1", "text2text.eval_file=''", "mesh.data=1",
                 f"compilation_cache={root / 'xla-cache'}"]
    out = root / "finished"
    run(load_text2text_config(str(TINY_CONFIG), overrides, output_dir=str(out)),
        compiler_options=FAST_CPU_COMPILE)
    return {"root": root, "out": out, "data": data, "overrides": overrides}


def cli(capsys, space: dict, out: Path, *extra: str, flags: tuple = ()) -> tuple[int, str, str]:
    status = train_main(["--config", str(TINY_CONFIG), *flags, *space["overrides"],
                         f"output_dir={out}", *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("extra, shown", [
    (["text2text.learning_rate=0.01"], "text2text.learning_rate 0.003 -> 0.01"),
    (["text2text.max_steps=3"], "text2text.max_steps 2 -> 3"),
    (["seed=7"], "seed 42 -> 7"),
])
def test_changed_setting_stops_before_any_work(capsys, space, extra, shown):
    before = snapshot(space["out"])
    status, printed, err = cli(capsys, space, space["out"], *extra)
    assert status == 2 and "Traceback" not in err
    assert "holds results of a different run: 1 key(s) differ" in err and shown in err
    assert "new output_dir" in err and "--overwrite" in err
    assert "training examples" not in printed  # printed once the data are encoded
    assert snapshot(space["out"]) == before  # config.yaml, results, checkpoints: all the old run's


def test_changed_data_file_is_named(capsys, space, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(space["data"], data)
    out = tmp_path / "out"
    shutil.copytree(space["out"], out)
    (out / "fingerprint.json").write_text(  # the finished run, but on this copy of its data
        (space["out"] / "fingerprint.json").read_text().replace(str(space["data"]), str(data)))
    with open(data / "sentiment_train.jsonl", "a", encoding="utf-8") as f:
        f.write('{"text": "a new film", "label": "positive"}\n')
    before = snapshot(out)
    status, _, err = cli(capsys, space, out, f"text2text.data_dir={data}")
    assert status == 2
    assert "1 key(s) differ: text2text.train_file:files/sentiment_train.jsonl." in err
    assert snapshot(out) == before


def test_overwrite_trains_afresh(capsys, space, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(space["out"], out)
    (out / "stale-marker").write_text("old")
    config = load_text2text_config(str(TINY_CONFIG), [*space["overrides"],
                                                      "text2text.max_steps=3"], str(out))
    results = run(config, compiler_options=FAST_CPU_COMPILE, overwrite=True)
    assert "--overwrite: deleted the old results in" in capsys.readouterr().out
    assert not (out / "stale-marker").exists()
    # trained anew for 3 steps: the old steps 1-2 are neither in the log nor resumed from
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert results["steps"] == 3 and json.loads((out / "results.json").read_text())["steps"] == 3
    assert json.loads((out / "fingerprint.json").read_text())["text2text.max_steps"] == 3
    assert "max_steps: 3" in (out / "config.yaml").read_text()


def test_overwrite_reaches_text2text_from_the_command_line(capsys, space, tmp_path):
    out = tmp_path / "not-a-run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    status, _, err = cli(capsys, space, out, flags=("--overwrite",))
    assert status == 2 and "not a jaxpet run folder" in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_second_run_on_a_locked_folder_stops_naming_the_holder(capsys, space, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxpet.runs.lock import RunLock; "
         "lock = RunLock(sys.argv[1], enabled=True); lock.acquire(); print('locked', flush=True); "
         "time.sleep(600)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, printed, err = cli(capsys, space, out)
        assert status == 2 and "Traceback" not in err
        assert f"output_dir {out} is in use by process {holder.pid} on " in err
        assert "training examples" not in printed
        assert sorted(p.name for p in out.iterdir()) == [".jaxpet.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_non_finite_loss_stops_text2text(capsys, space, tmp_path):
    out = tmp_path / "out"
    # one update at a learning rate of 1e30 sends the weights to ~1e30: step 2's loss is not
    # finite (the schedule has no warm-up: warmup_steps is 0)
    status, _, err = cli(capsys, space, out, "text2text.learning_rate=1e30",
                         "text2text.max_steps=4")
    assert status == 2 and "Traceback" not in err
    assert ("text2text: non-finite loss or gradient at step 2; training stopped (last good "
            f"checkpoint: step 1 in {out / 'checkpoints'})") in err
    log = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2]  # step 2's NaN or inf is logged as null or inf
    assert np.isfinite([log[0]["loss"], log[0]["grad_norm"]]).all()
    assert not np.isfinite([float(log[1][k] or "nan") for k in ("loss", "grad_norm")]).all()
    assert not (out / "results.json").exists() and not (out / "model").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["1"]
