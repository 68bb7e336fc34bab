"""T5 as a PET backbone through train.py: members, merge, distillation into a BERT, iPET, errors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_t5
from test_pipeline import (
    check_distillation,
    dropout_free_copy,
    expected_ipet_sets,
    pet_merge,
    spy_on_training,
)
from test_train_cli import _rows, build_workspace

import jaxpet.scoring.scorer
from jaxpet.cli import train_main
from jaxpet.config import load_config
from jaxpet.runs.fingerprint import run_fingerprint, write_fingerprint
from jaxpet.runs.outputs import read_jsonl

LABELS = ["1", "2", "3", "4"]
MEMBERS = ["p0-s0", "p1-s0"]
TEMPERATURE = 2.5  # not the default 2: the run must use the configured one


def make_tiny_t5_backbone(folder: Path) -> None:
    """A tiny random T5 whose tokenizer knows the fixture's words but not the AG News label
    words, which therefore span several tokens; dropout on, as real T5 checkpoints have."""
    from transformers import AutoTokenizer

    texts = [f"{head} {body}" for _, head, body in _rows(12, seed=0)]
    # the label words once: their characters are in the vocabulary, the words are not
    texts.append("News: ( ) [ Category: ] World Sports Business Tech")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny_t5, "TOKENIZER_TEXTS", texts)
        tiny_t5.make_t5_tokenizer(str(folder), vocab_size=100)
    # The Unigram trainer orders equally frequent pieces (and offsets their scores by 1e-4) in
    # an order that changes from process to process, and the ids of the label words'
    # characters decide how training goes: canonical scores, ties broken by the piece, give
    # every session the same tokenizer. Specials come first, the 100 sentinels last.
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    trained = sorted(([piece, round(score, 3)] for piece, score in vocab[3:-100]),
                     key=lambda entry: (-entry[1], entry[0]))
    spec["model"]["vocab"] = [*vocab[:3], *trained, *vocab[-100:]]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    # saves tokenizer.json: later loads skip the slow SentencePiece conversion
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    tiny_t5.make_tiny_t5(str(folder), "1.0", vocab_size=224, seed=0)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dropout_rate": 0.1}))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5_pet")
    space = build_workspace(root)  # AG News fixture data and a tiny BERT (the classifier)
    make_tiny_t5_backbone(root / "tiny-t5")
    # the classifier without dropout and one distillation batch of all 24 unlabeled examples:
    # the first distillation loss is then the loss of the student's start scores on the set
    classifier = dropout_free_copy(space["model"], root / "classifier")
    config = root / "t5-pet.yaml"
    config.write_text(f"""\
method: pet
output_dir: {root / "out-pet"}
seed: 3
compilation_cache: {root / "xla-cache"}
task: {{name: agnews, data_dir: {space["data"]}, train_examples: 16, test_examples: -1,
        unlabeled_examples: 24, split_examples_evenly: true}}
model: {{name: {root / "tiny-t5"}}}
pet: {{pattern_ids: [0, 1], repetitions: 1, max_seq_length: 32, train_batch_size: 8,
      max_steps: 24, learning_rate: 5e-3, weight_decay: 0.0, lm_training: false}}
classifier: {{model: {classifier}, max_seq_length: 32, train_batch_size: 4,
             unlabeled_batch_size: 24, max_steps: 3, learning_rate: 1e-2,
             temperature: {TEMPERATURE}}}
mesh: {{data: 1}}
eval: {{batch_size: 16}}
logging: {{progress: false, every: 1}}
""")
    return {**space, "root": root, "t5": root / "tiny-t5", "config": config}


def _train(workspace, *overrides: str) -> tuple[int, str, str]:
    """train_main on the T5 config; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = train_main(["--config", str(workspace["config"]), *overrides])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def pet_run(workspace):
    def no_k_step(*args, **kwargs):
        raise AssertionError("a T5 pattern went to the masked LM's K-step multi-token path")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jaxpet.scoring.scorer, "CandidatesScorer", no_k_step)
        status, printed, errors = _train(workspace)
    assert status == 0, errors
    out = workspace["root"] / "out-pet"
    return out, json.loads((out / "results.json").read_text()), printed


