"""PETAL: found label words, the paper's ranking in numpy, word filters, and PET runs with them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_train_cli import TOPICS, build_workspace

from jaxpet.cli import main, train_main
from jaxpet.config import load_config
from jaxpet.pipelines.petal import candidate_words, rank_words, search

# The words a trained tiny BERT puts at the mask of each label's examples: words of the shared
# filler text, none of them the task's own verbalizer, so only the search can find them.
TARGETS = {"1": "monday", "2": "week", "3": "reports", "4": "new"}
LABELS = ["1", "2", "3", "4"]


def _pattern0_texts(csv_rows) -> list[str]:
    """AG News pattern 0 (`___ : a b`) written by hand, for the tokenizer to encode."""
    return [f"[MASK] : {head} {body}" for _, head, body in csv_rows]


def _read_rows(path: Path) -> list[tuple[str, str, str]]:
    import csv

    with open(path, encoding="utf-8") as f:
        return [tuple(row) for row in csv.reader(f)]


def _torch_mask_logits(model_dir: Path, texts: list[str]):
    """[N, V] MLM logits at the mask of each text, from transformers' PyTorch BERT."""
    import torch
    from transformers import BertForMaskedLM, BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(model_dir))
    model = BertForMaskedLM.from_pretrained(str(model_dir)).eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits_NxSxV = model(**enc).logits
    rows, cols = (enc["input_ids"] == tokenizer.mask_token_id).nonzero(as_tuple=True)
    assert rows.tolist() == list(range(len(texts)))  # one mask per text
    return logits_NxSxV[rows, cols].numpy(), tokenizer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("petal"))


@pytest.fixture(scope="module")
def taught_model(workspace):
    """The workspace's tiny BERT trained (in PyTorch) to predict TARGETS[label] at the mask of
    pattern 0 for every training example of the label."""
    import torch
    from transformers import BertForMaskedLM, BertTokenizer

    src, dst = workspace["model"], workspace["root"] / "taught-bert"
    tokenizer = BertTokenizer.from_pretrained(str(src))
    model = BertForMaskedLM.from_pretrained(str(src))
    model.train()
    rows = _read_rows(workspace["data"] / "train.csv")
    enc = tokenizer(_pattern0_texts(rows), padding=True, return_tensors="pt")
    targets = torch.tensor(tokenizer.convert_tokens_to_ids([TARGETS[r[0]] for r in rows]))
    mask_at = (enc["input_ids"] == tokenizer.mask_token_id).nonzero(as_tuple=True)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        logits = model(**enc).logits[mask_at]
        loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(str(dst))
    tokenizer.save_pretrained(str(dst))
    return dst


def test_search_finds_the_words_a_model_predicts_for_each_label(workspace, taught_model):
    rows = _read_rows(workspace["data"] / "train.csv")
    logits_NxV, tokenizer = _torch_mask_logits(taught_model, _pattern0_texts(rows))
    predicted = tokenizer.convert_ids_to_tokens(logits_NxV.argmax(-1).tolist())
    # the premise: the taught model really puts each label's word first
    assert predicted == [TARGETS[r[0]] for r in rows]
    config = load_config(workspace["config"], [
        f"model.name={taught_model}", "pet.pattern_ids=[0]", "petal.words_per_label=3",
        "petal.num_candidates=10"])
    result = search(config)
    first = {label: scored[0][0] for label, scored in result.words[0].items()}
    assert first == TARGETS
    for scored in result.words[0].values():
        scores = [s for _, s in scored]
        assert len(scored) == 3 and scores == sorted(scores, reverse=True)


