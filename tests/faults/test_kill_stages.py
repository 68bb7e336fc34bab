"""SIGKILL at a random step (or mid-write) of every stage of train.py: PET member training, the
ensemble merge, distillation, an iPET generation and text2text. The rerun (the same command)
ends with the results of an uninterrupted run, and no result file is ever half-written or left
over from before the kill."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train_cli import build_workspace

from jaxpet.cli import train_main
from jaxpet.runs.outputs import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
# The child runs train.py's train_main with a kill hook patched in (test-only, it lives here):
# "step DIR K" SIGKILLs the process right after DIR/metrics.jsonl received step K (a real kill:
# no cleanup, the async checkpoint of the next steps may be half-written); "write DIR N"
# SIGKILLs it halfway through writing the N-th file that goes into DIR (truncated, synced).
KILL_CHILD = r"""
import os, signal, sys
from pathlib import Path
from jaxpet.runs import outputs
from jaxpet.cli import train_main

kind, target, number = sys.argv[1], Path(sys.argv[2]).resolve(), int(sys.argv[3])
if kind == "step":
    original = outputs.MetricsWriter.write

    def write(self, step, metrics):
        original(self, step, metrics)
        if self.directory.resolve() == target and step == number:
            os.kill(os.getpid(), signal.SIGKILL)

    outputs.MetricsWriter.write = write