def test_members_train_and_write_their_outputs(pet_run):
    out, results, _ = pet_run
    assert sorted(results["members"]) == MEMBERS and set(results["zero_shot"]) == {"p0", "p1"}
    for name in MEMBERS:
        member = results["members"][name]
        eval_NxL = np.load(out / name / "eval_logits.npy")
        # label scores are sums of token log-probabilities: finite and below 0
        assert eval_NxL.shape == (16, 4) and np.isfinite(eval_NxL).all() and (eval_NxL < 0).all()
        assert np.load(out / name / "unlabeled_logits.npy").shape == (24, 4)
        predictions = read_jsonl(out / name / "predictions.jsonl")
        assert [p["label"] for p in predictions] == [LABELS[i] for i in eval_NxL.argmax(-1)]
        accuracy = np.mean([p["label"] == p["gold"] for p in predictions])
        assert member["metrics"]["acc"] == pytest.approx(accuracy)
        # training fits the labeled set: better than before, and better than chance
        assert member["train_set_after_training"] > member["train_set_before_training"]
        assert member["train_set_after_training"] >= 0.75
        log = read_jsonl(out / name / "metrics.jsonl")
        assert [r["step"] for r in log] == list(range(1, 25))
        assert np.mean([r["loss"] for r in log[-3:]]) < 0.5 * log[0]["loss"]


def test_ensemble_merges_the_members_scores(pet_run):
    out, results, _ = pet_run
    weights_M = np.array([results["members"][n]["train_set_before_training"] for n in MEMBERS])
    for file in ("eval_logits.npy", "unlabeled_logits.npy"):
        members_MxNxL = np.stack([np.load(out / n / file) for n in MEMBERS])
        # float32 file of a float64 average: catches a wrong weight or member, not the cast
        np.testing.assert_allclose(np.load(out / "ensemble" / file),
                                   pet_merge(members_MxNxL, weights_M, "wmean"), rtol=1e-6)
    merged_NxL = np.load(out / "ensemble" / "eval_logits.npy")
    gold = [p["gold"] for p in read_jsonl(out / "ensemble" / "predictions.jsonl")]
    accuracy = np.mean([LABELS[i] == g for i, g in zip(merged_NxL.argmax(-1), gold, strict=True)])
    assert results["ensemble"]["metrics"]["acc"] == pytest.approx(accuracy)


