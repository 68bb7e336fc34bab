"""End to end through train.py: zero-shot PET/iPET, bf16, TensorBoard, x-stance, priming."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from test_train_cli import build_workspace

from jaxpet.cli import train_main
from jaxpet.runs.outputs import read_jsonl

AGNEWS_WORDS = ["world", "sports", "business", "tech"]  # PET's verbalizer, lower-cased by BERT


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("features_e2e"))


def run_train(workspace: dict, out: Path, *overrides: str) -> dict:
    """train.py's entry on the workspace config; returns the run's results.json."""
    status = train_main(["--config", str(workspace["config"]), f"output_dir={out}",
                         "logging.progress=false", *overrides])
    assert status == 0
    return json.loads((out / "results.json").read_text())


def torch_mask_logits(model_dir: Path, arrays: dict) -> np.ndarray:
    """[N, V] vocabulary logits at each row's (single) mask, from transformers' PyTorch BERT."""
    import torch
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        logits_NxSxV = model(input_ids=torch.as_tensor(np.asarray(arrays["input_ids"])).long(),
                             attention_mask=torch.as_tensor(
                                 np.asarray(arrays["attention_mask"])).long(),
                             token_type_ids=torch.as_tensor(
                                 np.asarray(arrays["token_type_ids"])).long()).logits.numpy()
    positions_N = np.asarray(arrays["mask_positions"])[:, 0]
    return logits_NxSxV[np.arange(len(positions_N)), positions_N]


def word_ids(model_dir: Path, words: list[str]) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tokenizer.convert_tokens_to_ids(words)
    assert tokenizer.unk_token_id not in ids, words
    return ids


def encoded_eval_set(workspace: dict, task: str, pattern_id: int, seq: int) -> tuple[list, dict]:
    """The eval examples and their pattern encoding (the encoder is tested on its own in
    test_prompts_encoding.py; here it only feeds the reference model)."""
    from transformers import AutoTokenizer

    from jaxpet.data.tasks import load_examples
    from jaxpet.prompts import get_pvp

    examples = load_examples(task, workspace["data"], "dev")
    tokenizer = AutoTokenizer.from_pretrained(str(workspace["model"]))
    return examples, get_pvp(task, pattern_id).encode(examples, tokenizer, seq)


# ---------------------------------------------------------------- zero labeled examples


def test_pet_with_zero_labeled_examples_evaluates_untrained_members(workspace):
    out = workspace["root"] / "pet-zero"
    top = run_train(workspace, out, "task.train_examples=0", "no_distillation=true",
                    "pet.reduction=mean")
    assert top["num_train"] == 0 and set(top["members"]) == {"p0-s0", "p1-s0"}
    examples, encoded = encoded_eval_set(workspace, "agnews", 0, 32)
    reference_NxV = torch_mask_logits(workspace["model"], encoded)
    expected_NxL = reference_NxV[:, word_ids(workspace["model"], AGNEWS_WORDS)]
    member = out / "p0-s0"
    results = json.loads((member / "results.json").read_text())
    # zero-shot members: nothing to train on, so no optimizer step ran and nothing was learned
    assert results["num_train"] == 0 and results["train_time_s"] == 0.0
    assert not (member / "metrics.jsonl").exists()
    # what the member reports is the pretrained model's cloze scores; 1e-4 is fp32 parity
    # between the Flax and PyTorch BERT, far below what any training step (lr 1e-3) moves
    np.testing.assert_allclose(np.load(member / "eval_logits.npy"), expected_NxL,
                               rtol=1e-4, atol=1e-4)
    gold = np.array([int(e.label) - 1 for e in examples])
    assert results["metrics"]["acc"] == pytest.approx(np.mean(expected_NxL.argmax(-1) == gold))
    # with no labeled set the ensemble is the plain mean of the members' scores
    members_MxNxL = np.stack([np.load(out / m / "eval_logits.npy") for m in ("p0-s0", "p1-s0")])
    np.testing.assert_allclose(np.load(out / "ensemble" / "eval_logits.npy"),
                               members_MxNxL.mean(0), rtol=1e-6)  # float32 rounding only


def _softmax(x_NxL: np.ndarray) -> np.ndarray:
    e = np.exp(x_NxL - x_NxL.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_ipet_with_zero_labeled_examples_labels_g0_by_n_most_likely(workspace):
    out = workspace["root"] / "ipet-zero"
    n_most_likely = 5
    top = run_train(workspace, out, "method=ipet", "task.train_examples=0",
                    "no_distillation=true", "pet.reduction=mean", "ipet.generations=2",
                    f"ipet.n_most_likely={n_most_likely}", "pet.lm_training=false",
                    "pet.max_steps=2", "eval.zero_shot=false")
    g0, g1 = top["generations"]["g0"], top["generations"]["g1"]
    assert all(m["num_train"] == 0 for m in g0["members"].values())
    assert not (out / "g0" / "p0-s0" / "metrics.jsonl").exists()
    # PET's zero-shot growth: |T| counts as 10 / d, so g0 adds int(10/5 * 5) = 10 examples,
    # split evenly over the 4 labels (larger shares first)
    quotas = [3, 3, 2, 2]
    names = ["p0-s0", "p1-s0"]
    for name in names:
        other = names[1 - names.index(name)]
        chosen = json.loads((out / "g0" / "next-gen" / f"{name}.json").read_text())
        label_ids = np.asarray(chosen["label_ids"])
        indices = np.asarray(chosen["unlabeled_indices"])
        assert np.bincount(label_ids, minlength=4).tolist() == quotas
        # with two members, the one other member labels the set (at least one model is
        # chosen); each label's examples are among that label's n most probable examples
        probs_NxL = _softmax(np.load(out / "g0" / other / "unlabeled_logits.npy"))
        for label in range(4):
            picked = indices[label_ids == label]
            top_n = np.argsort(-probs_NxL[:, label], kind="stable")[:n_most_likely]
            assert set(picked.tolist()) <= set(top_n.tolist()), (name, label)
            assert len(set(picked.tolist())) == len(picked)  # drawn without replacement
        member = g1["members"][name]
        assert member["num_train"] == 10
        log = read_jsonl(out / "g1" / name / "metrics.jsonl")
        assert [r["step"] for r in log] == [1, 2]  # g1 trains on the pseudo-labeled set


# ---------------------------------------------------------------- bf16 and TensorBoard


def read_event_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the TensorBoard event files under `folder`,
    read from the TFRecord framing (u64 length, u32 crc, payload, u32 crc) and the Event
    protobuf, without tensorboardX's writer code."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {folder}"
    for path in files:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            payload = data[offset + 12: offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


@pytest.fixture
def lowered_train_steps(monkeypatch):
    """The StableHLO text of every Trainer's compiled train step, as the run lowers it."""
    from jaxpet.engine.training import Trainer

    texts: list[str] = []
    original = Trainer.train_step

    def spy(self, state, batch, rng):
        result = original(self, state, batch, rng)
        if not getattr(self, "_spied", False):
            self._spied = True
            texts.append(self._train_step.lower(result[0], batch, rng).as_text())
        return result

    monkeypatch.setattr(Trainer, "train_step", spy)
    return texts