else:
    original_atomic, seen = outputs.atomic_write, []

    def atomic_write(path, write_fn, binary):
        if Path(path).parent.resolve() != target:
            return original_atomic(path, write_fn, binary)
        seen.append(path)
        if len(seen) < number:
            return original_atomic(path, write_fn, binary)

        def half(f):
            write_fn(f)
            f.flush()
            f.truncate(max(f.tell() // 2, 1))
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        return original_atomic(path, half, binary)

    outputs.atomic_write = atomic_write
sys.exit(train_main(sys.argv[4:]))
"""


def kill_in(args: list[str], kind: str, target: Path, number: int) -> None:
    """Runs train.py's arguments in a child that kills itself as KILL_CHILD says."""
    done = subprocess.run([sys.executable, "-c", KILL_CHILD, kind, str(target), str(number),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == -signal.SIGKILL, (
        f"not killed at {kind} {target} {number}: status {done.returncode}\n"
        f"{done.stderr[-3000:]}")


def assert_nothing_half_written(out: Path) -> None:
    """Every result file under its own name is whole: JSON parses, arrays load, and any
    model folder holds its weights; what a kill leaves behind is hidden temporary names."""
    for path in out.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(out).parts):
            continue  # .jaxpet.lock, .NAME.XXXX.tmp, .model.XXXX.partial: never read as results
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".npy":
            np.load(path)
        elif path.suffix == ".jsonl" and path.name != "metrics.jsonl":
            read_jsonl(path)  # metrics.jsonl is an append-only log, cut at the kill
        elif path.name == "config.json" and path.parent.name == "model":
            assert (path.parent / "model.safetensors").is_file(), path


def committed(checkpoints: Path) -> int:
    """The newest checkpoint step that a kill left complete (orbax renames a finished save
    into its step's name), 0 if none."""
    return max((int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()), default=0)


def untimed(tree):
    if isinstance(tree, dict):
        return {k: untimed(v) for k, v in tree.items()
                if k not in ("train_time_s", "wall_time_s", "model_dir", "output_dir")}
    return tree


def assert_same_results(out: Path, reference: Path, arrays: list[str]) -> None:
    got, want = (json.loads((p / "results.json").read_text()) for p in (out, reference))
    assert untimed(got) == untimed(want)
    for name in arrays:
        # a resumed run repeats the same steps from restored states: equal up to float32
        # rounding; a skipped or repeated step is a whole Adam update of ~1e-3 per weight
        np.testing.assert_allclose(np.load(out / name), np.load(reference / name),
                                   rtol=1e-5, atol=1e-6, err_msg=name)



@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("kill_stages"))


# three steps: a kill at step 1 or 2 leaves a later step to resume to (and a checkpoint
# that the kill may or may not let finish); more steps only repeat the same update
STEPS = 3
PET = ["pet.pattern_ids=[0,1]", f"pet.max_steps={STEPS}", f"classifier.max_steps={STEPS}",
       "checkpoint.every=1", "eval.zero_shot=false"]


@pytest.mark.slow  # three killed children and two in-process runs, ~2 min on 2 shared cores
def test_kills_in_member_merge_and_distillation(workspace, tmp_path, capsys):
    draw = random.Random()
    reference, out = tmp_path / "reference", tmp_path / "out"
    base = ["--config", str(workspace["config"]), *PET, "no_distillation=false"]
    assert train_main([*base, f"output_dir={reference}"]) == 0
    args = [*base, f"output_dir={out}"]
    member_step, distill_step = draw.randint(1, STEPS - 1), draw.randint(1, STEPS - 1)
    where = f"member p1-s0 at step {member_step}, distillation at step {distill_step}"
    kill_in(args, "step", out / "p1-s0", member_step)  # p0-s0 is finished by then
    saved = committed(out / "p1-s0" / "checkpoints")
    assert (out / "p0-s0" / "results.json").exists(), where
    assert not (out / "p1-s0" / "results.json").exists(), where
    assert_nothing_half_written(out)
    kill_in(args, "write", out / "ensemble", 1)  # halfway through the merge's first file
    assert not any((out / "ensemble").glob("*.npy")) and not (out / "results.json").exists()
    assert_nothing_half_written(out)
    kill_in(args, "step", out / "distilled", distill_step)
    assert not (out / "distilled" / "results.json").exists(), where
    assert not (out / "distilled" / "model").exists(), where
    assert_nothing_half_written(out)
    capsys.readouterr()
    assert train_main(args) == 0, where
    assert "stale lock of process" in capsys.readouterr().err  # the last child's, taken over
    assert_nothing_half_written(out)
    assert_same_results(out, reference, [
        "p0-s0/eval_logits.npy", "p1-s0/eval_logits.npy", "p1-s0/unlabeled_logits.npy",
        "ensemble/unlabeled_logits.npy", "distilled/eval_logits.npy"])
    # the killed member's log: steps 1..k of the killed run, then the rerun's from just after
    # the newest checkpoint that the kill let finish (a save in flight is discarded)
    steps = [r["step"] for r in read_jsonl(out / "p1-s0" / "metrics.jsonl")]
    assert steps == [*range(1, member_step + 1), *range(saved + 1, STEPS + 1)], (where, steps)


@pytest.mark.slow  # two killed children and two in-process runs, ~2 min on 2 shared cores
def test_kills_in_an_ipet_generation(workspace, tmp_path, capsys):
    step = random.Random().randint(1, STEPS - 1)
    reference, out = tmp_path / "reference", tmp_path / "out"
    base = ["--config", str(workspace["config"]), *PET, "method=ipet", "ipet.generations=2",
            "ipet.scale_factor=1.5", "ipet.n_most_likely=10", "no_distillation=true"]
    assert train_main([*base, f"output_dir={reference}"]) == 0
    args = [*base, f"output_dir={out}"]
    # halfway through the second member's pseudo-labeled set of generation 1
    kill_in(args, "write", out / "g0" / "next-gen", 2)
    assert sorted(p.name for p in (out / "g0" / "next-gen").glob("*.json")) == ["p0-s0.json"]
    assert not (out / "g1").exists()
    kill_in(args, "step", out / "g1" / "p1-s0", step)
    assert not (out / "g1" / "p1-s0" / "results.json").exists(), step
    assert_nothing_half_written(out)
    capsys.readouterr()
    assert train_main(args) == 0, step
    assert_nothing_half_written(out)
    # the rerun drew the sets anew (the saved one alone is not reused) and got the same sets
    for name in ("p0-s0", "p1-s0"):
        assert (json.loads((out / "g0" / "next-gen" / f"{name}.json").read_text())
                == json.loads((reference / "g0" / "next-gen" / f"{name}.json").read_text()))
    assert_same_results(out, reference, [
        "g1/p0-s0/eval_logits.npy", "g1/p1-s0/eval_logits.npy",
        "g1/p1-s0/unlabeled_logits.npy"])


@pytest.mark.slow  # a T5 run, a killed child and its rerun, ~1 min on 2 shared cores
def test_kill_in_text2text(tmp_path, capsys):
    from safetensors.numpy import load_file
    from tiny_t5 import make_t5_tokenizer, make_tiny_t5

    model = tmp_path / "tiny-t5"
    make_t5_tokenizer(str(model))
    make_tiny_t5(str(model), "1.0", vocab_size=224, seed=2)
    steps_total = 3  # a kill at step 1 or 2, and a later step to resume to
    step = random.Random().randint(1, steps_total - 1)
    base = ["--config", str(ROOT / "configs" / "t5_tiny_offline.yaml"), f"model.name={model}",
            f"text2text.data_dir={ROOT / 'tests' / 'data' / 't2t'}",
            f"text2text.max_steps={steps_total}", "checkpoint.every=1",
            "text2text.eval_examples=6", "mesh.data=1",
            f"compilation_cache={tmp_path / 'xla-cache'}"]
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert train_main([*base, f"output_dir={reference}"]) == 0
    args = [*base, f"output_dir={out}"]
    kill_in(args, "step", out, step)
    saved = committed(out / "checkpoints")
    assert not (out / "results.json").exists() and not (out / "model").exists(), step
    assert_nothing_half_written(out)
    capsys.readouterr()
    assert train_main(args) == 0, step
    assert_nothing_half_written(out)
    assert_same_results(out, reference, ["rank_scores.npy"])
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == [*range(1, step + 1), *range(saved + 1, steps_total + 1)], (step, steps)
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(reference / "predictions.jsonl")
    got, want = (load_file(str(p / "model" / "model.safetensors")) for p in (out, reference))
    assert got.keys() == want.keys()
    for key in want:
        # the same steps from a restored state; a replayed or skipped step moves weights by ~lr
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)
