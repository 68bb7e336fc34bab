"""The ensemble merge, distillation and classifier wiring (jaxpet.pipelines.distill), in process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet.config import (
    ClassifierConfig,
    Config,
    ConfigError,
    EvalConfig,
    LoggingConfig,
    MeshConfig,
    ModelConfig,
    OutputConfig,
    PetConfig,
    TaskConfig,
)
from jaxpet.data.example import Example
from jaxpet.engine.batch_keys import MODEL_INPUTS
from jaxpet.engine.sharding import build_mesh
from jaxpet.pipelines import distill
from jaxpet.pipelines.setup import TaskData

LABELS = ["1", "2", "3", "4"]
WORDS = ("news sports business tech world market team game stock city rain food "
         "the a of and is was good bad").split()
D = 6  # the fake encoder's width


# ---------------------------------------------------------------- fixtures and references


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_tokenizers import wordpiece_tokenizer

    return wordpiece_tokenizer(" ".join(WORDS))


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, size=n))


def _examples(prefix: str, n: int, seed: int, labeled: bool, pairs: bool = False) -> list:
    rng = np.random.default_rng(seed)
    return [Example(guid=f"{prefix}-{i}", text_a=_text(rng, 2 + i % 4),
                    text_b=_text(rng, 2) if pairs and i % 2 else None,
                    label=LABELS[(i * 3 + seed) % 4] if labeled else None)
            for i in range(n)]


def _data(n_unlabeled: int = 6, name: str = "agnews") -> TaskData:
    return TaskData(name, list(LABELS), _examples("train", 6, 1, True),
                    _examples("dev", 5, 2, True, pairs=True),
                    _examples("unlabeled", n_unlabeled, 3, False, pairs=True))


def _config(tmp: Path, **sections) -> Config:
    classifier = dict(max_seq_length=12, train_batch_size=2, unlabeled_batch_size=2,
                      max_steps=2, temperature=3.0, repetitions=1)
    classifier.update(sections.pop("classifier", {}))
    model_name = sections.pop("model_name", "encoder-ckpt")
    return Config(
        method=sections.pop("method", "pet"), output_dir=str(tmp), seed=sections.pop("seed", 7),
        compilation_cache="",
        task=TaskConfig(name="agnews", data_dir=str(tmp), eval_set="test"),
        model=ModelConfig(name=model_name),
        pet=PetConfig(reduction=sections.pop("reduction", "wmean")),
        no_distillation=sections.pop("no_distillation", False),
        classifier=ClassifierConfig(**classifier),
        mesh=MeshConfig(data=sections.pop("data", 1)),
        eval=EvalConfig(batch_size=sections.pop("eval_batch", 4)),
        logging=LoggingConfig(progress=False),
        output=OutputConfig(save_models=sections.pop("save_models", "none")),
    )


class MeanPoolClassifier:
    """logits = mean over attended tokens of encoder.emb[ids] (+ type emb) @ classifier.w."""

    def apply(self, variables, input_ids, attention_mask, token_type_ids=None,
              deterministic=True, rngs=None):
        p = variables["params"]
        h_BxSxD = p["encoder"]["emb"][input_ids] + p["encoder"]["types"][token_type_ids]
        m_BxSx1 = attention_mask[..., None].astype(jnp.float32)
        pooled_BxD = (h_BxSxD * m_BxSx1).sum(1) / m_BxSx1.sum(1)
        return pooled_BxD @ p["classifier"]["w"]


def _fake_params(vocab: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"encoder": {"emb": rng.normal(size=(vocab, D)).astype(np.float32),
                        "types": rng.normal(size=(2, D)).astype(np.float32)},
            "classifier": {"w": rng.normal(size=(D, len(LABELS))).astype(np.float32)}}


def _np_logits(params: dict, arrays: dict) -> np.ndarray:
    """MeanPoolClassifier in float64 numpy."""
    emb = np.asarray(params["encoder"]["emb"], np.float64)
    types = np.asarray(params["encoder"]["types"], np.float64)
    h = emb[arrays["input_ids"]] + types[arrays["token_type_ids"]]
    m = np.asarray(arrays["attention_mask"], np.float64)[..., None]
    return ((h * m).sum(1) / m.sum(1)) @ np.asarray(params["classifier"]["w"], np.float64)


def _np_encode(tokenizer, examples: list, seq: int) -> dict:
    """The classifier inputs as the Hugging Face tokenizer itself pads a (pair of) text(s)."""
    rows = [tokenizer(e.text_a, e.text_b, padding="max_length", max_length=seq)
            for e in examples]
    return {k: np.asarray([r[k] for r in rows]) for k in MODEL_INPUTS}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_distill_loss(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """PET's distillation loss: KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean."""
    log_q, log_p = _log_softmax(teacher / temperature), _log_softmax(student / temperature)
    return float((np.exp(log_q) * (log_q - log_p)).sum(-1).mean() * temperature**2)