def test_mask_log_probs_equal_pytorch_at_each_examples_mask(workspace, taught_model):
    import torch

    from jaxpet.models import load_pretrained
    from jaxpet.pipelines.petal import mask_log_probs

    rows = _read_rows(workspace["data"] / "test.csv")
    texts = [text.replace("[MASK] :", ": [MASK]", 1) if i % 2 else text  # masks move about
             for i, text in enumerate(_pattern0_texts(rows))]
    logits_NxV, tokenizer = _torch_mask_logits(taught_model, texts)
    expected_NxV = torch.log_softmax(torch.as_tensor(logits_NxV), -1).numpy()
    enc = {k: np.asarray(v) for k, v in tokenizer(texts, padding="max_length", max_length=32,
                                                   return_tensors="np").items()}
    enc["mask_positions"] = np.argmax(enc["input_ids"] == tokenizer.mask_token_id, 1)[:, None]
    lm = load_pretrained(taught_model, head="mlm")
    # 3 rows per batch: 16 rows end in a padded batch, whose extra rows must be dropped
    got_NxV = mask_log_probs(lm, lm.params, enc, batch_size=3)
    assert got_NxV.shape == expected_NxV.shape
    # fp32 JAX vs PyTorch BERT: catches the wrong position, row or normalisation
    np.testing.assert_allclose(got_NxV, expected_NxV, atol=1e-4)


def _paper_ranking(logits_list, labels_N, num_labels, candidate_ids, num_candidates,
                   words_per_label, normalize, score):
    """The paper's procedure written out with plain loops: softmax probabilities, candidates
    by summed log p over the label's examples, then the likelihood-ratio (or CE) score."""
    probs_list = []
    for logits in logits_list:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs_list.append(e / e.sum(axis=1, keepdims=True))
    ids, scores = [], []
    for label in range(num_labels):
        expected = (labels_N == label).astype(float)
        scale = (1 - expected).sum() / expected.sum() if normalize else 1.0
        pre = {w: sum(np.sum(np.log(p[:, w]) * expected) for p in probs_list)
               for w in candidate_ids}
        kept = sorted(pre, key=lambda w: -pre[w])[:num_candidates]
        final = {}
        for w in kept:
            total = 0.0
            for probs in probs_list:
                p = probs[:, w]
                if score == "llr":
                    pos = scale * (np.sum(np.log(p) * expected)
                                   - np.sum(np.log(1 - p) * expected))
                    neg = np.sum(np.log(1 - p) * (1 - expected)) - np.sum(
                        np.log(p) * (1 - expected))
                else:
                    pos = scale * np.sum(np.log(p) * expected)
                    neg = np.sum(np.log(1 - p) * (1 - expected))
                total += pos + neg
            final[w] = total
        best = sorted(final, key=lambda w: -final[w])[:words_per_label]
        ids.append(best)
        scores.append([final[w] for w in best])
    return np.array(ids), np.array(scores)


@pytest.mark.parametrize("normalize,score,patterns", [
    (True, "llr", 1), (False, "llr", 1), (True, "ce", 1), (True, "llr", 2)])
def test_ranking_equals_the_papers_formula_on_random_logits(normalize, score, patterns):
    rng = np.random.default_rng(7)
    num_labels, vocab = 3, 60
    labels_N = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])  # uneven: w matters
    logits_list = [rng.normal(0, 2.0, (len(labels_N), vocab)) for _ in range(patterns)]
    candidate_ids = np.sort(rng.choice(vocab, 40, replace=False))
    log_probs = [lg - np.log(np.exp(lg).sum(1, keepdims=True)) for lg in logits_list]
    ids, scores = rank_words(log_probs, labels_N, num_labels, candidate_ids, num_candidates=15,
                             words_per_label=5, normalize=normalize, score=score)
    ref_ids, ref_scores = _paper_ranking(logits_list, labels_N, num_labels, candidate_ids, 15,
                                         5, normalize, score)
    np.testing.assert_array_equal(ids, ref_ids)
    # float64 both ways: only summation order differs; catches any wrong term or weight
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-9)


