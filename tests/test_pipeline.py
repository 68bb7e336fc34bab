"""PET and iPET pipelines end to end on a tiny BERT: merge, distillation, export, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_train_cli import build_workspace

import jaxpet.pet
from jaxpet import outputs
from jaxpet.config import load_config
from jaxpet.ensemble import merge_logits
from jaxpet.ipet import examples_per_label, generate_train_sets, num_new_examples

# 1 checkpoint per step so that a run killed mid-member resumes mid-member
PIPELINE = ["checkpoint.every=1", "classifier.unlabeled_batch_size=4", "classifier.max_steps=3",
            "classifier.temperature=2.0"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("pipeline"))


def _run(workspace, out: Path, *overrides: str) -> dict:
    config = load_config(workspace["config"], [f"output_dir={out}", *PIPELINE, *overrides])
    return jaxpet.pet.run(config)


@pytest.fixture(scope="module")
def pet_run(workspace):
    out = workspace["root"] / "pet"
    results = _run(workspace, out, "classifier.baseline=true")
    return out, results


def test_pet_pipeline_merges_and_distills(pet_run):
    out, results = pet_run
    assert json.loads((out / "results.json").read_text())["distilled"] == results["distilled"]
    names = ["p0-s0", "p1-s0"]
    assert sorted(results["members"]) == names
    weights_M = np.array([results["members"][n]["train_set_before_training"] for n in names])
    for file in ("eval_logits.npy", "unlabeled_logits.npy"):
        member_logits = np.stack([np.load(out / n / file) for n in names])
        expected_NxL = merge_logits(member_logits, weights_M, "wmean")
        np.testing.assert_allclose(np.load(out / "ensemble" / file), expected_NxL, rtol=1e-6)
    ensemble = results["ensemble"]
    gold = [p["gold"] for p in outputs.read_jsonl(out / "ensemble" / "predictions.jsonl")]
    merged_eval = np.load(out / "ensemble" / "eval_logits.npy")
    accuracy = np.mean([["1", "2", "3", "4"][i] == g for i, g in zip(
        merged_eval.argmax(-1), gold, strict=True)])
    assert ensemble["metrics"]["acc"] == pytest.approx(accuracy)
    assert ensemble["reduction"] == "wmean" and ensemble["weights"] == weights_M.tolist()
    distilled = results["distilled"]
    log = outputs.read_jsonl(out / "distilled" / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert np.load(out / "distilled" / "eval_logits.npy").shape == (16, 4)
    assert distilled["num_unlabeled"] == 24 and distilled["temperature"] == 2.0
    summary = (out / "summary.md").read_text()
    for row in ("PET p0 (1 run)", "ensemble (wmean of 2)", "distilled classifier",
                "sequence classifier (1 run)"):
        assert row in summary
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_distilled_model_loads_in_transformers(workspace, pet_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from jaxpet.data.tasks import load_examples
    from jaxpet.mlm_pretrain import encode_texts

    out, _ = pet_run
    model = AutoModelForSequenceClassification.from_pretrained(out / "distilled" / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    examples = load_examples("agnews", workspace["data"], "dev")
    arrays, _ = encode_texts(examples, tokenizer, 32)
    with torch.no_grad():
        torch_logits = model(**{k: torch.tensor(arrays[k], dtype=torch.long) for k in (
            "input_ids", "attention_mask", "token_type_ids")}).logits.numpy()
    np.testing.assert_allclose(np.load(out / "distilled" / "eval_logits.npy"), torch_logits,
                               atol=1e-4)


class Killed(Exception):
    """Stands in for a kill: raised inside the pipeline, after some outputs were written."""


def _kill_in(monkeypatch, folder_name: str, at_step: int) -> None:
    """Raises Killed when `folder_name`'s training logs step `at_step` (0: before it starts)."""
    original_train, original_write = jaxpet.pet.train, outputs.ThroughputLog.write

    def train(config, settings, loss_fn, params, groups, mesh, folder, seed):
        if folder.name == folder_name and at_step == 0:
            raise Killed(folder_name)
        return original_train(config, settings, loss_fn, params, groups, mesh, folder, seed)

    def write(self, step, metrics):
        original_write(self, step, metrics)
        if Path(self.writer.directory).name == folder_name and step == at_step:
            raise Killed(f"{folder_name} at step {step}")

    monkeypatch.setattr(jaxpet.pet, "train", train)
    monkeypatch.setattr(outputs.ThroughputLog, "write", write)