def _np_accuracy(logits: np.ndarray, examples: list) -> float:
    gold = np.asarray([LABELS.index(e.label) for e in examples])
    return float(np.mean(np.argmax(logits, -1) == gold))


class FakeLoader:
    """Stands in for the checkpoint loader: records each call, returns the mean-pool model."""

    def __init__(self, tokenizer, seed: int = 0):
        self.calls: list[tuple] = []
        self.lm = SimpleNamespace(module=MeanPoolClassifier(), tokenizer=tokenizer,
                                  params=_fake_params(len(tokenizer), seed), config=None)

    def __call__(self, config, head, num_labels=None, name=None):
        self.calls.append((config, head, num_labels, name))
        return self.lm


class FakeTrain:
    """Stands in for the fit loop: records its arguments, returns params moved by +0.5 * step."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, config, settings, loss_fn, params, groups, mesh, folder, seed):
        self.calls.append((config, settings, loss_fn, params, groups, mesh, folder, seed))
        moved = jax.tree.map(lambda x: np.asarray(x) + 0.25 * (len(self.calls) + seed % 3),
                             params)
        return moved, 1.25 + len(self.calls)


@pytest.fixture
def fakes(monkeypatch, tokenizer):
    loader, train, saved = FakeLoader(tokenizer), FakeTrain(), []
    monkeypatch.setattr("jaxpet.pipelines.distill.load_model", loader)
    monkeypatch.setattr("jaxpet.pipelines.distill.train", train)
    monkeypatch.setattr("jaxpet.pipelines.model_saving.save_classifier",
                        lambda *args, **kwargs: saved.append((args, kwargs)))
    return SimpleNamespace(loader=loader, train=train, saved=saved)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- name / needs / check


def test_classifier_model_name_is_classifier_model_else_the_pet_model(tmp_path):
    config = _config(tmp_path, model_name="pet-ckpt")
    assert distill.classifier_model_name(config) == "pet-ckpt"
    config.classifier.model = ""
    assert distill.classifier_model_name(config) == "pet-ckpt"
    config.classifier.model = "cls-ckpt"
    assert distill.classifier_model_name(config) == "cls-ckpt"


@pytest.mark.parametrize("method", ["pet", "ipet", "sequence_classifier", "mlm_pretrain",
                                    "evaluate"])
@pytest.mark.parametrize("no_distillation", [False, True])
@pytest.mark.parametrize("baseline", [False, True])
def test_needs_classifier_follows_the_method_distillation_and_baseline(
        tmp_path, method, no_distillation, baseline):
    config = _config(tmp_path, method=method, no_distillation=no_distillation)
    config.classifier.baseline = baseline
    # PET distils unless told not to; the baseline adds one; the supervised method is one
    expected = method == "sequence_classifier" or (
        method in ("pet", "ipet") and (not no_distillation or baseline))
    assert distill.needs_classifier(config) is expected


def _checkpoint(folder: Path, model_type: str) -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(folder)


def test_check_classifier_model_refuses_a_t5_classifier_naming_its_key(tmp_path):
    t5 = _checkpoint(tmp_path / "t5", "t5")
    config = _config(tmp_path, model_name=t5)
    expected = (
        f"the sequence classifier (distilled model / baseline) would be {t5!r} from model.name "
        "(classifier.model is empty), a T5 checkpoint; T5 is no sequence classifier here. Set "
        "classifier.model to an encoder checkpoint (BERT, RoBERTa, XLM-R, ALBERT; e.g. "
        "classifier.model=roberta-base), or no_distillation=true to report the PET ensemble")
    with pytest.raises(ConfigError, match=f"^{_escape(expected)}$"):
        distill.check_classifier_model(config)
    config = _config(tmp_path, model_name=_checkpoint(tmp_path / "bert", "bert"))
    config.classifier.model = t5
    with pytest.raises(ConfigError, match=_escape(f"would be {t5!r} from classifier.model, a T5")):
        distill.check_classifier_model(config)
    # an encoder as the classifier passes (whatever model.name is)
    config = _config(tmp_path, model_name=t5)
    config.classifier.model = str(tmp_path / "bert")
    assert distill.check_classifier_model(config) is None
    assert distill.check_classifier_model(_config(tmp_path, model_name=str(tmp_path / "bert"))) \
        is None


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_check_classifier_model_prefixes_loader_errors_with_the_key(tmp_path):
    missing = str(tmp_path / "nowhere")
    config = _config(tmp_path, model_name=missing)
    with pytest.raises(FileNotFoundError,
                       match=f"^{_escape(f'model.name (classifier.model is empty): no checkpoint folder at {missing}')}$"  # noqa: E501
                       ) as info:
        distill.check_classifier_model(config)
    assert type(info.value) is FileNotFoundError and info.value.__suppress_context__
    config.classifier.model = _checkpoint(tmp_path / "gpt", "gpt2")
    with pytest.raises(ValueError, match=r"^classifier\.model: .*config\.json: unsupported "
                                         r"model_type 'gpt2'") as info:
        distill.check_classifier_model(config)
    assert type(info.value) is ValueError


# ---------------------------------------------------------------- encoding and the model


def test_encode_classifier_inputs_are_the_tokenizers_padded_pairs(tokenizer):
    examples = _examples("x", 5, 4, False, pairs=True)
    lm = SimpleNamespace(tokenizer=tokenizer)
    arrays = distill.encode_classifier_inputs(lm, examples, 14)
    expected = _np_encode(tokenizer, examples, 14)
    assert sorted(arrays) == sorted(MODEL_INPUTS)
    for key in MODEL_INPUTS:
        np.testing.assert_array_equal(arrays[key], expected[key], err_msg=key)


def test_classifier_model_loads_the_classifier_head_and_the_warmed_up_encoder(
        tmp_path, fakes, capsys):
    config = _config(tmp_path, model_name="pet-ckpt")
    lm, params = distill.classifier_model(config, 4)
    assert fakes.loader.calls == [(config, "classifier", 4, "pet-ckpt")]
    assert lm is fakes.loader.lm and params is lm.params
    warm = {"emb": np.zeros((3, D))}
    lm, params = distill.classifier_model(config, 5, encoder_params=warm)
    assert fakes.loader.calls[-1] == (config, "classifier", 5, "pet-ckpt")
    assert params["encoder"] is warm and params["classifier"] is lm.params["classifier"]
    assert set(params) == set(lm.params)
    assert capsys.readouterr().out == ""
    # another checkpoint as classifier.model starts from its own weights, and says so
    config.classifier.model = "cls-ckpt"
    lm, params = distill.classifier_model(config, 4, encoder_params=warm)
    assert fakes.loader.calls[-1] == (config, "classifier", 4, "cls-ckpt")
    assert params is lm.params
    assert capsys.readouterr().out == (
        "classifier.model 'cls-ckpt' is not model.name: the classifier starts from its own "
        "weights, not from the MLM warm-up's encoder\n")


def test_fit_classifier_hands_the_classifier_settings_to_the_fit_loop(tmp_path, fakes, capsys):
    config = _config(tmp_path)
    params, groups, mesh, folder = {"w": np.ones(2)}, {"": ({}, 2, 5)}, object(), tmp_path / "f"
    loss_fn = object()
    trained, seconds = distill.fit_classifier(config, loss_fn, params, groups, mesh, folder, 5)
    assert len(fakes.train.calls) == 1
    call = fakes.train.calls[0]
    assert call[0] is config and call[1] is config.classifier and call[2] is loss_fn
    assert call[3] is params and call[4] is groups and call[5] is mesh
    assert call[6] == folder and call[7] == 5
    np.testing.assert_array_equal(trained["w"], np.ones(2) + 0.25 * (1 + 5 % 3))
    assert seconds == 2.25
    # max_steps 0: nothing trains, the params come back as they are
    config.classifier.max_steps = 0
    capsys.readouterr()
    trained, seconds = distill.fit_classifier(config, loss_fn, params, groups, mesh, folder, 5)
    assert trained is params and seconds == 0.0 and isinstance(seconds, float)
    assert len(fakes.train.calls) == 1
    assert capsys.readouterr().out == (
        "f: classifier.max_steps is 0, evaluating the classifier untrained\n")


# ---------------------------------------------------------------- the ensemble merge


def _members(tmp_path: Path, n_eval: int, n_unlabeled: int | None, width: int = 4,
             skip_unlabeled: str | None = None) -> tuple[Path, dict, dict]:
    """Three saved members (inserted out of name order) with distinct zero-shot weights."""
    rng = np.random.default_rng(11)
    member_dir = tmp_path / "members"
    members, saved = {}, {}
    for name, weight in (("p1-s0", 0.75), ("p0-s1", 0.25), ("p0-s0", 0.5)):
        (member_dir / name).mkdir(parents=True)
        eval_ = rng.normal(size=(n_eval, width)).astype(np.float32)
        np.save(member_dir / name / "eval_logits.npy", eval_)
        saved[name] = {"eval": eval_.astype(np.float64)}
        if n_unlabeled is not None and name != skip_unlabeled:
            unl = rng.normal(size=(n_unlabeled, width)).astype(np.float32)
            np.save(member_dir / name / "unlabeled_logits.npy", unl)
            saved[name]["unlabeled"] = unl.astype(np.float64)
        members[name] = {"train_set_before_training": weight}
    return member_dir, members, saved


def _np_merge(saved: dict, members: dict, key: str, reduction: str) -> np.ndarray:
    """PET's merge: the plain mean, or the mean weighted by zero-shot train accuracy."""
    logits = np.stack([saved[n][key] for n in members])
    weights = np.asarray([members[n]["train_set_before_training"] for n in members])
    if reduction == "mean":
        return logits.mean(0)
    return (logits * weights[:, None, None]).sum(0) / weights.sum()


