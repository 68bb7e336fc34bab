"""PET and iPET pipelines end to end on a tiny BERT: merge, distillation, export, resume."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_ensemble_ipet import pet_reference_train_set
from test_train_cli import build_workspace

import jaxpet.pipelines.distill
import jaxpet.pipelines.member
import jaxpet.pipelines.pet
from jaxpet.config import load_config
from jaxpet.engine.checkpoint import Checkpointer
from jaxpet.runs import outputs

LABELS = ["1", "2", "3", "4"]
MEMBERS = ["p0-s0", "p1-s0"]
TEMPERATURE = 3.0  # not the default 2: the run must use the configured one
# 1 checkpoint per step so that a run killed mid-member resumes mid-member; the distillation
# batch holds all 24 unlabeled examples, so its first logged loss is the loss over the set
PIPELINE = ["checkpoint.every=1", "classifier.unlabeled_batch_size=24", "classifier.max_steps=3",
            f"classifier.temperature={TEMPERATURE}"]


def dropout_free_copy(model_dir: Path, folder: Path) -> Path:
    """The checkpoint with dropout 0: a classifier whose training loss is a deterministic
    function of its parameters, so a logged loss can be recomputed from saved logits."""
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    space = build_workspace(tmp_path_factory.mktemp("pipeline"))
    return {**space, "classifier": dropout_free_copy(space["model"],
                                                     space["root"] / "classifier")}


def _run(workspace, out: Path, *overrides: str) -> dict:
    config = load_config(workspace["config"], [
        f"output_dir={out}", *PIPELINE, f"classifier.model={workspace['classifier']}",
        *overrides])
    return jaxpet.pipelines.pet.run(config)


def softmax_np(logits_NxL: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled_NxL = np.asarray(logits_NxL, np.float64) / temperature
    exp_NxL = np.exp(scaled_NxL - scaled_NxL.max(-1, keepdims=True))
    return exp_NxL / exp_NxL.sum(-1, keepdims=True)


def pet_merge(logits_MxNxL: np.ndarray, weights_M: np.ndarray, reduction: str) -> np.ndarray:
    """PET's ensemble merge: the mean of the members' raw scores, or (wmean) their average
    weighted by each member's accuracy on T before training. All-zero weights give the mean
    (jaxpet's documented deviation; PET divides by zero)."""
    logits_MxNxL = np.asarray(logits_MxNxL, np.float64)
    if reduction == "mean" or np.sum(weights_M) == 0:
        return logits_MxNxL.mean(0)
    return np.sum(np.asarray(weights_M)[:, None, None] * logits_MxNxL, 0) / np.sum(weights_M)


def distillation_kl_N(targets_NxL: np.ndarray, student_NxL: np.ndarray,
                      temperature: float) -> np.ndarray:
    """KL(targets || softmax(student / T)) per example."""
    student_NxL = np.asarray(student_NxL, np.float64) / temperature
    log_p_NxL = student_NxL - student_NxL.max(-1, keepdims=True)
    log_p_NxL -= np.log(np.exp(log_p_NxL).sum(-1, keepdims=True))
    return np.sum(targets_NxL * (np.log(targets_NxL) - log_p_NxL), -1)


def check_distillation(out: Path, members: dict, temperature: float) -> None:
    """The distillation targets are softmax(PET's wmean merge of the members' unlabeled scores
    / T): the first logged loss (all unlabeled rows in one batch, no dropout, parameters not yet
    updated) is T^2 * mean KL(targets || softmax(student / T)) of the student's start scores;
    and the student's scores move toward those targets."""
    names = sorted(members)
    weights_M = np.array([members[n]["train_set_before_training"] for n in names])
    member_MxNxL = np.stack([np.load(out / n / "unlabeled_logits.npy") for n in names])
    teacher_NxL = pet_merge(member_MxNxL, weights_M, "wmean")
    # float32 file of a float64 average: catches a wrong weight or member, not the cast
    np.testing.assert_allclose(np.load(out / "ensemble" / "unlabeled_logits.npy"), teacher_NxL,
                               rtol=1e-6, atol=1e-6)
    targets_NxL = softmax_np(teacher_NxL, temperature)
    before_NxL = np.load(out / "distilled" / "unlabeled_logits_before_training.npy")
    after_NxL = np.load(out / "distilled" / "unlabeled_logits.npy")
    log = outputs.read_jsonl(out / "distilled" / "metrics.jsonl")
    expected = temperature**2 * distillation_kl_N(targets_NxL, before_NxL, temperature).mean()
    # float32 forward in the train step vs the prediction program (measured 1e-5 relative);
    # a zero (uniform) teacher changes this loss 40-fold, the default T = 2 by 1e-3 relative
    assert log[0]["loss"] == pytest.approx(expected, rel=1e-4)
    kl_before = distillation_kl_N(targets_NxL, before_NxL, temperature).mean()
    kl_after = distillation_kl_N(targets_NxL, after_NxL, temperature).mean()
    assert kl_after < kl_before, (kl_before, kl_after)


@pytest.fixture(scope="module")
def pet_run(workspace):
    out = workspace["root"] / "pet"
    results = _run(workspace, out, "classifier.baseline=true")
    return out, results


def test_pet_pipeline_merges_and_distills(pet_run):
    out, results = pet_run
    assert json.loads((out / "results.json").read_text())["distilled"] == results["distilled"]
    assert sorted(results["members"]) == MEMBERS
    weights_M = np.array([results["members"][n]["train_set_before_training"] for n in MEMBERS])
    members_MxNxL = np.stack([np.load(out / n / "eval_logits.npy") for n in MEMBERS])
    merged_eval_NxL = np.load(out / "ensemble" / "eval_logits.npy")
    # float32 file of a float64 average: catches a wrong weight or member, not the cast
    np.testing.assert_allclose(merged_eval_NxL, pet_merge(members_MxNxL, weights_M, "wmean"),
                               rtol=1e-6, atol=1e-6)
    ensemble = results["ensemble"]
    gold = [p["gold"] for p in outputs.read_jsonl(out / "ensemble" / "predictions.jsonl")]
    accuracy = np.mean([LABELS[i] == g for i, g in zip(
        merged_eval_NxL.argmax(-1), gold, strict=True)])
    assert ensemble["metrics"]["acc"] == pytest.approx(accuracy)
    assert ensemble["reduction"] == "wmean" and ensemble["weights"] == weights_M.tolist()
    check_distillation(out, results["members"], TEMPERATURE)
    distilled = results["distilled"]
    log = outputs.read_jsonl(out / "distilled" / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[-1]["loss"] < log[0]["loss"]  # one full batch: the loss of the whole set drops
    assert np.load(out / "distilled" / "eval_logits.npy").shape == (16, 4)
    assert distilled["num_unlabeled"] == 24 and distilled["temperature"] == TEMPERATURE
    summary = (out / "summary.md").read_text()
    for row in ("PET p0 (1 run)", "ensemble (wmean of 2)", "distilled classifier",
                "sequence classifier (1 run)"):
        assert row in summary
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_distilled_model_loads_in_transformers(workspace, pet_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from jaxpet.data.tasks import load_examples
    from jaxpet.pipelines.mlm_pretrain import encode_texts

    out, _ = pet_run
    model = AutoModelForSequenceClassification.from_pretrained(out / "distilled" / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    examples = load_examples("agnews", workspace["data"], "dev")
    arrays, _ = encode_texts(examples, tokenizer, 32)
    with torch.no_grad():
        torch_logits = model(**{k: torch.tensor(arrays[k], dtype=torch.long) for k in (
            "input_ids", "attention_mask", "token_type_ids")}).logits.numpy()
    # Flax vs PyTorch float32 kernels (parity tests: ~1e-6); a head or encoder weight saved
    # wrongly moves the logits by the weights' scale, ~1e-2
    np.testing.assert_allclose(np.load(out / "distilled" / "eval_logits.npy"), torch_logits,
                               atol=1e-4)


class Killed(Exception):
    """Stands in for a kill: raised inside the pipeline, after some outputs were written."""


def _kill_in(monkeypatch, folder_name: str, at_step: int) -> None:
    """Raises Killed when `folder_name`'s training logs step `at_step` (0: before it starts)."""
    original_train, original_write = jaxpet.pipelines.member.train, outputs.ThroughputLog.write

    def train(config, settings, loss_fn, params, groups, mesh, folder, seed):
        if folder.name == folder_name and at_step == 0:
            raise Killed(folder_name)
        return original_train(config, settings, loss_fn, params, groups, mesh, folder, seed)

    def write(self, step, metrics):
        original_write(self, step, metrics)
        if Path(self.writer.directory).name == folder_name and step == at_step:
            raise Killed(f"{folder_name} at step {step}")

    monkeypatch.setattr(jaxpet.pipelines.member, "train", train)  # the members
    monkeypatch.setattr(jaxpet.pipelines.distill, "train", train)  # the classifiers
    monkeypatch.setattr(outputs.ThroughputLog, "write", write)


def test_killed_pipeline_resumes_to_the_same_results(workspace, pet_run, monkeypatch):
    reference_out, reference = pet_run
    out = workspace["root"] / "resumed"
    # resumed, not restarted: each killed stage restores the checkpoint of its last logged step
    # when the run is repeated (a restart from step 0 would log the same steps and, without
    # dropout, reach the same results, so only the restore tells the two apart)
    restored: dict[str, int | None] = {}
    original_restore = Checkpointer.restore_latest

    def restore_latest(self, target_state, below=None):
        step, state = original_restore(self, target_state, below)
        restored[Path(self.directory).parent.name] = step
        return step, state

    monkeypatch.setattr(Checkpointer, "restore_latest", restore_latest)
    # the first kill falls mid-member (p0-s0 finished: a member boundary lies behind it),
    # the second one mid-distillation
    for folder_name, step in (("p1-s0", 2), ("distilled", 2)):
        with monkeypatch.context() as patch:
            _kill_in(patch, folder_name, step)
            with pytest.raises(Killed, match=folder_name):
                _run(workspace, out, "classifier.baseline=true", "eval.zero_shot=false")
        assert not (out / folder_name / "results.json").exists()
    assert restored == {"p1-s0": 2}  # by the second run, which then stopped in distillation
    steps = [r["step"] for r in outputs.read_jsonl(out / "p1-s0" / "metrics.jsonl")]
    assert steps[0] == 1 and steps[-1] == 3 and len(steps) < 6
    results = _run(workspace, out, "classifier.baseline=true", "eval.zero_shot=false")
    assert restored == {"p1-s0": 2, "distilled": 2}, restored

    def untimed(members: dict) -> dict:
        return {n: {k: v for k, v in r.items() if k != "train_time_s"} for n, r in members.items()}

    assert untimed(results["members"]) == untimed(reference["members"])
    assert results["ensemble"] == reference["ensemble"]
    assert untimed(results["classifier"]["members"]) == untimed(reference["classifier"]["members"])
    assert results["distilled"]["metrics"] == reference["distilled"]["metrics"]
    # a resumed run repeats the same steps from restored states, equal up to float32
    # rounding; a skipped or repeated step is a whole Adam update of ~1e-3 per weight
    for file in ("p0-s0/unlabeled_logits.npy", "p1-s0/eval_logits.npy",
                 "ensemble/unlabeled_logits.npy", "distilled/eval_logits.npy"):
        np.testing.assert_allclose(np.load(out / file), np.load(reference_out / file),
                                   rtol=1e-5, atol=1e-6)


def expected_ipet_sets(logits: dict, weights: dict, quotas: list[int], reduction: str,
                       n_most_likely: int, seed: int) -> dict[str, list[tuple[int, int]]]:
    """PET's next-generation sets: for each member in name order, a quarter (at least one) of
    the *other* members, drawn from one random stream shared by all members, label and sample
    the unlabeled set (tests/test_ensemble_ipet.py's reference of PET's rule)."""
    names = sorted(logits)
    rng, rng_np = random.Random(seed), np.random.RandomState(seed)
    return {name: pet_reference_train_set(
        [logits[o] for o in names if o != name], [weights[o] for o in names if o != name],
        quotas, 0.25, reduction, n_most_likely, rng, rng_np, at_least_one=True)
        for name in names}


def spy_on_training(monkeypatch) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Records the arrays every model trains on: {"g1/p0-s0": {group prefix: arrays}}."""
    seen: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    original = jaxpet.pipelines.member.train

    def train(config, settings, loss_fn, params, groups, mesh, folder, seed):
        seen[f"{folder.parent.name}/{folder.name}"] = {
            prefix: {k: np.array(v) for k, v in arrays.items()}
            for prefix, (arrays, _, _) in groups.items()}
        return original(config, settings, loss_fn, params, groups, mesh, folder, seed)

    monkeypatch.setattr(jaxpet.pipelines.member, "train", train)
    return seen


def test_ipet_two_generations(workspace, monkeypatch):
    out = workspace["root"] / "ipet"
    seen = spy_on_training(monkeypatch)
    # n_most_likely: g0's labels come from the 10 most likely examples per label, so every label
    # gets its quota even when the barely trained members predict one label for everything
    results = _run(workspace, out, "method=ipet", "ipet.generations=2", "ipet.scale_factor=1.5",
                   "ipet.n_most_likely=10", "eval.zero_shot=false")
    assert sorted(results["generations"]) == ["g0", "g1"]
    g0 = results["generations"]["g0"]["members"]
    g1 = results["generations"]["g1"]["members"]
    # PET's growth: |T| d^(g+1) - |T| new examples, in T's label ratio (4 of each label in T)
    labels_T = seen["g0/p0-s0"][""]["labels"]
    assert np.bincount(labels_T).tolist() == [4, 4, 4, 4]
    num_new = int(16 * 1.5**1 - 16)
    quotas = [int(count * num_new / 16) for count in np.bincount(labels_T)]
    assert quotas == [2, 2, 2, 2]
    expected = expected_ipet_sets(
        {n: np.load(out / "g0" / n / "unlabeled_logits.npy") for n in g0},
        {n: g0[n]["train_set_before_training"] for n in g0}, quotas, "wmean",
        n_most_likely=10, seed=3)  # the run's seed, as for every generation
    for name, pairs in expected.items():
        rows, label_ids = [r for r, _ in pairs], [y for _, y in pairs]
        saved = outputs.read_json(out / "g0" / "next-gen" / f"{name}.json")
        assert saved["quota_per_label"] == quotas
        assert saved["unlabeled_indices"] == rows and saved["label_ids"] == label_ids
        assert saved["labels"] == [LABELS[y] for y in label_ids]
        # the pseudo-labels reach generation 1's training: T's rows, then the drawn unlabeled
        # rows (the pattern's encoding, as the auxiliary MLM group holds it) with their labels
        first, second = seen[f"g0/{name}"], seen[f"g1/{name}"]
        np.testing.assert_array_equal(second[""]["labels"], [*first[""]["labels"], *label_ids])
        np.testing.assert_array_equal(second[""]["input_ids"][:16], first[""]["input_ids"])
        np.testing.assert_array_equal(second[""]["input_ids"][16:],
                                      first["unlabeled_"]["input_ids"][rows])
        assert g1[name]["num_train"] == 16 + num_new
    assert results["members"] == g1
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


def test_parallel_members_train_together(workspace, pet_run):
    """Both members in one vmapped step end where pet_run's sequential members did."""
    reference_out, reference = pet_run
    out = workspace["root"] / "parallel"
    results = _run(workspace, out, "pet.parallel_members=true", "no_distillation=true",
                   "eval.zero_shot=false")
    groups = list((out / "parallel-checkpoints").iterdir())
    assert [g.name for g in groups] == ["p0-s0+p1-s0"]  # one group, both members
    assert sorted(results["members"]) == MEMBERS
    for name, member in results["members"].items():
        sequential = reference["members"][name]
        for key in ("metrics", "train_set_before_training", "train_set_after_training",
                    "seed", "num_train"):
            assert member[key] == sequential[key], key
        log = outputs.read_jsonl(out / name / "metrics.jsonl")
        reference_log = outputs.read_jsonl(reference_out / name / "metrics.jsonl")
        assert [r["step"] for r in log] == [1, 2, 3]
        # the same batches, MLM masks and learning rates, in a batched (vmapped) program
        # whose float32 sums may round differently (measured: losses bitwise equal, scores
        # within 4e-8); another seed (other MLM masks) moved the losses by 1e-2
        for key in ("loss", "mlm", "learning_rate"):
            np.testing.assert_allclose([r[key] for r in log], [r[key] for r in reference_log],
                                       rtol=1e-6, err_msg=key)
        for file in ("eval_logits.npy", "unlabeled_logits.npy"):
            np.testing.assert_allclose(np.load(out / name / file),
                                       np.load(reference_out / name / file), rtol=1e-5,
                                       atol=1e-6, err_msg=file)