def test_ensemble_is_distilled_into_the_classifier_model(workspace, pet_run):
    out, results, _ = pet_run
    exported = json.loads((out / "distilled" / "model" / "config.json").read_text())
    assert exported["model_type"] == "bert"  # classifier.model, not the T5 backbone
    assert np.load(out / "distilled" / "eval_logits.npy").shape == (16, 4)
    check_distillation(out, results["members"], TEMPERATURE)
    log = read_jsonl(out / "distilled" / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[-1]["loss"] < log[0]["loss"]  # one full batch: the loss of the whole set drops
    assert results["distilled"]["num_unlabeled"] == 24
    assert results["distilled"]["temperature"] == TEMPERATURE
    assert "distilled classifier" in (out / "summary.md").read_text()


def test_multi_token_label_words_are_scored_without_the_k_step_path(workspace, pet_run):
    from jaxpet.engine.sharding import build_mesh
    from jaxpet.models import load_pretrained
    from jaxpet.pipelines.member import (
        PatternData,
        place_params,
        predict_logits,
        prepare_pattern,
    )
    from jaxpet.pipelines.setup import load_task_data
    from jaxpet.prompts import get_pvp
    from jaxpet.scoring.scorer import needs_multi_token
    from jaxpet.scoring.seq2seq import sentinel_tokenizer

    out, results, _ = pet_run
    config = load_config(workspace["config"])
    lm = load_pretrained(str(workspace["t5"]), head="seq2seq")
    pvp = get_pvp("agnews", 0)
    # with the sentinel as its mask, the MLM path would take these words to K-step decoding
    assert needs_multi_token(pvp, sentinel_tokenizer(lm.tokenizer))
    pattern = prepare_pattern(config, lm, load_task_data(config), 0)
    assert isinstance(pattern, PatternData)
    _, mask_LxWxT = pattern.label_targets
    tokens_L = mask_LxWxT.sum(-1)[:, 0]
    assert (tokens_L >= 3).all()  # <extra_id_0> and at least two word pieces for every label
    # the run's zero-shot accuracy is these scores' accuracy with the untrained model
    mesh = build_mesh(config)
    scores_NxL = predict_logits(config, pattern.logits_fn, place_params(lm.params, mesh),
                                pattern.eval, mesh)
    accuracy = np.mean(scores_NxL.argmax(-1) == pattern.eval["labels"])
    assert results["zero_shot"]["p0"]["acc"] == pytest.approx(accuracy)


def test_ipet_trains_the_next_generation_on_pseudo_labeled_t5_inputs(workspace, pet_run,
                                                                    monkeypatch):
    pet_out, pet_results, _ = pet_run
    seen = spy_on_training(monkeypatch)
    out = workspace["root"] / "out-ipet"
    overrides = ["method=ipet", f"output_dir={out}", "ipet.generations=2",
                 "ipet.scale_factor=1.5", "ipet.n_most_likely=10", "eval.zero_shot=false",
                 "no_distillation=true"]
    # g0 is PET on T with the same settings: the PET run's members, reused as a resumed run
    # would (whose folder carries this run's fingerprint)
    write_fingerprint(out, run_fingerprint(load_config(workspace["config"], overrides)))
    for name in MEMBERS:
        shutil.copytree(pet_out / name, out / "g0" / name)
    status, printed, errors = _train(workspace, *overrides)
    assert status == 0, errors
    assert printed.count("results.json exists, reusing it") == 2
    results = json.loads((out / "results.json").read_text())
    assert results["generations"]["g0"]["members"] == pet_results["members"]
    g1 = results["generations"]["g1"]["members"]
    g0 = pet_results["members"]
    num_new = int(16 * 1.5**1 - 16)  # PET's growth |T| d^(g+1) - |T|, T's 4 examples per label
    quotas = [int(4 * num_new / 16)] * 4
    expected = expected_ipet_sets(
        {n: np.load(pet_out / n / "unlabeled_logits.npy") for n in MEMBERS},
        {n: g0[n]["train_set_before_training"] for n in MEMBERS}, quotas, "wmean",
        n_most_likely=10, seed=3)  # the run's seed, as for every generation
    for name in MEMBERS:
        # T plus the 8 unlabeled examples that the other member labeled, as T5 inputs
        pseudo = json.loads((out / "g0" / "next-gen" / f"{name}.json").read_text())
        rows, label_ids = [r for r, _ in expected[name]], [y for _, y in expected[name]]
        assert pseudo["unlabeled_indices"] == rows and pseudo["label_ids"] == label_ids
        assert pseudo["quota_per_label"] == quotas == [2, 2, 2, 2]
        trained_on = seen[f"g1/{name}"][""]["labels"]
        assert np.bincount(trained_on[:16]).tolist() == [4, 4, 4, 4]  # T
        assert trained_on[16:].tolist() == label_ids  # the pseudo-labels reach the training
        assert g1[name]["num_train"] == 16 + num_new
        assert g1[name]["train_set_after_training"] > g1[name]["train_set_before_training"]
        assert len(read_jsonl(out / "g1" / name / "metrics.jsonl")) == 24
        assert np.load(out / "g1" / name / "unlabeled_logits.npy").shape == (24, 4)
    assert results["ensemble"]["members"] == MEMBERS and results["members"] == g1


@pytest.mark.parametrize("overrides, message", [
    (["pet.lm_training=true"], "Set pet.lm_training: false"),
    (["classifier.model="], "is empty), a T5 checkpoint"),
    (["method=sequence_classifier", "classifier.model=''"], "Set classifier.model to an encoder"),
    (["mlm_pretrain.enabled=true"], "set mlm_pretrain.enabled: false"),
])
def test_unsupported_options_fail_before_training(workspace, tmp_path, overrides, message):
    out = tmp_path / "out"
    status, _, errors = _train(workspace, f"output_dir={out}", *overrides)
    assert status == 2 and message in errors and "Traceback" not in errors
    assert not any(out.glob("*/metrics.jsonl"))  # nothing was trained


def test_a_t5_run_needs_classifier_model_only_when_it_trains_a_classifier(workspace):
    from jaxpet.config import ConfigError
    from jaxpet.pipelines.pet import check_models

    without = ["classifier.model=", "output_dir=unused"]
    check_models(load_config(workspace["config"], [*without, "no_distillation=true"]))
    with pytest.raises(ConfigError, match="classifier.model"):
        check_models(load_config(workspace["config"], [
            *without, "no_distillation=true", "classifier.baseline=true"]))


def test_candidate_patterns_fail_naming_task_and_pattern(workspace):
    from jaxpet.models import load_pretrained
    from jaxpet.pipelines.member import prepare_pattern
    from jaxpet.pipelines.setup import TaskData

    lm = load_pretrained(str(workspace["t5"]), head="seq2seq")
    config = load_config(workspace["config"], ["task.name=copa", "pet.pattern_ids=[1]"])
    copa = TaskData("copa", ["0", "1"], [], [], [])
    with pytest.raises(ValueError, match="task 'copa' pattern 1 scores per-example answer"):
        prepare_pattern(config, lm, copa, 1)


def test_parallel_members_train_as_the_sequential_ones(workspace, pet_run):
    """pet.parallel_members trains both T5 members in one vmapped step (each with its own label
    targets and dropout key); they must end where the sequential members of pet_run did."""
    out, results, _ = pet_run
    parallel = workspace["root"] / "out-parallel"
    status, _, errors = _train(workspace, f"output_dir={parallel}", "pet.parallel_members=true",
                               "no_distillation=true")
    assert status == 0, errors
    parallel_results = json.loads((parallel / "results.json").read_text())
    for name in MEMBERS:
        member, sequential = parallel_results["members"][name], results["members"][name]
        for key in ("metrics", "train_set_before_training", "train_set_after_training", "seed"):
            assert member[key] == sequential[key], key
        log = read_jsonl(parallel / name / "metrics.jsonl")
        reference_log = read_jsonl(out / name / "metrics.jsonl")
        # The same batches, dropout keys and learning rates in a vmapped program compiled with
        # the same XLA options: only the batched matrix products round differently, 1e-7 at
        # first, grown by 24 Adam steps at lr 5e-3 to <= 7.3e-5 relative in the losses and
        # <= 1.7e-5 relative in scores of magnitude 40 (measured). Another dropout key or
        # target changes the very first losses; another learning rate the later ones.
        losses_N = [r["loss"] for r in log]
        reference_N = [r["loss"] for r in reference_log]
        np.testing.assert_allclose(losses_N[:3], reference_N[:3], rtol=1e-5)
        np.testing.assert_allclose(losses_N, reference_N, rtol=3e-4)
        np.testing.assert_allclose([r["learning_rate"] for r in log],
                                   [r["learning_rate"] for r in reference_log], rtol=1e-6)
        for file in ("eval_logits.npy", "unlabeled_logits.npy"):
            np.testing.assert_allclose(np.load(parallel / name / file),
                                       np.load(out / name / file), rtol=1e-4, atol=1e-4,
                                       err_msg=file)
