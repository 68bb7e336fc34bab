"""summary.md / summary.png of a run folder, regenerated from results.json alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxpet.runs import outputs
from jaxpet.runs.report import results_table, summary_rows, write_report

REPO = Path(__file__).resolve().parents[1]


def _stats(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "runs": len(values)}


def _ipet_results() -> dict:
    seeds = {"p0": [0.50, 0.60, 0.70], "p1": [0.40, 0.45, 0.50]}
    stage = {"patterns": {p: {"acc": _stats(v)} for p, v in seeds.items()},
             "pet": {"acc": _stats(seeds["p0"] + seeds["p1"])},
             "ensemble": {"reduction": "wmean", "members": ["a"] * 6, "metrics": {"acc": 0.66}}}
    return {"method": "ipet", "task": "agnews", "model": "tiny", "eval_set": "dev",
            "num_train": 10, "num_eval": 40, "num_unlabeled": 100,
            "zero_shot": {"p0": {"acc": 0.3}, "p1": {"acc": 0.25}},
            "generations": {"g0": stage, "g1": stage},
            "distilled": {"metrics": {"acc": 0.71}, "model_dir": "OUT/distilled/model"},
            "classifier": {"summary": {"acc": _stats([0.2, 0.3])}}, "wall_time_s": 12.0}


def test_rows_and_table():
    results = _ipet_results()
    rows = dict(summary_rows(results))
    assert rows["iPET g1 PET p0 (3 runs)"]["acc"] == pytest.approx(
        (0.6, float(np.std([0.5, 0.6, 0.7])), 3))
    assert rows["iPET g0 ensemble (wmean of 6)"]["acc"] == (0.66, 0.0, 1)
    assert rows["distilled classifier"]["acc"][0] == 0.71
    assert rows["sequence classifier (2 runs)"]["acc"][0] == pytest.approx(0.25)
    table = results_table(results)
    assert "| iPET g1 PET p0 (3 runs)" in table and "0.600 ± 0.082" in table
    assert "| zero-shot p1" in table and "0.250" in table
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert len(lines) == 2 + len(rows)


def test_write_report_and_module_cli(tmp_path):
    outputs.write_json(tmp_path / "results.json", _ipet_results())
    table = write_report(tmp_path)
    assert (tmp_path / "summary.md").read_text().startswith(table)
    assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "summary.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "jaxpet.runs.report", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "distilled classifier" in proc.stdout
    assert (tmp_path / "summary.md").exists()
    proc = subprocess.run([sys.executable, "-m", "jaxpet.runs.report", str(tmp_path / "missing")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "results.json" in proc.stderr
