"""Multi-token PET members: training losses against direct computations, COPA / WSC / ReCoRD /
a config-defined multi-token verbalizer task end to end through jaxpet.pipelines.pet.run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from jaxpet.runs.outputs import read_jsonl

# Words kept out of the vocabulary so that they split into word pieces (multi-token answers).
PIECES = {"greatness": ["great", "##ness"], "kathmandu": ["kath", "##mandu"]}
COPA = [  # premise, question, right choice, wrong choice
    ("The glass fell off the table.", "effect", "It shattered.", "It was full."),
    ("The man wore a coat.", "cause", "It was freezing.", "It was sunny."),
    ("The baby cried.", "cause", "She was hungry.", "She was asleep."),
    ("The road was icy.", "effect", "Cars slid.", "Birds sang."),
    ("The girl ate lunch.", "cause", "She was hungry.", "It was sunny."),
    ("The sun rose.", "effect", "Birds sang.", "It was freezing."),
]
REVIEWS = {"pos": ["the food was great", "nice place and great staff", "we loved the lunch"],
           "neg": ["the food was cold", "bad place and slow staff", "we hated the lunch"]}
PATTERN_TEXT = """" or ? because , so . The pronoun ' * refers to In the previous sentence, the
pronoun Question : In the passage above what does refer Answer - It was"""
WSC_TEXT = "The trophy did not fit in the suitcase because it was too big"
RECORD = "Rome beat Milan in the derby. Leaders from Kathmandu and New York watched."


def _write_jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _copa_records(rows, swap_every: int) -> list[dict]:
    out = []
    for i, (premise, question, right, wrong) in enumerate(rows):
        label = int(i % swap_every == 1)
        choices = (wrong, right) if label else (right, wrong)
        out.append({"idx": i, "premise": premise, "question": question, "choice1": choices[0],
                    "choice2": choices[1], "label": label})
    return out


def _record_records(train: bool) -> list[dict]:
    entities = [(m.start(), m.end() - 1) for m in re.finditer(
        r"Rome|Milan|Kathmandu|New York", RECORD)]
    spans = [{"start": s, "end": e} for s, e in entities]
    queries = [("@placeholder won the derby.", "Rome"), ("@placeholder lost the derby.", "Milan"),
               ("Leaders from @placeholder watched.", "New York")]
    qas = [{"idx": i, "query": q, "answers": [{"start": RECORD.index(a),
                                               "end": RECORD.index(a) + len(a) - 1, "text": a}]}
           for i, (q, a) in enumerate(queries if train else queries[:2])]
    return [{"idx": 0, "passage": {"text": RECORD, "entities": spans}, "qas": qas}]


def _wsc_records(split: str) -> list[dict]:
    records = [{"idx": i, "text": WSC_TEXT, "label": True, "target": {
        "span1_text": "the trophy", "span1_index": 0, "span2_text": "it", "span2_index": 9}}
        for i in range(2)]
    if split == "val":
        records.append({"idx": 5, "text": WSC_TEXT, "label": False, "target": {
            "span1_text": "suitcase", "span1_index": 7, "span2_text": "it", "span2_index": 9}})
    return records


def _vocab() -> list[str]:
    text = " ".join([PATTERN_TEXT, WSC_TEXT, RECORD, *(" ".join(r) for r in COPA),
                     *(s for v in REVIEWS.values() for s in v), "bad"]).lower()
    words = set(re.findall(r"\w+|[^\w\s]", text)) - set(PIECES)
    pieces = {p for ps in PIECES.values() for p in ps}
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words | pieces)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """Fixture data for copa, wsc, record and a config-defined task, and a tiny BERT whose
    word-level vocab makes the answers 1-3 tokens long."""
    import torch
    from tiny_models import tiny_hf_config
    from transformers import BertForMaskedLM, BertTokenizer

    root = tmp_path_factory.mktemp("multitoken")
    for name in ("copa", "wsc", "record", "reviews"):
        (root / name).mkdir()
    _write_jsonl(root / "copa" / "train.jsonl", _copa_records(COPA, 2))
    _write_jsonl(root / "copa" / "val.jsonl", _copa_records(COPA[:4], 3))
    _write_jsonl(root / "copa" / "unlabeled.jsonl", _copa_records(COPA[4:], 2))
    for split in ("train", "val"):
        _write_jsonl(root / "wsc" / f"{split}.jsonl", _wsc_records(split))
        _write_jsonl(root / "record" / f"{split}.jsonl", _record_records(split == "train"))
    _write_jsonl(root / "reviews" / "train.jsonl", [
        {"text": t, "label": label} for label, texts in REVIEWS.items() for t in texts])
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(_vocab())})
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_hf_config("bert", len(tokenizer), tokenizer)).eval()
    model.save_pretrained(str(root / "tiny-bert"))
    tokenizer.save_pretrained(str(root / "tiny-bert"))
    return {"root": root, "model": root / "tiny-bert"}


def _config(workspace, task: str, out: str, *overrides: str):
    from jaxpet.config import load_config

    path = workspace["root"] / f"{out}.yaml"
    path.write_text(f"""\