@pytest.mark.parametrize("reduction", ["wmean", "mean"])
def test_merge_members_writes_pets_merged_scores_predictions_and_results(tmp_path, reduction):
    data = _data()
    member_dir, members, saved = _members(tmp_path, len(data.eval), 6)
    config = _config(tmp_path, reduction=reduction)
    out = tmp_path / "ensemble"
    results = distill.merge_members(config, data, member_dir, members, out)
    eval_ = _np_merge(saved, members, "eval", reduction)
    unlabeled = _np_merge(saved, members, "unlabeled", reduction)
    for file, expected in (("eval_logits.npy", eval_), ("unlabeled_logits.npy", unlabeled)):
        written = np.load(out / file)
        assert written.dtype == np.float32, file
        # float32 storage of float64 sums: 1e-6 catches any other weighting of the members
        np.testing.assert_allclose(written, expected, rtol=1e-6, atol=1e-6, err_msg=file)
    predictions = _read_jsonl(out / "predictions.jsonl")
    assert [p["guid"] for p in predictions] == [e.guid for e in data.eval]
    assert [p["label"] for p in predictions] == [LABELS[i] for i in eval_.argmax(-1)]
    assert [p["gold"] for p in predictions] == [e.label for e in data.eval]
    np.testing.assert_allclose([p["logits"] for p in predictions], eval_, rtol=1e-6, atol=1e-6)
    expected = {"members": ["p0-s0", "p0-s1", "p1-s0"], "reduction": reduction,
                "weights": [0.5, 0.25, 0.75], "eval_set": "test",
                "metrics": {"acc": _np_accuracy(eval_, data.eval)}}
    assert results == expected
    assert json.loads((out / "results.json").read_text()) == expected


