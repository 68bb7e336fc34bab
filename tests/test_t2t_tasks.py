"""T5 task prefix formats, local data readers and text-to-text metrics on small fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest

from jaxpet.data.files import DataFileError
from jaxpet.text2text import metrics as t2t_metrics
from jaxpet.text2text import readers as t2t_readers
from jaxpet.text2text import tasks as t2t_tasks
from jaxpet.text2text.tasks import TextPair

DATA = os.path.join(os.path.dirname(__file__), "data", "t2t")


def data(name: str) -> str:
    return os.path.join(DATA, name)


# ---- formats ---------------------------------------------------------------------------------

def test_translation_prefix():
    pair = t2t_tasks.translation("That is good.", "en", "de", "Das ist gut.")
    assert pair.inputs == "translate English to German: That is good."
    assert pair.targets == "Das ist gut."
    assert t2t_tasks.translation("Hi.", "English", "Romanian").inputs == \
        "translate English to Romanian: Hi."


def test_summarize_prefix():
    pair = t2t_tasks.summarization("A dog came home.", "Dog home.")
    assert (pair.inputs, pair.targets) == ("summarize: A dog came home.", "Dog home.")


def test_mnli_prefix_and_labels():
    pair = t2t_tasks.mnli("A cat sat.", "A cat was sitting.", 0)
    assert pair.inputs == "mnli hypothesis: A cat was sitting. premise: A cat sat."
    assert pair.targets == "entailment"
    assert t2t_tasks.mnli("p", "h", 2).targets == "contradiction"
    assert t2t_tasks.mnli("p", "h", "neutral").targets == "neutral"
    assert t2t_tasks.mnli("p", "h", -1).targets == "<unk>"
    assert t2t_tasks.mnli("p", "h").targets is None
    with pytest.raises(ValueError, match="mnli: label 'maybe'"):
        t2t_tasks.mnli("p", "h", "maybe")


@pytest.mark.parametrize("score, expected", [
    (2.5, "2.4"),   # 12.5 -> 12: half to even, as tf.round
    (3.5, "3.6"),   # 17.5 -> 18
    (3.8, "3.8"),
    (1.23, "1.2"),
    (4.91, "5.0"),
    (0.0, "0.0"),
    (5.0, "5.0"),
])
def test_stsb_target_rounds_to_nearest_fifth(score, expected):
    assert t2t_tasks.stsb_target(score) == expected


def test_stsb_prefix():
    pair = t2t_tasks.stsb("A man plays.", "A person plays.", 3.5)
    assert pair.inputs == "stsb sentence1: A man plays. sentence2: A person plays."
    assert pair.targets == "3.6"


def test_squad_prefix_pads_punctuation():
    pair = t2t_tasks.squad("What is the capital of France?", "Paris is the capital (of France).",
                           ["Paris", "Paris, France"])
    assert pair.inputs == ("question: What is the capital of France ? "
                           "context: Paris is the capital ( of France ) .")
    assert pair.targets == "Paris"
    assert pair.meta["answers"] == ["Paris", "Paris, France"]
    assert t2t_tasks.pad_punctuation("François's café_au-lait") == "François ' s café_au - lait"


def test_generic_glue_rendering():
    pair = t2t_tasks.glue("qqp", {"question2": "What age?", "question1": "How old?", "idx": 3},
                          1, label_names=["not_duplicate", "duplicate"])
    assert pair.inputs == "qqp question1: How old? question2: What age?"
    assert pair.targets == "duplicate"
    wic = t2t_tasks.glue("wic", {"word": "bank", "sentence1": "A river bank.",
                                 "sentence2": "A bank loan."}, 0, ["False", "True"],
                         feature_names=["sentence1", "sentence2", "word"])
    assert wic.inputs == "wic sentence1: A river bank. sentence2: A bank loan. word: bank"
    assert wic.targets == "False"
    assert t2t_tasks.glue("cola", {"sentence": "Him left."}, -1, ["unacceptable",
                                                                 "acceptable"]).targets == "<unk>"
    with pytest.raises(KeyError, match="wic: example has no field"):
        t2t_tasks.glue("wic", {"word": "x"}, feature_names=["sentence1", "word"])


def test_user_template_from_config():
    records = [{"text": "great movie", "label": "positive", "id": "r1"}]
    pairs = t2t_tasks.format_records(
        records, {"format": "template", "inputs": "sentiment: {text}", "targets": "{label}"})
    assert pairs == [TextPair("sentiment: great movie", "positive", guid="r1")]
    with pytest.raises(KeyError, match=r"template field \{txt\} is not in the example"):
        t2t_tasks.format_records(records, {"format": "template", "inputs": "s: {txt}"})
    with pytest.raises(ValueError, match="unknown text-to-text format 'sumarize'"):
        t2t_tasks.format_records(records, {"format": "sumarize"})
    with pytest.raises(KeyError, match="translate: missing key 'source_language'"):
        t2t_tasks.format_records([{"source": "x"}], {"format": "translate"})


# ---- readers + formats end to end ------------------------------------------------------------

def test_translation_readers_tsv_and_jsonl():
    tsv = t2t_readers.read_translation(data("translation.tsv"))
    assert [r["source"] for r in tsv] == ["The house is small.", "I like green tea."]
    assert tsv[1]["target"] == "Ich mag grünen Tee."
    jsonl = t2t_readers.read_translation(data("translation.jsonl"), "en", "de")
    assert [(r["source"], r["target"]) for r in jsonl] == [(r["source"], r["target"]) for r in tsv]
    pairs = t2t_tasks.format_records(jsonl, {"format": "translate", "source_language": "en",
                                             "target_language": "de"})
    assert pairs[0].inputs == "translate English to German: The house is small."
    assert pairs[0].targets == "Das Haus ist klein." and pairs[0].guid == "a"
    with pytest.raises(DataFileError, match=r"bad_translation\.tsv:1: expected"):
        t2t_readers.read_translation(data("bad_translation.tsv"))
    with pytest.raises(DataFileError, match=r"translation\.jsonl:1: missing field"):
        t2t_readers.read_translation(data("translation.jsonl"), "fr", "de")


def test_cnn_dailymail_reader():
    records = t2t_readers.read_cnn_dailymail(data("cnndm.jsonl"))
    assert len(records) == 2 and records[1]["highlights"] is None
    pairs = t2t_tasks.format_records(records, {"format": "summarize"})
    assert pairs[0].inputs.startswith("summarize: The town council met on Monday.")
    assert pairs[0].targets.split("\n") == ["Council votes to repair the old bridge.",
                                            "Work starts before winter."]
    with pytest.raises(DataFileError, match=r"bad\.jsonl:2: invalid JSON"):
        t2t_readers.read_cnn_dailymail(data("bad.jsonl"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        t2t_readers.read_cnn_dailymail(data("nope.jsonl"))


def test_glue_tsv_readers():
    mnli = t2t_readers.read_glue_tsv(data("mnli.tsv"), "mnli")
    assert mnli[0] == {"premise": 'A cat sat on the "old" mat.', "hypothesis": "A cat was sitting.",
                       "label": "entailment", "id": "1e"}
    pairs = t2t_tasks.format_records(mnli, {"format": "mnli"})
    assert pairs[1].inputs == "mnli hypothesis: It is raining. premise: The sky is blue."
    assert pairs[1].targets == "contradiction"
    stsb = t2t_readers.read_glue_tsv(data("stsb.tsv"), "stsb")
    assert [r["label"] for r in stsb] == [3.5, 0.3]
    assert [p.targets for p in t2t_tasks.format_records(stsb, {"format": "stsb"})] == ["3.6",
                                                                                       "0.4"]
    with pytest.raises(DataFileError, match=r"stsb_bad\.tsv:2: score 'four'"):
        t2t_readers.read_glue_tsv(data("stsb_bad.tsv"), "stsb")
    with pytest.raises(DataFileError, match=r"translation\.tsv:1: header lacks"):
        t2t_readers.read_glue_tsv(data("translation.tsv"), "mnli")


def test_squad_reader():
    records = t2t_readers.read_squad(data("squad.json"))
    assert [r["id"] for r in records] == ["q1", "q2"]
    assert records[0]["answers"] == ["Paris", "Paris,"]
    pairs = t2t_tasks.format_records(records, {"format": "squad"})
    assert pairs[1].inputs == ("question: Which city is France ' s largest ? context: Paris is "
                               "the capital of France , ( and ) its largest city .")
    assert pairs[1].targets == "Paris" and pairs[1].guid == "q2"
    with pytest.raises(DataFileError, match=r"cnndm\.jsonl:2: invalid JSON"):
        t2t_readers.read_squad(data("cnndm.jsonl"))


# ---- metrics --------------------------------------------------------------------------------

def test_bleu():
    refs = ["the cat is on the mat today", "there is a dog in the big garden"]
    assert t2t_metrics.bleu(refs, refs)["bleu"] == pytest.approx(100.0)
    partial = t2t_metrics.bleu(["the cat is on a mat today", "there is a cat in the garden"],
                               refs)["bleu"]
    assert 0.0 < partial < 100.0
    with pytest.raises(ValueError, match="bleu: 1 predictions but 2 references"):
        t2t_metrics.bleu(["x"], refs)


def test_rouge_against_hand_computed_f1():
    scores = t2t_metrics.rouge(["the cat sat"], ["the cat sat down"])
    # unigrams: precision 3/3, recall 3/4 -> F1 6/7; bigrams: 2/2, 2/3 -> 4/5
    assert scores["rouge1"] == pytest.approx(100 * 6 / 7)
    assert scores["rouge2"] == pytest.approx(100 * 4 / 5)
    assert t2t_metrics.rouge(["a b"], ["a b"])["rougeLsum"] == pytest.approx(100.0)


def test_squad_em_f1_official_normalisation():
    assert t2t_metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    scores = t2t_metrics.squad(["the Paris", "Paris city", "Lyon"],
                               [["Paris"], ["Paris", "Paris, France"], ["Paris"]])
    assert scores["em"] == pytest.approx(100 / 3)
    # "Paris city" vs "Paris": P=1/2, R=1 -> 2/3; vs "Paris France": P=1/2, R=1/2 -> 1/2; max 2/3
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_accuracy_and_correlations():
    assert t2t_metrics.accuracy(["a", "b", "c", "d"], ["a", "x", "c", "d"])["accuracy"] == 75.0
    pred = ["1.0", "2.4", "x", "4.0"]
    ref = [1.2, 2.0, 3.0, 4.4]
    scores = t2t_metrics.correlations(pred, ref)
    as_float = np.array([1.0, 2.4, -1.0, 4.0])  # unparsable -> -1, as T5 scores it
    assert scores["pearson"] == pytest.approx(100 * np.corrcoef(as_float, ref)[0, 1])
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731 (no ties here)
    assert scores["spearman"] == pytest.approx(
        100 * np.corrcoef(ranks(as_float), ranks(np.array(ref)))[0, 1])


# ---- offline tokenizer -----------------------------------------------------------------------

def test_offline_t5_tokenizer_round_trip(tmp_path):
    from tiny_t5 import make_t5_tokenizer

    tok = make_t5_tokenizer(str(tmp_path / "tok"))
    ids = tok("translate English to German: That is good.").input_ids
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0
    assert tok.decode(ids, skip_special_tokens=True) == \
        "translate English to German: That is good."
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    assert tok.convert_tokens_to_ids("<extra_id_99>") == len(tok) - 100


# ---- regressions found by running the configs end to end -------------------------------------

def test_rouge_lsum_scores_one_line_predictions_sentence_by_sentence():
    # T5 tokenizers turn newlines into spaces, so generated summaries come on one line; rougeLsum
    # must still see their sentences (one per line, as the references have them).
    assert t2t_metrics.sentence_lines("Home. The dog ran! U.S. troops left 3.5 km.\nOk") == \
        "Home.\nThe dog ran!\nU.S. troops left 3.5 km.\nOk"
    scores = t2t_metrics.rouge(["Home. The dog ran."], ["The dog ran home."])
    # by sentence: LCS("the dog ran home", {"home"} u {"the dog ran"}) = 4 tokens; as one
    # sentence "home the dog ran" only 3 of 4 would match (75)
    assert scores["rougeLsum"] == pytest.approx(100.0)
    assert scores["rouge1"] == pytest.approx(100.0)


def test_correlations_of_a_constant_output_are_nan_with_a_clear_warning():
    with pytest.warns(UserWarning, match="all 3 predictions are -1 .*undefined"):
        scores = t2t_metrics.correlations(["", "", "x"], [1.0, 2.0, 3.0])
    assert np.isnan(scores["pearson"]) and np.isnan(scores["spearman"])


def test_record_errors_name_the_file_the_record_and_what_is_missing():
    records = [{"id": "a", "premise": "p", "hypothesis": "h"}, {"id": "b", "premise": "p"}]
    with pytest.raises(KeyError, match=r"dev\.jsonl: record 'b': mnli: missing key "
                                       r"'hypothesis' \(the record has fields \['id', "
                                       r"'premise'\]\)"):
        t2t_tasks.format_records(records, {"format": "mnli"}, "dev.jsonl")
    with pytest.raises(ValueError, match=r"dev\.jsonl: record 'a': mnli: label 'maybe'"):
        t2t_tasks.format_records([{**records[0], "label": "maybe"}], {"format": "mnli"},
                                 "dev.jsonl")
    with pytest.raises(KeyError, match=r"missing key 'target_language' \(a format option, "
                                       r"config key text2text\.format_options\.target_language"):
        t2t_tasks.format_records([{"source": "x"}], {"format": "translate",
                                                     "source_language": "en"}, "train.tsv")


def test_squad_reader_names_an_answer_without_text(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q", '
                    '"question": "?", "answers": [{"answer_start": 0}]}]}]}]}')
    with pytest.raises(DataFileError,
                       match=r"dev\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]: "
                             r"missing field\(s\) \['text'\]"):
        t2t_readers.read_squad(str(path))