method: pet
output_dir: {workspace["root"] / out}
seed: 1
no_distillation: true
compilation_cache: ""
task: {{name: {task}, data_dir: {workspace["root"] / task}, train_examples: -1,
        test_examples: -1, unlabeled_examples: 0}}
model: {{name: {workspace["model"]}}}
pet: {{pattern_ids: [0], repetitions: 1, max_seq_length: 32, train_batch_size: 8,
      max_steps: 2, learning_rate: 1e-2}}
eval: {{batch_size: 8, zero_shot: false}}
mesh: {{data: 1}}
logging: {{progress: false, every: 1}}
""")
    return load_config(path, list(overrides))


@pytest.fixture(scope="module")
def tiny_lm(workspace):
    from jaxpet.models import load_pretrained

    return load_pretrained(str(workspace["model"]), head="mlm")


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _full_log_probs(lm, batch) -> np.ndarray:
    """log p over the vocabulary at every mask slot, from the full-sequence MLM head."""
    import jax

    apply = jax.jit(lambda params, ids, attn, types: lm.module.apply(
        {"params": params}, ids, attn, token_type_ids=types, deterministic=True))
    logits_BxSxV = np.asarray(apply(lm.params, batch["input_ids"], batch["attention_mask"],
                                    batch["token_type_ids"]), np.float64)
    pos_BxK = np.maximum(batch["mask_positions"], 0)
    return _log_softmax(np.take_along_axis(logits_BxSxV, pos_BxK[:, :, None], axis=1))


def _token_lp(lp_BxKxV, tgt_BxCxK):
    return np.take_along_axis(lp_BxKxV[:, None], np.maximum(tgt_BxCxK, 0)[..., None], -1)[..., 0]


def _expected(variant: str, lp_BxKxV, batch, pad_id: int) -> float:
    tgt, labels = batch["target_ids"], batch["labels"]
    if variant == "wsc":
        is_mask = batch["mask_positions"] >= 0
        gold = np.where(tgt >= 0, tgt, pad_id)
        return float(-np.take_along_axis(lp_BxKxV, gold[..., None], -1)[..., 0][is_mask].mean())
    lp_BxCxK = np.where(tgt >= 0, _token_lp(lp_BxKxV, tgt), 0.0)
    valid_BxC = batch["candidate_mask"]
    if variant == "hinge":
        s = lp_BxCxK.sum(-1)
        return float(np.mean([sum(max(0.0, 1 - s[b, labels[b]] + s[b, c])
                                  for c in range(s.shape[1]) if c != labels[b] and valid_BxC[b, c])
                              for b in range(len(labels))]))

    def ce(rows):  # batch-level token mean over the chosen candidate of every example
        toks = [(lp_BxCxK[b, c], tgt[b, c] >= 0) for b, c in enumerate(rows)]
        return -sum(lp[m].sum() for lp, m in toks) / sum(m.sum() for _, m in toks)

    wrong = [[c for c in range(tgt.shape[1]) if c != labels[b]] for b in range(len(labels))]
    return float(sum(max(0.0, 1 + ce(labels) - ce([w[j] for w in wrong]))
                     for j in range(tgt.shape[1] - 1)))


@pytest.mark.parametrize("variant,task", [("hinge", "copa"), ("copa", "copa"),
                                          ("record", "record"), ("wsc", "wsc")])
def test_training_losses_match_direct_computation(workspace, tiny_lm, variant, task):
    import jax

    from jaxpet.data import load_examples
    from jaxpet.prompts import get_pvp
    from jaxpet.prompts.multitoken import encode_generation, encode_multi_token
    from jaxpet.scoring.candidates_step import make_multitoken_loss

    examples = load_examples(task, str(workspace["root"] / task), "train", -1)
    pvp = get_pvp(task, 0)
    encode = encode_generation if variant == "wsc" else encode_multi_token
    batch = {k: np.asarray(v) for k, v in encode(pvp, examples, tiny_lm.tokenizer, 32).items()
             if k != "guids"}
    if variant != "wsc":  # several masks and candidates of different lengths
        lengths = (batch["target_ids"] >= 0).sum(-1)
        assert batch["target_ids"].shape[-1] > 1 and len(np.unique(lengths[lengths > 0])) > 1
    else:
        assert (batch["target_ids"] == tiny_lm.tokenizer.pad_token_id).any()  # extra masks
    pad = tiny_lm.tokenizer.pad_token_id
    loss_fn = make_multitoken_loss(tiny_lm.module.apply, variant, pad_token_id=pad)
    loss, aux = jax.jit(loss_fn)(tiny_lm.params, batch, None)  # rng None: dropout off
    expected = _expected(variant, _full_log_probs(tiny_lm, batch), batch, pad)
    # fp32 step vs float64 re-derivation; a wrong target, slot or margin changes the loss by > 1e-2
    assert float(loss) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert float(aux[variant]) == pytest.approx(float(loss))


def _check_member(folder: Path, num_eval: int, num_candidates: int,
                  steps: int = 2) -> tuple[dict, np.ndarray]:
    results = json.loads((folder / "results.json").read_text())
    scores_NxC = np.load(folder / "eval_logits.npy")
    assert scores_NxC.shape == (num_eval, num_candidates)
    predictions = read_jsonl(folder / "predictions.jsonl")
    assert len(predictions) == num_eval
    # an accuracy over the labeled set: a whole number of its num_train examples
    hits = results["train_set_before_training"] * results["num_train"]
    assert hits == pytest.approx(round(hits), abs=1e-9) and 0 <= round(hits) <= results["num_train"]
    if not steps:  # evaluated untrained: "before" and "after" training are the same model
        assert results["train_set_after_training"] == results["train_set_before_training"]
    if steps:
        log = read_jsonl(folder / "metrics.jsonl")
        assert [r["step"] for r in log] == list(range(1, steps + 1))
        assert all(np.isfinite(r["loss"]) for r in log)
    return results, scores_NxC


def test_copa_trains_end_to_end(workspace, tiny_lm):
    from jaxpet.pipelines.pet import run

    # on all 8 (fake) devices: batches and candidate rows are sharded over the mesh
    config = _config(workspace, "copa", "out-copa", "pet.decoding_strategy=ltr",
                     "task.unlabeled_examples=-1", "mesh.data=-1")
    results = run(config)
    member = results["members"]["p0-s0"]
    assert member["loss"] == "copa" and member["decoding_strategy"] == "ltr"
    out = workspace["root"] / "out-copa" / "p0-s0"
    _, scores_Nx2 = _check_member(out, num_eval=4, num_candidates=2)
    assert np.isfinite(scores_Nx2).all() and (scores_Nx2 < 0).all()  # sums of log p
    gold = np.array([r["label"] for r in _copa_records(COPA[:4], 3)])
    assert member["metrics"]["acc"] == pytest.approx(np.mean(scores_Nx2.argmax(-1) == gold))
    predictions = read_jsonl(out / "predictions.jsonl")
    assert [p["label"] for p in predictions] == [str(i) for i in scores_Nx2.argmax(-1)]
    # the unlabeled set is doubled with swapped choices, as in PET
    unlabeled_Ux2 = np.load(out / "unlabeled_logits.npy")
    assert unlabeled_Ux2.shape == (4, 2) and np.isfinite(unlabeled_Ux2).all()

    # iPET appends pseudo-labeled unlabeled rows to the labeled ones: same training layout
    from jaxpet.pipelines.member import prepare_pattern
    from jaxpet.pipelines.setup import load_task_data

    data = load_task_data(config)
    pattern = prepare_pattern(config, tiny_lm, data, 0)
    assert set(pattern.unlabeled) == set(pattern.train)
    for key, values in pattern.unlabeled.items():
        assert values.shape[1:] == pattern.train[key].shape[1:] and len(values) == 4, key
    np.testing.assert_array_equal(pattern.unlabeled["target_ids"][2:],
                                  pattern.unlabeled["target_ids"][:2, ::-1])


def test_config_defined_multi_token_verbalizer(workspace, tiny_lm):
    from jaxpet.data.custom import task_from_config
    from jaxpet.pipelines.pet import run
    from jaxpet.pipelines.setup import load_task_data
    from jaxpet.prompts import get_pvp
    from jaxpet.prompts.multitoken import encode_multi_token_decoding
    from jaxpet.prompts.template import pvp_from_config

    files = {"train": "train.jsonl", "dev": "train.jsonl"}
    task_from_config({"name": "mt-reviews", "format": "jsonl", "text_a": "text",
                      "label": "label", "labels": ["neg", "pos"], "files": files},
                     workspace["root"] / "reviews")
    pvp_from_config("mt-reviews", ["neg", "pos"], ["{text_a} . It was {mask} ."],
                    {"neg": "bad", "pos": "greatness"})
    (workspace["root"] / "mt-reviews").symlink_to(workspace["root"] / "reviews")
    config = _config(workspace, "mt-reviews", "out-reviews", "eval.zero_shot=true",
                     "pet.decoding_strategy=parallel")
    results = run(config)
    member = results["members"]["p0-s0"]
    assert member["loss"] == "hinge"
    _, scores_Nx2 = _check_member(workspace["root"] / "out-reviews" / "p0-s0", 6, 2)
    assert np.isfinite(scores_Nx2).all()
    gold = np.array([0] * 3 + [1] * 3)
    assert member["metrics"]["acc"] == pytest.approx(np.mean(scores_Nx2.argmax(-1) == gold))
    # zero-shot = the untrained model's parallel scores (sum of log p over each label's masks,
    # one full-sequence pass per candidate row) on the dev set
    data = load_task_data(config)
    dec = encode_multi_token_decoding(get_pvp("mt-reviews", 0), data.eval, tiny_lm.tokenizer, 32)
    untrained_Nx2 = np.zeros((len(data.eval), 2))
    for c in range(2):
        row = {k: dec[k][:, c] for k in ("input_ids", "attention_mask", "token_type_ids",
                                         "mask_positions")}
        lp = _full_log_probs(tiny_lm, row)
        tgt_NxK = dec["target_ids"][:, c]
        untrained_Nx2[:, c] = np.where(tgt_NxK >= 0, _token_lp(lp, tgt_NxK[:, None])[:, 0],
                                       0).sum(-1)
    assert results["zero_shot"]["p0"]["acc"] == pytest.approx(
        np.mean(untrained_Nx2.argmax(-1) == gold))


def test_record_and_wsc_evaluate_through_run(workspace, tiny_lm):
    from jaxpet.pipelines.pet import run
    from jaxpet.pipelines.setup import load_task_data
    from jaxpet.prompts import get_pvp
    from jaxpet.prompts.multitoken import encode_multi_token_decoding

    # ReCoRD untrained (pet.max_steps 0: the member is only evaluated)
    config = _config(workspace, "record", "out-record", "pet.decoding_strategy=parallel",
                     "pet.max_steps=0")
    results = run(config)
    folder = workspace["root"] / "out-record" / "p0-s0"
    _, scores_NxC = _check_member(folder, num_eval=2, num_candidates=4, steps=0)
    data = load_task_data(config)
    is_gold = np.array([[c in e.meta["answers"] for c in e.meta["candidates"]]
                        for e in data.eval])
    best = scores_NxC.argmax(-1)
    assert results["members"]["p0-s0"]["metrics"]["acc"] == pytest.approx(
        np.mean(is_gold[np.arange(len(best)), best]))
    predictions = read_jsonl(folder / "predictions.jsonl")
    assert [p["label"] for p in predictions] == [
        e.meta["candidates"][b] for e, b in zip(data.eval, best, strict=True)]

    # parallel scores = sum of log p from one pass over each candidate's own input row
    dec = encode_multi_token_decoding(get_pvp("record", 0), data.eval, tiny_lm.tokenizer, 32)
    assert (dec["target_ids"] >= 0).sum(-1).max() == 2  # "new york" has two tokens
    for c in range(dec["input_ids"].shape[1]):
        row = {k: dec[k][:, c] for k in ("input_ids", "attention_mask", "token_type_ids",
                                         "mask_positions")}
        lp = _full_log_probs(tiny_lm, row)
        tgt_NxK = dec["target_ids"][:, c]
        want = np.where(tgt_NxK >= 0, _token_lp(lp, tgt_NxK[:, None])[:, 0], 0).sum(-1)
        # fp32 against float64 log-softmax; a skipped or extra token's log p is several nats
        np.testing.assert_allclose(scores_NxC[:, c], want, rtol=1e-4, atol=1e-4)

    results = run(_config(workspace, "wsc", "out-wsc"))
    folder = workspace["root"] / "out-wsc" / "p0-s0"
    member, onehot_Nx2 = _check_member(folder, num_eval=3, num_candidates=2)
    assert member["loss"] == "wsc"
    assert set(onehot_Nx2.sum(-1)) == {1.0}
    predictions = read_jsonl(folder / "predictions.jsonl")
    from jaxpet.decoding import wsc_string_match

    targets = ["the trophy", "the trophy", "suitcase"]
    matched = [wsc_string_match(p["generated"], t) for p, t in zip(predictions, targets,
                                                                   strict=True)]
    assert onehot_Nx2.argmax(-1).tolist() == [int(m) for m in matched]
    gold = [True, True, False]
    assert member["metrics"]["acc"] == pytest.approx(np.mean(np.array(matched) == gold))