def test_merge_members_without_every_members_unlabeled_scores_writes_none(tmp_path):
    data = _data()
    member_dir, members, _ = _members(tmp_path, len(data.eval), 6, skip_unlabeled="p0-s1")
    out = tmp_path / "ensemble"
    distill.merge_members(_config(tmp_path), data, member_dir, members, out)
    assert (out / "eval_logits.npy").exists() and not (out / "unlabeled_logits.npy").exists()


def test_merge_members_names_the_top_candidate_when_candidates_are_not_labels(tmp_path):
    # ReCoRD: each row scores the example's own candidate entities, not the task's labels
    candidates = [["Paris", "France", "London"], ["Kim", "Tom", "Mary"], ["a", "b", "c"],
                  ["x", "y", "z"]]
    answers = [["France"], ["Tom", "Kim"], [], ["z"]]
    data = TaskData("record", ["0", "1"], [], [
        Example(guid=f"r{i}", text_a="t", meta={"candidates": c, "answers": a})
        for i, (c, a) in enumerate(zip(candidates, answers, strict=True))], [])
    member_dir, members, saved = _members(tmp_path, 4, None, width=3)
    out = tmp_path / "ensemble"
    results = distill.merge_members(_config(tmp_path), data, member_dir, members, out)
    merged = _np_merge(saved, members, "eval", "wmean")
    written = np.load(out / "eval_logits.npy")
    assert written.dtype == np.float32
    # float32 storage of the float64 weighted mean
    np.testing.assert_allclose(written, merged, rtol=1e-6, atol=1e-6)
    predictions = _read_jsonl(out / "predictions.jsonl")
    top = merged.argmax(-1)
    assert [p["guid"] for p in predictions] == ["r0", "r1", "r2", "r3"]
    assert [p["candidate"] for p in predictions] == [c[i] for c, i in zip(candidates, top,
                                                                          strict=True)]
    assert [p["gold"] for p in predictions] == answers
    np.testing.assert_allclose([p["logits"] for p in predictions], merged, rtol=1e-6, atol=1e-6)
    accuracy = np.mean([c[i] in a for c, i, a in zip(candidates, top, answers, strict=True)])
    assert results["metrics"] == {"acc": pytest.approx(accuracy)}
    assert not (out / "unlabeled_logits.npy").exists()


def test_merge_members_refuses_candidate_scores_of_another_eval_set(tmp_path):
    # members saved for 4 eval examples (an earlier run's eval set) must not be silently cut to 3
    data = TaskData("record", ["0", "1"], [], [
        Example(guid=f"r{i}", text_a="t", meta={"candidates": ["a", "b", "c"], "answers": ["a"]})
        for i in range(3)], [])
    member_dir, members, _ = _members(tmp_path, 4, None, width=3)
    with pytest.raises(ValueError, match=r"zip\(\) argument 2 is longer than argument 1"):
        distill.merge_members(_config(tmp_path), data, member_dir, members, tmp_path / "e")


# ---------------------------------------------------------------- distillation wiring