def test_killed_pipeline_resumes_to_the_same_results(workspace, pet_run, monkeypatch):
    reference_out, reference = pet_run
    out = workspace["root"] / "resumed"
    # the first kill falls mid-member (p0-s0 finished: a member boundary lies behind it),
    # the second one mid-distillation
    for folder_name, step in (("p1-s0", 2), ("distilled", 2)):
        with monkeypatch.context() as patch:
            _kill_in(patch, folder_name, step)
            with pytest.raises(Killed):
                _run(workspace, out, "classifier.baseline=true", "eval.zero_shot=false")
        assert not (out / folder_name / "results.json").exists()
    steps = [r["step"] for r in outputs.read_jsonl(out / "p1-s0" / "metrics.jsonl")]
    assert steps[0] == 1 and steps[-1] == 3 and len(steps) < 6  # resumed, not restarted
    results = _run(workspace, out, "classifier.baseline=true", "eval.zero_shot=false")

    def untimed(members: dict) -> dict:
        return {n: {k: v for k, v in r.items() if k != "train_time_s"} for n, r in members.items()}

    assert untimed(results["members"]) == untimed(reference["members"])
    assert results["ensemble"] == reference["ensemble"]
    assert untimed(results["classifier"]["members"]) == untimed(reference["classifier"]["members"])
    assert results["distilled"]["metrics"] == reference["distilled"]["metrics"]
    for file in ("p0-s0/unlabeled_logits.npy", "p1-s0/eval_logits.npy",
                 "ensemble/unlabeled_logits.npy", "distilled/eval_logits.npy"):
        np.testing.assert_allclose(np.load(out / file), np.load(reference_out / file),
                                   rtol=1e-5, atol=1e-6)


def test_ipet_two_generations(workspace):
    out = workspace["root"] / "ipet"
    # n_most_likely: g0's labels come from the 10 most likely examples per label, so every label
    # gets its quota even when the barely trained members predict one label for everything
    results = _run(workspace, out, "method=ipet", "ipet.generations=2", "ipet.scale_factor=1.5",
                   "ipet.n_most_likely=10", "eval.zero_shot=false")
    assert sorted(results["generations"]) == ["g0", "g1"]
    g0 = results["generations"]["g0"]["members"]
    num_new = num_new_examples(16, 0, 1.5)
    assert num_new == 8
    quotas = examples_per_label(["1", "2", "3", "4"] * 4, ["1", "2", "3", "4"], num_new)
    logits = {n: np.load(out / "g0" / n / "unlabeled_logits.npy") for n in g0}
    expected = generate_train_sets(
        logits, {n: g0[n]["train_set_before_training"] for n in g0}, quotas,
        logits_percentage=0.25, reduction="wmean", n_most_likely=10, seed=3)
    for name, pseudo in expected.items():
        saved = outputs.read_json(out / "g0" / "next-gen" / f"{name}.json")
        assert saved["unlabeled_indices"] == pseudo.unlabeled_indices.tolist()
        assert saved["label_ids"] == pseudo.label_ids.tolist()
        assert sorted(saved["labels"]) == sorted(["1", "2", "3", "4"] * 2)  # ratio of T
        assert results["generations"]["g1"]["members"][name]["num_train"] == 16 + num_new
    assert results["members"] == results["generations"]["g1"]["members"]
    assert (out / "distilled" / "model" / "config.json").exists()
    summary = (out / "summary.md").read_text()
    assert "iPET g0 PET p0" in summary and "iPET g1 ensemble" in summary
    assert "distilled classifier" in summary


@pytest.fixture(scope="module")
def zero_run(workspace) -> Path:
    out = workspace["root"] / "zero"
    _run(workspace, out, "pet.max_steps=0", "no_distillation=true")
    return out


def test_zero_shot_members_without_distillation(zero_run):
    out = zero_run
    results = outputs.read_json(out / "results.json")
    for name, member in results["members"].items():
        assert member["train_time_s"] == 0.0
        assert not (out / name / "metrics.jsonl").exists()
        assert member["metrics"] == pytest.approx(results["zero_shot"][f"p{member['pattern_id']}"])
        assert member["train_set_before_training"] == member["train_set_after_training"]
    assert "distilled" not in results and "ensemble" in results


def test_report_regenerates_summary(workspace, pet_run, capsys):
    from jaxpet.cli import main

    out, _ = pet_run
    before = (out / "summary.md").read_text()
    (out / "summary.md").unlink()
    (out / "summary.png").unlink()
    assert main(["report", str(out)]) == 0
    assert "distilled classifier" in capsys.readouterr().out
    assert (out / "summary.md").read_text() == before
    assert (out / "summary.png").exists()
    assert main(["report", str(workspace["root"] / "nothing")]) == 2


def test_parallel_members_train_together(workspace, pet_run, zero_run):
    reference_out, reference = pet_run
    out = workspace["root"] / "parallel"
    results = _run(workspace, out, "pet.parallel_members=true", "no_distillation=true",
                   "eval.zero_shot=false")
    groups = list((out / "parallel-checkpoints").iterdir())
    assert [g.name for g in groups] == ["p0-s0+p1-s0"]  # one group, both members
    for name, member in results["members"].items():
        log = outputs.read_jsonl(out / name / "metrics.jsonl")
        assert [r["step"] for r in log] == [1, 2, 3] and all(r["mlm"] > 0 for r in log)
        assert member["train_time_s"] > 0
        assert member["train_set_before_training"] == (
            reference["members"][name]["train_set_before_training"])
        trained = np.load(out / name / "eval_logits.npy")
        untrained = np.load(zero_run / name / "eval_logits.npy")
        assert np.isfinite(trained).all() and not np.allclose(trained, untrained, atol=1e-3)