def _matmul_dtypes(stablehlo: str) -> set[str]:
    """Element types of the dot_general results in a StableHLO module."""
    import re

    return {m.group(1) for line in stablehlo.splitlines() if "dot_general" in line
            for m in [re.search(r"->\s*tensor<[0-9x]*(\w+)>", line)] if m}


@pytest.mark.slow  # two PET runs, ~75 s on 2 shared cores
def test_bf16_pet_training_runs_in_bf16_and_stays_close_to_fp32(workspace, lowered_train_steps):
    common = ["pet.pattern_ids=[0]", "no_distillation=true", "eval.zero_shot=false",
              "logging.tensorboard=true"]
    runs = {}
    for dtype in ("float32", "bfloat16"):
        out = workspace["root"] / f"pet-{dtype}"
        lowered_train_steps.clear()
        run_train(workspace, out, f"model.dtype={dtype}", *common)
        assert len(lowered_train_steps) == 1  # one PET member, one compiled step
        runs[dtype] = (out / "p0-s0", _matmul_dtypes(lowered_train_steps[0]))
    # bf16 really ran: the train step's matmuls (encoder, MLM head) compute in bf16, while the
    # fp32 run has none
    assert runs["bfloat16"][1] == {"bf16"} and runs["float32"][1] == {"f32"}
    fp32, bf16 = runs["float32"][0], runs["bfloat16"][0]
    loss_32 = [r["loss"] for r in read_jsonl(fp32 / "metrics.jsonl")]
    loss_16 = [r["loss"] for r in read_jsonl(bf16 / "metrics.jsonl")]
    # bf16 keeps 8 mantissa bits; the losses differ by 0.06% (measured). 1% is below the 5%
    # that the 3 steps lower the loss by, so it catches a bf16 step that does not learn (e.g.
    # updates rounded away without fp32 masters) or trains on other targets
    np.testing.assert_allclose(loss_16, loss_32, rtol=0.01)
    logits_32 = np.load(fp32 / "eval_logits.npy")
    logits_16 = np.load(bf16 / "eval_logits.npy")
    # label scores differ by 1.1% of their largest magnitude (measured): 5% allows the bf16
    # rounding of two layers but not a model scored with other weights or in another dtype
    scale = np.abs(logits_32).max()
    np.testing.assert_allclose(logits_16, logits_32, atol=0.05 * scale)
    assert logits_16.dtype == np.float32  # scores leave the model as fp32 whatever it computes in

    # TensorBoard: the event files hold the same scalars as metrics.jsonl, step by step
    for member in (fp32, bf16):
        scalars = read_event_scalars(member / "tensorboard")
        for record in read_jsonl(member / "metrics.jsonl"):
            for key in ("loss", "learning_rate", "grad_norm", "cloze", "mlm"):
                # event files store float32: 1e-6 relative is their rounding
                assert scalars[key][record["step"]] == pytest.approx(record[key], rel=1e-6)
        assert sorted(scalars["loss"]) == [1, 2, 3]