def test_distill_hands_the_fit_the_unlabeled_set_with_soft_targets_at_temperature_t(
        tmp_path, fakes, tokenizer, capsys):
    data = _data()
    config = _config(tmp_path)
    mesh = build_mesh(config)
    teacher = np.random.default_rng(5).normal(size=(6, 4)) * 3
    results = distill.distill(config, data, mesh, tmp_path, teacher)
    folder = tmp_path / "distilled"
    (call,) = fakes.train.calls
    _, settings, loss_fn, params, groups, fit_mesh, fit_folder, seed = call
    assert settings is config.classifier and fit_folder == folder and seed == 7
    assert fit_mesh is mesh
    assert fakes.loader.calls == [(config, "classifier", 4, "encoder-ckpt")]
    assert params is fakes.loader.lm.params
    # the fit sees the unlabeled set, its batch size and the run's seed, with the raw teacher
    assert list(groups) == [""]
    arrays, batch_size, group_seed = groups[""]
    assert batch_size == 2 and group_seed == 7
    expected = _np_encode(tokenizer, data.unlabeled, 12)
    assert sorted(arrays) == sorted([*MODEL_INPUTS, "logits"])
    for key in MODEL_INPUTS:
        np.testing.assert_array_equal(arrays[key], expected[key], err_msg=key)
    assert arrays["logits"].dtype == np.float32
    np.testing.assert_array_equal(arrays["logits"], teacher.astype(np.float32))
    # the loss is KL(softmax(teacher / T) || softmax(student / T)) * T^2 at classifier.temperature
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    loss, _ = loss_fn(params, batch, None)
    reference = _np_distill_loss(_np_logits(params, expected), teacher, 3.0)
    # float32 model vs float64 numpy: 1e-5 catches another temperature or a missing T^2
    assert float(loss) == pytest.approx(reference, rel=1e-5)
    assert reference != pytest.approx(_np_distill_loss(_np_logits(params, expected), teacher,
                                                       2.0), rel=1e-3)
    # scores on the unlabeled set before and after, and on the eval set after training
    trained = jax.tree.map(lambda x: np.asarray(x) + 0.25 * (1 + 7 % 3), params)
    before = np.load(folder / "unlabeled_logits_before_training.npy")
    after = np.load(folder / "unlabeled_logits.npy")
    eval_logits = np.load(folder / "eval_logits.npy")
    # float32 forward vs float64 numpy
    np.testing.assert_allclose(before, _np_logits(params, expected), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after, _np_logits(trained, expected), rtol=1e-5, atol=1e-5)
    eval_expected = _np_logits(trained, _np_encode(tokenizer, data.eval, 12))
    np.testing.assert_allclose(eval_logits, eval_expected, rtol=1e-5, atol=1e-5)
    predictions = _read_jsonl(folder / "predictions.jsonl")
    assert [p["label"] for p in predictions] == [LABELS[i] for i in eval_expected.argmax(-1)]
    expected_results = {"seed": 7, "temperature": 3.0, "eval_set": "test",
                        "metrics": {"acc": _np_accuracy(eval_expected, data.eval)},
                        "train_time_s": 2.25, "num_unlabeled": 6}
    assert results == expected_results
    assert json.loads((folder / "results.json").read_text()) == expected_results
    # the distilled classifier is the run's final model, saved with its trained params
    ((saved_args, saved_kwargs),) = fakes.saved
    assert saved_args[:2] == (config, fakes.loader.lm) and saved_args[3:] == (LABELS, folder)
    assert saved_kwargs == {"final": True}
    jax.tree.map(np.testing.assert_array_equal, saved_args[2], trained)
    assert capsys.readouterr().out == (
        "distilled: distilling the ensemble into a sequence classifier on 6 unlabeled "
        "examples (T = 3.0)\n")


def test_distill_starts_from_the_warmed_up_encoder_and_saves_the_final_model(tmp_path, fakes):
    data = _data()
    config = _config(tmp_path, save_models="final")
    warm = jax.tree.map(lambda x: x * 0 + 0.5, fakes.loader.lm.params["encoder"])
    teacher = np.random.default_rng(6).normal(size=(6, 4))
    results = distill.distill(config, data, build_mesh(config), tmp_path, teacher,
                              encoder_params=warm)
    params = fakes.train.calls[0][3]
    assert params["encoder"] is warm and params["classifier"] is fakes.loader.lm.params[
        "classifier"]
    # the unlabeled scores before training are those of the warmed-up encoder
    expected = _np_encode(fakes.loader.lm.tokenizer, data.unlabeled, 12)
    before = np.load(tmp_path / "distilled" / "unlabeled_logits_before_training.npy")
    # float32 forward vs float64 numpy
    np.testing.assert_allclose(before, _np_logits(params, expected), rtol=1e-5, atol=1e-5)
    assert results["model_dir"] == str(tmp_path / "distilled" / "model")
    assert json.loads((tmp_path / "distilled" / "results.json").read_text())["model_dir"] == \
        str(tmp_path / "distilled" / "model")
    assert len(fakes.saved) == 1 and fakes.saved[0][1] == {"final": True}


