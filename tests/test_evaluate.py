"""method evaluate: a finished run's saved models, scored again without training, give the run's
own eval scores and metrics (members, merged ensemble, distilled classifier); clear errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import saved_runs

from jaxpet.cli import train_main
from jaxpet.config import ConfigError, load_config
from jaxpet.runs.outputs import read_jsonl


@pytest.fixture(scope="module")
def pet_run(tmp_path_factory):
    return saved_runs.pet_run(tmp_path_factory)


def evaluate(run: dict, out: Path | None, *overrides: str) -> tuple[Path, dict]:
    """method evaluate of `run` through train.py's entry, into `out` (None: the default,
    <run>/evaluate, found from the run's output_dir); returns (folder, results.json)."""
    config = run["out"] / "config.yaml"  # the run's own resolved config
    args = ["--config", str(config), "method=evaluate", "logging.progress=false"]
    if out is not None:
        args += [f"output_dir={out}", f"evaluate.run_dir={run['out']}"]
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        status = train_main([*args, *overrides])
    assert status == 0, errors.getvalue()
    folder = out if out is not None else run["out"] / "evaluate"
    return folder, json.loads((folder / "results.json").read_text())


def check_same_scores(run_dir: Path, evaluated: Path, folder: str) -> None:
    """Same eval scores bit for bit, and predictions.jsonl's labels say what they mean."""
    expected_NxL = np.load(run_dir / folder / "eval_logits.npy")
    # the same program on the same weights and inputs: the same floats, not merely close ones
    np.testing.assert_array_equal(np.load(evaluated / folder / "eval_logits.npy"), expected_NxL)
    records = read_jsonl(evaluated / folder / "predictions.jsonl")
    assert [r["label"] for r in records] == [r["label"] for r in
                                             read_jsonl(run_dir / folder / "predictions.jsonl")]


def accuracy(folder: Path) -> float:
    """Accuracy re-derived from predictions.jsonl (label against gold)."""
    records = read_jsonl(folder / "predictions.jsonl")
    return float(np.mean([r["label"] == r["gold"] for r in records]))


def test_evaluate_reproduces_the_runs_members_ensemble_and_distilled_metrics(pet_run,
                                                                             tmp_path):
    run_dir = pet_run["out"]
    trained = json.loads((run_dir / "results.json").read_text())
    folder, results = evaluate(pet_run, tmp_path / "eval")
    assert results["method"] == "evaluate" and results["run_dir"] == str(run_dir)
    for member in ("p0-s0", "p1-s0"):
        check_same_scores(run_dir, folder, member)
        assert results["members"][member]["metrics"] == trained["members"][member]["metrics"]
        assert results["members"][member]["metrics"]["acc"] == accuracy(folder / member)
    check_same_scores(run_dir, folder, "ensemble")
    assert results["ensemble"]["metrics"] == trained["ensemble"]["metrics"]
    assert results["ensemble"]["weights"] == trained["ensemble"]["weights"]
    check_same_scores(run_dir, folder, "distilled")
    assert results["distilled"]["metrics"] == trained["distilled"]["metrics"]
    assert results["patterns"] == trained["patterns"]
    check_same_scores(run_dir, folder, "sc-s0")  # the supervised baseline
    assert results["classifier"]["summary"] == trained["classifier"]["summary"]
    summary = (folder / "summary.md").read_text()
    assert "method evaluate" in summary and "distilled classifier" in summary
    assert not list(folder.rglob("model.safetensors"))  # it saves no models of its own


def test_evaluate_without_run_dir_writes_into_the_runs_evaluate_folder(pet_run):
    folder, results = evaluate(pet_run, None)
    assert folder == pet_run["out"] / "evaluate"
    check_same_scores(pet_run["out"], folder, "distilled")
    # a second evaluation replaces the first one's folder (no training run is at stake)
    again, _ = evaluate(pet_run, None)
    check_same_scores(pet_run["out"], again, "p1-s0")


@pytest.mark.slow
def test_evaluate_reproduces_multi_token_and_t5_members(tmp_path_factory, tmp_path):
    for name, run, member in (("copa", saved_runs.copa_run(tmp_path_factory), "p1-s0"),
                              ("t5", saved_runs.t5_run(tmp_path_factory), "p0-s0")):
        trained = json.loads((run["out"] / "results.json").read_text())
        folder, results = evaluate(run, tmp_path / name)
        check_same_scores(run["out"], folder, member)
        assert results["members"][member]["metrics"] == trained["members"][member]["metrics"]
        check_same_scores(run["out"], folder, "ensemble")


@pytest.mark.slow
def test_evaluate_reproduces_the_saved_ipet_generation(tmp_path_factory, tmp_path):
    run = saved_runs.ipet_final_run(tmp_path_factory)
    trained = json.loads((run["out"] / "results.json").read_text())
    folder, results = evaluate(run, tmp_path / "eval")
    assert list(results["generations"]) == ["g1"]  # g0's members were not saved (final)
    for member in ("p0-s0", "p1-s0"):
        check_same_scores(run["out"] / "g1", folder / "g1", member)
    # the last generation's merge is the run's final ensemble, in OUT/ensemble as in the run
    check_same_scores(run["out"], folder, "ensemble")
    assert results["ensemble"]["metrics"] == trained["ensemble"]["metrics"]


@pytest.mark.slow
def test_a_run_without_saved_models_is_named_with_the_setting(tmp_path_factory, tmp_path):
    from jaxpet.pipelines.pet import run

    unsaved = saved_runs.unsaved_run(tmp_path_factory)
    config = load_config(unsaved["out"] / "config.yaml", [
        "method=evaluate", f"output_dir={tmp_path / 'eval'}",
        f"evaluate.run_dir={unsaved['out']}"])
    with pytest.raises(ConfigError, match=rf"{unsaved['out']}: no saved models .*"
                                          r"output\.save_models='none'"):
        run(config)


def test_errors_name_the_key_or_folder(pet_run, tmp_path):
    from jaxpet.pipelines.pet import run

    config_file = pet_run["out"] / "config.yaml"
    with pytest.raises(ConfigError, match=r"unknown config key 'evaluate\.run_folder'"):
        load_config(config_file, ["method=evaluate", "evaluate.run_folder=x"])
    missing = tmp_path / "nothing"
    with pytest.raises(ConfigError, match=rf"'evaluate\.run_dir' \({missing}\): no such run"):
        run(load_config(config_file, ["method=evaluate", f"evaluate.run_dir={missing}",
                                      f"output_dir={tmp_path / 'eval'}"]))
    # a training run's folder as output_dir: its results are kept, the evaluation refused
    other = tmp_path / "trained"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"method": "pet"}))
    with pytest.raises(ConfigError, match=r"'output_dir' .* holds a run's results; method "
                                          r"evaluate writes into a folder of its own"):
        run(load_config(config_file, ["method=evaluate", f"evaluate.run_dir={pet_run['out']}",
                                      f"output_dir={other}"]))
    assert json.loads((other / "results.json").read_text()) == {"method": "pet"}
    wrong_task = load_config(config_file, [
        "method=evaluate", f"evaluate.run_dir={pet_run['out']}", f"output_dir={tmp_path / 'e2'}",
        "task.name=yahoo"])
    with pytest.raises(ConfigError, match=r"trained on task 'agnews', the config's "
                                          r"task\.name is 'yahoo'"):
        run(wrong_task)