# ---------------------------------------------------------------- x-stance

STANCE_WORDS = {"FAVOR": ["support", "good", "agree", "fair"],
                "AGAINST": ["oppose", "bad", "reject", "unfair"]}
QUESTION_WORDS = ["should", "the", "state", "fund", "railway", "schools", "taxes", "lower", "?"]


def build_tiny_bert(folder: Path, words: list[str]) -> Path:
    """A tiny random BERT MLM checkpoint whose word-level vocabulary holds `words`."""
    import torch
    from tiny_models import tiny_hf_config
    from transformers import BertForMaskedLM, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_hf_config("bert", len(tokenizer), tokenizer)).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _stance_records(labels: list[str], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i, label in enumerate(labels):
        records.append({
            "id": 100 * seed + i, "label": label, "language": ["de", "fr"][i % 2],
            "question": " ".join(rng.choice(QUESTION_WORDS[:-1], 5)) + " ?",
            "comment": " ".join(rng.choice(STANCE_WORDS[label] + ["the", "state"], 6)) + " ."})
    return records


@pytest.mark.slow  # one PET run with its own model, ~40 s on 2 shared cores
def test_xstance_run_reports_macro_f1_of_its_predictions(tmp_path):
    from sklearn.metrics import f1_score

    words = [w for ws in STANCE_WORDS.values() for w in ws] + QUESTION_WORDS + ["yes", "no", "."]
    model = build_tiny_bert(tmp_path / "tiny-bert", words)
    data = tmp_path / "xstance"
    data.mkdir()
    for name, labels, seed in (("train.jsonl", ["FAVOR", "AGAINST"] * 4, 0),
                               # unbalanced, so that macro-F1 and accuracy differ in general
                               ("test.jsonl", ["FAVOR"] * 7 + ["AGAINST"] * 3, 1)):
        (data / name).write_text("".join(json.dumps(r) + "\n"
                                         for r in _stance_records(labels, seed)))
    out = tmp_path / "out"
    config = tmp_path / "xstance.yaml"
    config.write_text(f"""\
method: pet
output_dir: {out}
compilation_cache: ""
no_distillation: true
task: {{name: xstance, data_dir: {data}, train_examples: -1, unlabeled_examples: 0}}
model: {{name: {model}}}
pet: {{pattern_ids: [3], repetitions: 1, max_seq_length: 32, train_batch_size: 4,
      max_steps: 2, learning_rate: 1e-3}}
mesh: {{data: 1}}
eval: {{batch_size: 8, zero_shot: false}}
logging: {{progress: false}}
""")
    assert train_main(["--config", str(config)]) == 0
    member = json.loads((out / "p3-s0" / "results.json").read_text())
    assert member["num_train"] == 8 and member["num_eval"] == 10
    predictions = read_jsonl(out / "p3-s0" / "predictions.jsonl")
    logits_NxL = np.load(out / "p3-s0" / "eval_logits.npy")
    # columns follow the task's labels: FAVOR, AGAINST
    assert [p["label"] for p in predictions] == [["FAVOR", "AGAINST"][i]
                                                 for i in logits_NxL.argmax(-1)]
    gold = [p["gold"] for p in predictions]
    assert gold == ["FAVOR"] * 7 + ["AGAINST"] * 3
    predicted = [p["label"] for p in predictions]
    # PET's x-stance metric: macro-F1 over the two stances, as sklearn computes it
    expected = f1_score(gold, predicted, average="macro")
    assert member["metrics"]["f1-macro"] == pytest.approx(expected, abs=1e-12)  # same formula
    assert member["metrics"]["acc"] == pytest.approx(np.mean(np.array(gold) == predicted))
    top = json.loads((out / "results.json").read_text())
    assert top["ensemble"]["metrics"]["f1-macro"] == pytest.approx(expected, abs=1e-12)
    assert "f1-macro" in (out / "summary.md").read_text()


# ---------------------------------------------------------------- priming


def test_priming_from_the_config_puts_the_labeled_examples_before_each_query(workspace):
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    from jaxpet.config import load_config
    from jaxpet.pipelines.setup import load_task_data

    out = workspace["root"] / "primed"
    overrides = ["task.train_examples=2", "task.split_examples_evenly=false",
                 "task.test_examples=4", "task.unlabeled_examples=0", "pet.lm_training=false",
                 "pet.max_seq_length=64", "pet.pattern_ids=[0]", "pet.max_steps=0",
                 "eval.priming=true", "eval.zero_shot=false", "no_distillation=true"]
    run_train(workspace, out, *overrides)
    config = load_config(workspace["config"], overrides)
    data = load_task_data(config)
    assert len(data.train) == 2 and len(data.eval) == 4

    tokenizer = AutoTokenizer.from_pretrained(str(workspace["model"]))
    model = BertForMaskedLM.from_pretrained(str(workspace["model"])).eval()
    words = dict(zip("1234", AGNEWS_WORDS, strict=True))
    word_columns = tokenizer.convert_tokens_to_ids(AGNEWS_WORDS)

    def pattern_0(example, mask: str) -> list[str]:  # agnews P0: `___ : a b`
        return [mask, ":", *tokenizer.tokenize(example.text_a),
                *tokenizer.tokenize(example.text_b)]

    def label_scores(tokens: list[str]) -> np.ndarray:
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(tokens)])
        with torch.no_grad():
            logits_SxV = model(input_ids=ids).logits[0].numpy()
        return logits_SxV[tokens.index("[MASK]"), word_columns]

    # PET's priming: each labeled example with its mask replaced by its label's word, all
    # concatenated without separators before the query, one [CLS] ... [SEP] around everything
    demos = [t for d in data.train for t in pattern_0(d, words[d.label])]
    primed_NxL = np.stack([label_scores(["[CLS]", *demos, *pattern_0(e, "[MASK]"), "[SEP]"])
                           for e in data.eval])
    plain_NxL = np.stack([label_scores(["[CLS]", *pattern_0(e, "[MASK]"), "[SEP]"])
                          for e in data.eval])
    logits_NxL = np.load(out / "p0-s0" / "eval_logits.npy")
    # 1e-4: fp32 parity of the Flax and PyTorch forward; the demonstrations move the scores
    # by more than 1e-3 (checked below), so an unprimed or differently primed input fails
    np.testing.assert_allclose(logits_NxL, primed_NxL, rtol=1e-4, atol=1e-4)
    assert np.abs(primed_NxL - plain_NxL).max() > 1e-3


def test_priming_without_labeled_examples_is_a_config_error(workspace, tmp_path, capsys):
    status = train_main(["--config", str(workspace["config"]), f"output_dir={tmp_path}",
                         "eval.priming=true", "task.train_examples=0"])
    assert status == 2
    assert "eval.priming needs labeled examples" in capsys.readouterr().err