def test_distill_reuses_a_finished_folder(tmp_path, fakes, capsys):
    folder = tmp_path / "distilled"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"metrics": {"acc": 0.5}, "seed": 1}))
    config = _config(tmp_path)
    results = distill.distill(config, _data(), build_mesh(config), tmp_path, np.zeros((6, 4)))
    assert results == {"metrics": {"acc": 0.5}, "seed": 1}
    assert fakes.train.calls == [] and fakes.loader.calls == []
    assert capsys.readouterr().out == "distilled: results.json exists, reusing it\n"
    # a reused final model that output.save_models wants but its run did not save
    config = _config(tmp_path, save_models="final")
    with pytest.raises(ConfigError, match=_escape(
            f"{folder}: results.json exists but {folder / 'model'} was not saved")):
        distill.distill(config, _data(), build_mesh(config), tmp_path, np.zeros((6, 4)))


def test_distill_without_unlabeled_examples_says_what_to_set(tmp_path, fakes):
    config = _config(tmp_path)
    with pytest.raises(ValueError, match="^" + _escape(
            "distillation needs unlabeled examples (task.unlabeled_examples); set "
            "no_distillation=true to report the ensemble instead") + "$"):
        distill.distill(config, _data(0), build_mesh(config), tmp_path, np.zeros((0, 4)))
    assert fakes.train.calls == [] and not (tmp_path / "distilled").exists()


@pytest.mark.parametrize(("key", "sizes"), [
    ("classifier.unlabeled_batch_size", dict(classifier={"unlabeled_batch_size": 3})),
    ("eval.batch_size", dict(eval_batch=3)),
])
def test_distill_checks_its_batch_sizes_against_the_mesh(tmp_path, fakes, key, sizes):
    config = _config(tmp_path, data=2, **sizes)
    with pytest.raises(ValueError, match=_escape(f"config key '{key}' = 3 is not a multiple of "
                                                 "the 2 batch shards")):
        distill.distill(config, _data(), build_mesh(config), tmp_path, np.zeros((6, 4)))
    assert fakes.train.calls == []


# ---------------------------------------------------------------- finish_ensemble


def test_finish_ensemble_merges_then_distils_the_merged_unlabeled_scores(
        tmp_path, monkeypatch):
    data = _data()
    member_dir, members, saved = _members(tmp_path, len(data.eval), 6)
    config, mesh, encoder = _config(tmp_path), object(), object()
    calls = []
    monkeypatch.setattr(distill, "distill", lambda *args: calls.append(args) or {"d": 1})
    results = distill.finish_ensemble(config, data, mesh, tmp_path, member_dir, members,
                                      encoder)
    assert set(results) == {"ensemble", "distilled"} and results["distilled"] == {"d": 1}
    assert results["ensemble"]["members"] == ["p0-s0", "p0-s1", "p1-s0"]
    assert (tmp_path / "ensemble" / "results.json").exists()
    ((c_config, c_data, c_mesh, c_out, teacher, c_encoder),) = calls
    assert (c_config, c_data, c_mesh, c_out, c_encoder) == (config, data, mesh, tmp_path, encoder)
    # the teacher is PET's wmean merge of the members' unlabeled scores (stored float32)
    np.testing.assert_allclose(teacher, _np_merge(saved, members, "unlabeled", "wmean"),
                               rtol=1e-6, atol=1e-6)
    # no_distillation reports the merged ensemble only
    config.no_distillation = True
    calls.clear()
    results = distill.finish_ensemble(config, data, mesh, tmp_path / "nd", member_dir, members)
    assert set(results) == {"ensemble"} and calls == []
    assert (tmp_path / "nd" / "ensemble" / "eval_logits.npy").exists()


def test_finish_ensemble_without_member_unlabeled_scores_says_what_to_set(tmp_path, monkeypatch):
    data = _data()
    member_dir, members, _ = _members(tmp_path, len(data.eval), None)
    monkeypatch.setattr(distill, "distill", lambda *args: pytest.fail("distilled"))
    with pytest.raises(ValueError, match="^" + _escape(
            "distillation needs the members' unlabeled logits (task.unlabeled_examples > 0); "
            "or set no_distillation=true") + "$"):
        distill.finish_ensemble(_config(tmp_path), data, None, tmp_path, member_dir, members)


def test_finish_ensemble_refuses_scores_of_another_row_count(tmp_path, monkeypatch):
    # multi-token members score candidate layouts: rows that are not the unlabeled examples
    data = _data(n_unlabeled=4)
    member_dir, members, _ = _members(tmp_path, len(data.eval), 6)
    monkeypatch.setattr(distill, "distill", lambda *args: pytest.fail("distilled"))
    with pytest.raises(ValueError, match="^" + _escape(
            "the ensemble scored 6 unlabeled rows for 4 unlabeled examples (multi-token "
            "patterns score candidate layouts); set no_distillation=true for this task") + "$"):
        distill.finish_ensemble(_config(tmp_path), data, None, tmp_path, member_dir, members)


# ---------------------------------------------------------------- the supervised classifier