def test_wordpiece_filter_keeps_word_initial_words_of_two_letters():
    from tiny_tokenizers import wordpiece_tokenizer

    tokenizer = wordpiece_tokenizer()
    words = candidate_words(tokenizer)
    vocab = tokenizer.get_vocab()
    for word in ("good", "World", "Sports", "terrible", "Ja"):
        assert words[word] == vocab[word]
    # continuation pieces, one letter, digits, punctuation and special tokens are no words
    assert not {"##a", "a", "b", "2", "?", "(a)", "[MASK]", "[CLS]"} & set(words)
    assert not any(w.startswith("##") for w in words)
    for word, token_id in words.items():
        assert tokenizer(word, add_special_tokens=False)["input_ids"] == [token_id]


def test_wordpiece_filter_on_a_hand_written_vocabulary():
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "play", "##ing", "##ed",
             "a", "[unused1]", "42", "x1", "#", "i", "n", "g", "u", "s", "e", "d", "1", "[", "]"]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=False)
    assert candidate_words(tokenizer) == {"good": 5, "play": 6}


def test_bpe_filter_keeps_only_space_prefixed_tokens():
    from tiny_tokenizers import bpe_tokenizer

    tokenizer = bpe_tokenizer()
    words = candidate_words(tokenizer)
    vocab = tokenizer.get_vocab()
    # "good" exists both word-initial ("Ġgood") and attached ("good"): the word is the first
    assert "good" in vocab and words["good"] == vocab["Ġgood"] != vocab["good"]
    assert words["World"] == vocab["ĠWorld"]
    assert not {"a", "2", "<mask>", "<s>"} & set(words)
    assert all(tokenizer.convert_ids_to_tokens(i).startswith("Ġ") for i in words.values())
    for word, token_id in words.items():
        assert tokenizer(" " + word, add_special_tokens=False)["input_ids"] == [token_id]


def test_sentencepiece_filter_and_the_most_frequent_words():
    from tiny_tokenizers import albert_tokenizer

    tokenizer = albert_tokenizer()
    words = candidate_words(tokenizer)
    assert "good" in words and tokenizer.convert_ids_to_tokens(words["good"]) == "▁good"
    counts = Counter({"great": 5, "terrible": 3, "bad": 3, "good": 1, "notaword": 9})
    frequent = candidate_words(tokenizer, counts, max_words=3)
    # the 3 most frequent vocabulary words; ties (terrible, bad) by vocabulary order
    assert set(frequent) == {"great", "terrible", "bad"}


def test_found_verbalizer_trains_pet_with_the_mean_of_its_words(workspace, taught_model,
                                                               tmp_path):
    """jaxpet petal writes verbalizer.yaml; train.py with task.verbalizer=<it> scores each
    label as the mean of its W=2 words' mask logits (recomputed in PyTorch)."""
    out = tmp_path / "petal"
    common = [f"model.name={taught_model}", "pet.pattern_ids=[0]"]
    assert main(["petal", "--config", str(workspace["config"]), *common,
                 "petal.words_per_label=2", "petal.num_candidates=10",
                 f"petal.output_dir={out}"]) == 0
    found = yaml.safe_load((out / "verbalizer.yaml").read_text())
    assert list(found) == [0] and all(len(found[0][label]) == 2 for label in LABELS)
    assert {label: found[0][label][0] for label in LABELS} == TARGETS
    assert "| 1 | monday (" in (out / "summary.md").read_text()
    run = tmp_path / "run"
    assert train_main(["--config", str(workspace["config"]), *common,
                       f"task.verbalizer={out / 'verbalizer.yaml'}", f"output_dir={run}",
                       "pet.max_steps=0", "pet.lm_training=false", "no_distillation=true",
                       "eval.zero_shot=false"]) == 0
    eval_rows = _read_rows(workspace["data"] / "test.csv")
    logits_NxV, tokenizer = _torch_mask_logits(taught_model, _pattern0_texts(eval_rows))
    ids_LxW = np.array([tokenizer.convert_tokens_to_ids(found[0][label]) for label in LABELS])
    expected_NxL = logits_NxV[:, ids_LxW].mean(-1)
    # fp32 JAX vs PyTorch BERT: catches a score from one word only or the task's own words
    np.testing.assert_allclose(np.load(run / "p0-s0" / "eval_logits.npy"), expected_NxL,
                               atol=1e-4)
    predictions = [json.loads(line) for line in
                   (run / "p0-s0" / "predictions.jsonl").read_text().splitlines()]
    assert [p["label"] for p in predictions] == [LABELS[i] for i in expected_NxL.argmax(-1)]


