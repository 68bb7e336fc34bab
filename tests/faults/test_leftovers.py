"""What a kill mid-write leaves in a run folder (hidden temporary files and folders of jaxpet's
atomic writes, orbax's unfinished checkpoint folders) is removed by the rerun, which says so
in one line; every other file, including names that only look alike, stays byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_kill_stages import assert_nothing_half_written, untimed
from test_text2text_faults import cli, snapshot, space  # noqa: F401 (space: a fixture)
from test_train_cli import build_workspace

from jaxpet.cli import train_main

ROOT = Path(__file__).resolve().parents[2]
# A child that SIGKILLs itself in the middle of an atomic write: "file PATH" after some bytes
# of PATH went to disk, "folder PATH" after the model folder's first file: what a real kill
# mid-write leaves, under whatever temporary name the write chose.
KILLED_WRITE = r"""
import os, signal, sys
from pathlib import Path
from jaxpet.atomic import atomic_folder, atomic_write

kind, path = sys.argv[1], Path(sys.argv[2])
if kind == "file":
    def fill(f):
        f.write(b'{"half": ')
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    atomic_write(path, fill, binary=True)
else:
    with atomic_folder(path) as partial:
        (partial / "config.json").write_text("{}")
        os.kill(os.getpid(), signal.SIGKILL)
"""
# Names like the temporary ones but not of their exact form: kept. (name, a folder?)
LOOKALIKES = [
    (".results.json.abc123.tmp", False),  # 6 random characters, not 8
    ("results.json.abcd1234.tmp", False),  # no leading dot
    (".results.json.ABCD1234.tmp", False),  # tempfile's random part is lower case
    (".results.json.abcd1234.tmp.bak", False),
    (".abcd1234.tmp", False),  # no NAME part
    (".model.abcd1234.partial", False),  # a file: atomic_folder's names are folders
    (".notes.abcd1234.tmp", True),  # a folder: atomic_write's names are files
    (".model.abcd1234.partial.old", True),
    ("model.abcd1234.partial", True),
    ("my.tmp", False),
]


def kill_mid_write(kind: str, path: Path) -> Path:
    """Runs KILLED_WRITE; returns the one new entry it left in path's folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    before = set(path.parent.iterdir())
    done = subprocess.run([sys.executable, "-c", KILLED_WRITE, kind, str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr  # killed, as intended
    (left,) = set(path.parent.iterdir()) - before
    return left


def plant(out: Path, outside: Path) -> list[Path]:
    """Real leftovers of killed writes at three depths of `out`, and lookalikes next to them
    (plus a link named like a leftover, pointing outside the run). Returns the leftovers."""
    member = out / "p0-s0"
    leftovers = [kill_mid_write("file", out / "results.json"),
                 kill_mid_write("folder", member / "model"),
                 kill_mid_write("file", member / "deep" / "eval_logits.npy")]
    for folder in (out, member / "deep"):
        for name, is_folder in LOOKALIKES:
            if is_folder:
                (folder / name).mkdir()
                (folder / name / "inside.txt").write_text(f"kept {name}\n")
            else:
                (folder / name).write_text(f"kept {name}\n")
    outside.write_text("not the run's\n")
    os.symlink(outside, out / ".linked.abcd1234.tmp")
    return leftovers


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("leftovers"))


@pytest.mark.slow  # a tiny PET run and its rerun, ~40-70 s on 2 shared cores
def test_a_pet_rerun_removes_exactly_the_leftovers_of_killed_writes(workspace, tmp_path,
                                                                      capsys):
    args = ["--config", str(workspace["config"]), "pet.pattern_ids=[0]", "eval.zero_shot=false",
            "no_distillation=true", "checkpoint.every=0", f"output_dir={tmp_path / 'out'}"]
    assert train_main(args) == 0
    out = tmp_path / "out"
    leftovers = plant(out, tmp_path / "outside.txt")
    names = sorted(p.name for p in leftovers)
    assert [n.split(".")[1:2] for n in names] == [["eval_logits"], ["model"], ["results"]]
    before = {k: v for k, v in snapshot(out).items()
              if not any(k.startswith(os.path.relpath(p, out)) for p in leftovers)}
    capsys.readouterr()
    assert train_main(args) == 0  # the finished run: its results are reused
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("removed "))
    assert line.startswith(f"removed 3 unfinished temporary file(s)/folder(s) of an "
                           f"interrupted write in {out}: "), line
    assert all(os.path.relpath(p, out) in line for p in leftovers), line
    assert not any(p.exists() for p in leftovers)
    after = snapshot(out)
    assert sorted(after) == sorted(before)
    # the rerun writes the run's results, table and plot anew (with its own wall time); every
    # other file, lookalikes included, is as it was
    rewritten = {"results.json", "summary.md", "summary.png"}
    assert {k for k in after if after[k] != before[k]} <= rewritten
    assert untimed(json.loads(after["results.json"])) == untimed(
        json.loads(before["results.json"]))
    assert (out / ".linked.abcd1234.tmp").is_symlink()
    assert (tmp_path / "outside.txt").read_text() == "not the run's\n"
    assert_nothing_half_written(out)


@pytest.mark.slow  # a tiny 2-step T5 run and a rerun of its last step, ~30-60 s
def test_a_text2text_rerun_removes_leftovers_and_unfinished_checkpoints(space, tmp_path,  # noqa: F811
                                                                        capsys):
    out = tmp_path / "out"
    shutil.copytree(space["out"], out)
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1", "2"]
    # killed while orbax saved step 1: step 1 still has the temporary name orbax gives a save
    # in progress (as the full-disk test's stderr shows: ".../checkpoints/1.orbax-checkpoint-
    # tmp/..."), step 2 never came; the rerun saves only every 2nd step, so no later save of
    # step 1 would replace that folder
    shutil.rmtree(checkpoints / "2")
    (checkpoints / "1").rename(checkpoints / "1.orbax-checkpoint-tmp")
    (checkpoints / "notes.orbax").mkdir()  # not orbax's temporary name: kept
    leftover = kill_mid_write("file", out / "predictions.jsonl")
    (out / ".predictions.jsonl.abc.tmp").write_text("kept\n")
    status, printed, err = cli(capsys, space, out, "checkpoint.every=2")
    assert status == 0, err
    assert (f"removed 1 unfinished temporary file(s)/folder(s) of an interrupted write in "
            f"{out}: {leftover.name}") in printed
    assert (f"removing 1 unfinished checkpoint folder(s) of an interrupted save in "
            f"{checkpoints}: 1.orbax-checkpoint-tmp") in printed
    assert not leftover.exists()
    assert (out / ".predictions.jsonl.abc.tmp").read_text() == "kept\n"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "notes.orbax"]
    # trained from the start again (nothing restorable): the uninterrupted run's results
    got, want = (json.loads((p / "results.json").read_text()) for p in (out, space["out"]))
    assert untimed(got) == untimed(want)
    assert_nothing_half_written(out)