def test_run_classifier_trains_one_classifier_per_repetition_on_the_labeled_set(
        tmp_path, fakes, tokenizer, capsys):
    data = _data()
    config = _config(tmp_path, method="sequence_classifier", save_models="final",
                     classifier={"repetitions": 2})
    mesh = build_mesh(config)
    results = distill.run_classifier(config, data, mesh, tmp_path)
    assert fakes.loader.calls == [(config, "classifier", 4, "encoder-ckpt")]
    params = fakes.loader.lm.params
    expected = _np_encode(tokenizer, data.train, 12)
    gold = np.asarray([LABELS.index(e.label) for e in data.train])
    accuracies = []
    for repetition, call in enumerate(fakes.train.calls):
        name, seed = f"sc-s{repetition}", 7 + repetition
        _, settings, loss_fn, c_params, groups, c_mesh, folder, c_seed = call
        assert settings is config.classifier and c_params is params and c_mesh is mesh
        assert folder == tmp_path / name and c_seed == seed
        (arrays, batch_size, group_seed), = groups.values()
        assert list(groups) == [""] and batch_size == 2 and group_seed == seed
        assert sorted(arrays) == sorted([*MODEL_INPUTS, "labels"])
        for key in MODEL_INPUTS:
            np.testing.assert_array_equal(arrays[key], expected[key], err_msg=key)
        np.testing.assert_array_equal(arrays["labels"], gold)
        # the supervised loss: cross-entropy of the classifier's logits on the gold labels
        loss, _ = loss_fn(params, {k: jnp.asarray(v) for k, v in arrays.items()}, None)
        ce = -_log_softmax(_np_logits(params, expected))[np.arange(len(gold)), gold].mean()
        # float32 model vs float64 numpy
        assert float(loss) == pytest.approx(ce, rel=1e-5)
        trained = jax.tree.map(lambda x, s=seed, r=repetition: np.asarray(x) + 0.25 * (
            r + 1 + s % 3), params)
        eval_logits = np.load(folder / "eval_logits.npy")
        eval_expected = _np_logits(trained, _np_encode(tokenizer, data.eval, 12))
        # float32 forward vs float64 numpy
        np.testing.assert_allclose(eval_logits, eval_expected, rtol=1e-5, atol=1e-5)
        accuracies.append(_np_accuracy(eval_expected, data.eval))
        member = {"repetition": repetition, "seed": seed, "eval_set": "test",
                  "metrics": {"acc": accuracies[-1]}, "train_time_s": 2.25 + repetition,
                  "num_train": 6, "num_eval": 5}
        assert results["members"][name] == member
        assert json.loads((folder / "results.json").read_text()) == member
        # the supervised classifiers are the final models of method sequence_classifier
        saved_args, saved_kwargs = fakes.saved[repetition]
        assert saved_args[:2] == (config, fakes.loader.lm)
        assert saved_args[3:] == (LABELS, folder, True) and saved_kwargs == {}
        jax.tree.map(np.testing.assert_array_equal, saved_args[2], trained)
    assert len(fakes.train.calls) == 2
    assert set(results) == {"members", "summary"}
    assert results["summary"] == {"acc": {"mean": pytest.approx(np.mean(accuracies)),
                                          "std": pytest.approx(np.std(accuracies)), "runs": 2}}
    assert capsys.readouterr().out == (
        "sc-s0: training the sequence classifier, seed 7\n"
        "sc-s1: training the sequence classifier, seed 8\n")


def test_run_classifier_reuses_finished_repetitions_and_is_no_final_model_of_pet(
        tmp_path, fakes, capsys):
    data = _data()
    # method pet: the baseline is not a final model, so save_models "final" skips it
    config = _config(tmp_path, save_models="final", classifier={"repetitions": 2})
    (tmp_path / "sc-s0").mkdir()
    done = {"repetition": 0, "metrics": {"acc": 0.25}}
    (tmp_path / "sc-s0" / "results.json").write_text(json.dumps(done))
    warm = jax.tree.map(lambda x: x * 0 - 0.5, fakes.loader.lm.params["encoder"])
    results = distill.run_classifier(config, data, build_mesh(config), tmp_path, warm)
    assert results["members"]["sc-s0"] == done
    (call,) = fakes.train.calls
    assert call[6] == tmp_path / "sc-s1" and call[7] == 8
    assert call[3]["encoder"] is warm
    assert [args[-1] for args, _ in fakes.saved] == [False]
    acc = results["members"]["sc-s1"]["metrics"]["acc"]
    assert results["summary"]["acc"] == {"mean": pytest.approx((0.25 + acc) / 2),
                                         "std": pytest.approx(abs(0.25 - acc) / 2), "runs": 2}
    assert capsys.readouterr().out == (
        "sc-s0: results.json exists, reusing it\n"
        "sc-s1: training the sequence classifier, seed 8\n")
    # the same folder reused as a final model (method sequence_classifier) needs its model
    config = _config(tmp_path, method="sequence_classifier", save_models="final")
    with pytest.raises(ConfigError, match=_escape(
            f"{tmp_path / 'sc-s0'}: results.json exists but")):
        distill.run_classifier(config, data, build_mesh(config), tmp_path)


