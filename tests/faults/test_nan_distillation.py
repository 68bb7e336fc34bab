"""The finite-loss guard in the distillation stage: the members' results stay, the distilled
classifier stops at its first non-finite step with its stage and last checkpoint named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train_cli import build_workspace

from jaxpet.cli import train_main
from jaxpet.runs.outputs import read_jsonl


@pytest.mark.slow  # two train.py stages in one run, ~40 s on 2 shared cores
def test_non_finite_distillation_loss_stops_the_run(capsys, tmp_path):
    workspace = build_workspace(tmp_path)
    out = tmp_path / "out"
    # one classifier update at a learning rate of 1e30 sends its weights to ~1e30: step 2's
    # distillation loss is not finite; the member trains at the workspace's 1e-3, one step
    # (all the guard needs is a finished member whose scores it distils)
    status = train_main(["--config", str(workspace["config"]), f"output_dir={out}",
                         "pet.pattern_ids=[0]", "pet.max_steps=1", "eval.zero_shot=false",
                         "no_distillation=false",
                         "classifier.learning_rate=1e30", "classifier.max_steps=4",
                         "checkpoint.every=1"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert ("distilled: non-finite loss or gradient at step 2; training stopped (last good "
            f"checkpoint: step 1 in {out / 'distilled' / 'checkpoints'})") in err
    assert json.loads((out / "p0-s0" / "results.json").read_text())["metrics"]
    log = read_jsonl(out / "distilled" / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2]  # step 2's NaN or inf is logged as null or inf
    assert np.isfinite([log[0]["loss"], log[0]["grad_norm"]]).all()
    assert not np.isfinite([float(log[1][k] or "nan") for k in ("loss", "grad_norm")]).all()
    assert not (out / "distilled" / "results.json").exists()
    assert not (out / "distilled" / "model").exists() and not (out / "results.json").exists()
    assert sorted(p.name for p in (out / "distilled" / "checkpoints").iterdir()) == ["1"]