@pytest.mark.slow  # a search and a 2-step PET run: ~40 s on a busy 2-core machine
def test_config_defined_task_gets_words_and_trains_with_them(workspace, taught_model, tmp_path):
    config = tmp_path / "custom.yaml"
    config.write_text(f"""\
output_dir: {tmp_path / "out"}
compilation_cache: ""
task:
  name: petal-topics
  data_dir: {workspace["data"]}
  train_examples: 12
  split_examples_evenly: true
  unlabeled_examples: 0
  definition: {{format: csv, text_a: 1, text_b: 2, label: 0, labels: {json.dumps(LABELS)},
                files: {{train: train.csv, dev: test.csv}}}}
  patterns: ["{{mask}} : {{text_a:shorten}} {{text_b:shorten}}"]
  verbalizer: {json.dumps({label: word for label, (word, _) in TOPICS.items()})}
model: {{name: {taught_model}}}
pet: {{pattern_ids: [0], repetitions: 1, max_seq_length: 32, train_batch_size: 4,
      max_steps: 2, learning_rate: 1e-3}}
petal: {{words_per_label: 2, num_candidates: 10}}
no_distillation: true
mesh: {{data: 1}}
eval: {{batch_size: 8, zero_shot: false}}
logging: {{progress: false}}
""")
    assert main(["petal", "--config", str(config)]) == 0
    path = tmp_path / "out" / "petal" / "verbalizer.yaml"
    found = yaml.safe_load(path.read_text())
    assert {label: words[0] for label, words in found[0].items()} == TARGETS
    assert train_main(["--config", str(config), f"task.verbalizer={path}",
                       f"output_dir={tmp_path / 'run'}"]) == 0
    results = json.loads((tmp_path / "run" / "p0-s0" / "results.json").read_text())
    assert results["num_train"] == 12
    # the run scored its 12 labeled examples before training: with the found words (mean of
    # 2 logits, recomputed in PyTorch), which score differently from the task's own words
    from jaxpet.data import load_examples

    train = load_examples("petal-topics", workspace["data"], "train", 12, 42, True)
    logits_NxV, tokenizer = _torch_mask_logits(
        taught_model, _pattern0_texts([(e.label, e.text_a, e.text_b) for e in train]))
    gold = np.array([LABELS.index(e.label) for e in train])

    def accuracy(words_LxW):
        ids_LxW = np.array([tokenizer.convert_tokens_to_ids(w) for w in words_LxW])
        return float((logits_NxV[:, ids_LxW].mean(-1).argmax(-1) == gold).mean())

    found_accuracy = accuracy([found[0][label] for label in LABELS])
    assert found_accuracy != accuracy([[TOPICS[label][0]] for label in LABELS])
    # fractions of 12 examples: only float rounding may differ
    assert results["train_set_before_training"] == pytest.approx(found_accuracy)


def test_bad_input_fails_with_a_message_naming_the_key(workspace, capsys):
    with pytest.raises(ValueError, match=r"'task\.name': unknown task 'nosuchtask'"):
        search(load_config(workspace["config"], ["task.name=nosuchtask"]))
    assert main(["petal", "--config", str(workspace["config"]), "task.train_examples=0"]) == 2
    assert "petal needs labeled examples" in capsys.readouterr().err
    one_example = ["task.train_examples=1", "task.split_examples_evenly=false"]
    with pytest.raises(ValueError, match=r"label\(s\) \[('\d', ){2}'\d'\] of task 'agnews' "
                                         r".* task\.train_examples"):
        search(load_config(workspace["config"], one_example))
    with pytest.raises(ValueError, match=r"'petal\.score' must be one of"):
        load_config(workspace["config"], ["petal.score=kl"])