@pytest.mark.parametrize(("key", "sizes"), [
    ("classifier.train_batch_size", dict(classifier={"train_batch_size": 3})),
    ("eval.batch_size", dict(eval_batch=3)),
])
def test_run_classifier_checks_its_batch_sizes_against_the_mesh(tmp_path, fakes, key, sizes):
    config = _config(tmp_path, data=2, **sizes)
    with pytest.raises(ValueError, match=_escape(f"config key '{key}' = 3 is not a multiple of "
                                                 "the 2 batch shards")):
        distill.run_classifier(config, _data(), build_mesh(config), tmp_path)
    assert fakes.train.calls == []


# ---------------------------------------------------------------- a real distillation


@pytest.fixture(scope="module")
def bert_checkpoint(tmp_path_factory) -> Path:
    """A random tiny BERT written by `jaxpet init-model` (~15 s), kept next to pytest's numbered
    temp folders so that later sessions find it."""
    import shutil

    from jaxpet.init_model import init_model

    folder = tmp_path_factory.getbasetemp().parent / "jaxpet-distill-wiring-bert"
    if not (folder / "config.json").exists():
        staging = tmp_path_factory.mktemp("bert")
        init_model("bert", staging / "bert")
        try:
            os.replace(staging / "bert", folder)
        except OSError:  # another session wrote it first
            shutil.rmtree(staging / "bert", ignore_errors=True)
    return folder


@pytest.mark.slow  # ~30 s on the shared 2-core VM, most of it compiling the train step
# Under mutmut (one process per mutant) it would cost ~30-100 s per mutant of the distillation
# path, over an hour in all; the fake-fit tests above check that wiring, so the mutation score
# counts only them (a lower bound) and this test runs in every ordinary pytest run.
@pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ, reason="too slow to rerun per mutant")
def test_two_real_steps_move_the_student_toward_the_teachers_soft_labels(
        tmp_path, bert_checkpoint):
    checkpoint = bert_checkpoint
    data = _data(n_unlabeled=4)
    config = _config(tmp_path, model_name=str(checkpoint),
                     classifier={"learning_rate": 3e-2, "unlabeled_batch_size": 4,
                                 "temperature": 2.0})
    # a confident teacher that favours class 2 (an untrained tiny encoder gives nearly the same
    # features to every row, so two steps can only move all rows alike)
    teacher = np.random.default_rng(8).normal(size=(4, 4)) * 0.3
    teacher[:, 2] += 4.0
    results = distill.distill(config, data, build_mesh(config), tmp_path, teacher)
    folder = tmp_path / "distilled"
    before = np.load(folder / "unlabeled_logits_before_training.npy")
    after = np.load(folder / "unlabeled_logits.npy")
    assert before.shape == after.shape == (4, 4) and after.dtype == np.float32
    kl_before = _np_distill_loss(before, teacher, 2.0)
    kl_after = _np_distill_loss(after, teacher, 2.0)
    # two AdamW steps at lr 3e-2 on these 4 rows: the KL to the soft targets must drop clearly
    assert kl_after < 0.9 * kl_before, (kl_before, kl_after)
    # the fit ran classifier.max_steps updates
    assert _read_jsonl(folder / "metrics.jsonl")[-1]["step"] == 2
    eval_logits = np.load(folder / "eval_logits.npy")
    assert results["metrics"] == {"acc": pytest.approx(_np_accuracy(eval_logits, data.eval))}
    assert results["num_unlabeled"] == 4 and results["temperature"] == 2.0


def test_distillation_epochs_step_through_the_unlabeled_set_in_its_own_batches(tmp_path,
                                                                              monkeypatch):
    # PET replaces the distillation's train loader by the unlabeled loader before it counts the
    # steps, so num_train_epochs passes take ceil(N / unlabeled batch) steps each.
    from jaxpet.pipelines import member
    from jaxpet.runs import train_stage

    captured = {}

    def fake_fit(trainer, state, batch_fn, num_steps, **kwargs):
        captured["num_steps"] = num_steps
        return state

    class FakeTrainer:
        def __init__(self, *args, **kwargs):
            pass

        def init(self, params):
            return SimpleNamespace(params=params)

    monkeypatch.setattr(train_stage, "fit", fake_fit)
    monkeypatch.setattr(train_stage, "Trainer", FakeTrainer)
    config = _config(tmp_path)
    settings = ClassifierConfig(max_steps=-1, num_train_epochs=2, train_batch_size=2,
                                unlabeled_batch_size=4)
    rows = {"input_ids": np.zeros((10, 3), np.int32), "attention_mask": np.ones((10, 3), np.int32)}
    mesh = build_mesh(config)
    member.train(config, settings, None, {}, {"": (rows, settings.unlabeled_batch_size, 0)}, mesh,
              tmp_path / "distilled", seed=0)
    assert captured["num_steps"] == 2 * 3  # 2 epochs of ceil(10 / 4) steps, not ceil(10 / 2)
