"""Task readers on small fixture files in each task's original format, and their error cases."""

import json
import random
import re
from pathlib import Path

import pytest

from jaxpet.data.files import DataFileError
from jaxpet.data.readers_superglue import repair_wsc_spans
from jaxpet.data.tasks import get_task, load_examples, register_task, task_names

DATA = Path(__file__).parent / "data"
DEMO = Path(__file__).parent.parent / "configs" / "data" / "agnews_demo"


def load(task, split, folder=None, **kwargs):
    return load_examples(task, DATA / (folder or task), split, **kwargs)


def test_builtin_tasks_and_labels():
    assert set(task_names()) >= {
        "yelp-polarity", "yelp-full", "agnews", "yahoo", "mnli", "mnli-mm", "xstance",
        "xstance-de", "xstance-fr", "boolq", "cb", "copa", "rte", "wic", "wsc", "multirc",
        "record", "ax-b", "ax-g"}
    assert get_task("agnews").labels == ["1", "2", "3", "4"]
    assert get_task("yahoo").labels == [str(i) for i in range(1, 11)]
    assert get_task("mnli").labels == ["contradiction", "entailment", "neutral"]
    assert get_task("cb").labels == ["entailment", "contradiction", "neutral"]
    assert get_task("wic").labels == ["F", "T"]
    assert get_task("mnli-mm").splits["dev"] == "dev_mismatched.tsv"


def test_agnews_backslashes_and_splits():
    train = load("agnews", "train")
    assert [e.label for e in train] == ["3", "2", "1", "4", "1", "2"]
    assert [e.guid for e in train[:2]] == ["train-0", "train-1"]
    assert train[0].text_a == "Harbor Bank profit climbs"
    assert train[0].text_b == "Harbor Bank said quarterly profit rose 8 percent on strong lending."
    # AG News replaces only backslashes: the "n" of a literal backslash-n stays.
    assert train[3].text_b == (
        'A startup unveiled a processor that doubles speed, "twice as fast" nsays CEO.')
    dev, test = load("agnews", "dev"), load("agnews", "test")
    assert [e.text_a for e in dev] == [e.text_a for e in test] == [
        "Browser update ships", "Shares slip"]
    assert dev[0].guid == "dev-0" and dev[0].label == "4"
    unlabeled = load("agnews", "unlabeled")
    assert [e.label for e in unlabeled] == [None] * 6
    assert [e.text_b for e in unlabeled] == [e.text_b for e in train]


def test_yelp_and_yahoo_cleaning():
    pol = load("yelp-polarity", "train")
    assert [(e.label, e.text_a, e.text_b) for e in pol] == [
        ("1", "The soup was cold. The waiter ignored us.", None),
        ("2", "Lovely patio, friendly staff and great tacos.", None),
        ("2", "Best coffee on the block.", None)]
    assert [e.label for e in load("yelp-full", "train")] == ["5", "1", "3", "4", "2"]
    yahoo = load("yahoo", "train")
    assert yahoo[0].text_a == "Why is the sky blue? I always wondered about it."
    assert yahoo[0].text_b == "Sunlight scatters off air molecules; blue light scatters most."
    assert yahoo[1].text_a == "Who won the 1998 cup? "  # title + " " + empty body
    assert yahoo[2].text_a == "How are senators elected? In my country I mean."
    assert [e.label for e in yahoo] == ["2", "6", "10"]


def test_mnli_columns_and_dev_files():
    train = load("mnli", "train")
    assert [(e.guid, e.label) for e in train] == [
        ("train-0", "contradiction"), ("train-1", "entailment"), ("train-2", "neutral")]
    assert train[0].text_a == 'The cat slept on the "warm" mat.'  # quotes are plain text in TSV
    assert train[0].text_b == "The cat was awake."
    matched = load("mnli", "dev")
    assert [(e.guid, e.text_b, e.label) for e in matched] == [
        ("dev-7", "Someone is cooking.", "entailment")]
    mismatched = load("mnli-mm", "dev", folder="mnli")
    assert [e.label for e in mismatched] == ["contradiction", "neutral"]
    with pytest.raises(ValueError, match=r"no 'test' split.*dev <- dev_matched\.tsv"):
        load("mnli", "test")


def test_xstance_language_filter():
    all_ = load("xstance", "train")
    assert [e.guid for e in all_] == ["11", "12", "13", "14", "15"]
    de = load("xstance-de", "train", folder="xstance")
    fr = load("xstance-fr", "train", folder="xstance")
    assert [(e.guid, e.label) for e in de] == [("11", "FAVOR"), ("13", "AGAINST")]
    assert [e.guid for e in fr] == ["12", "14"]
    assert fr[0].text_a == "Faut-il une taxe carbone?" and fr[0].text_b.startswith("Non")


def test_boolq_rte_cb_ax():
    boolq = load("boolq", "train")
    assert [(e.guid, e.label) for e in boolq] == [("train-0", "True"), ("train-1", "False")]
    assert boolq[0].text_a.startswith("The river") and boolq[0].text_b.startswith("is the river")
    assert load("boolq", "test")[0].label is None
    assert [e.label for e in load("boolq", "unlabeled")] == [None, None]
    rte = load("rte", "train")
    # a numeric string idx becomes an int; a non-numeric one becomes the record's position
    assert [e.guid for e in rte] == ["train-0", "train-1", "train-2"]
    assert [e.label for e in rte] == ["entailment", "not_entailment", "not_entailment"]
    assert load("rte", "dev")[0].guid == "dev-0"
    assert [e.label for e in load("cb", "train")] == ["contradiction", "entailment", "neutral"]
    axb = load("ax-b", "test")
    assert (axb[0].text_a, axb[0].text_b) == (
        "The cat sat on the mat.", "The mat was under the cat.")
    assert [e.guid for e in load("ax-b", "train")] == ["train-0", "train-1"]
    axg = load("ax-g", "test")
    assert (axg[0].text_a, axg[0].label) == ("The nurse said she was tired.", "entailment")


def test_wic_labels_and_word():
    wic = load("wic", "train")
    assert [(e.guid, e.label, e.meta["word"]) for e in wic] == [
        ("train-0", "F", "bank"), ("train-1", "T", "run")]
    assert wic[1].text_b == "They run along the beach."
    assert load("wic", "test")[0].label is None


def test_copa_mirrors_train_and_unlabeled():
    train = load("copa", "train")
    assert [(e.guid, e.label) for e in train] == [
        ("train-0", "0"), ("train-1", "1"), ("train-0m", "1"), ("train-1m", "0")]
    original, mirror = train[0], train[2]
    assert mirror.text_a == original.text_a == "The glass fell off the table."
    assert (mirror.meta["choice1"], mirror.meta["choice2"]) == (
        original.meta["choice2"], original.meta["choice1"]) == ("It was full.", "It shattered.")
    assert mirror.meta["question"] == "effect" and mirror.meta["mirrored"]
    assert len(load("copa", "dev")) == 1  # dev is not doubled
    unlabeled = load("copa", "unlabeled")
    assert [(e.guid, e.label) for e in unlabeled] == [("unlabeled-4", None), ("unlabeled-4m", None)]


def test_wsc_filter_and_span_repair():
    train = load("wsc", "train")
    assert [e.guid for e in train] == ["train-0", "train-2", "train-3"]  # False examples dropped
    assert all(e.label == "True" for e in train)
    ok, shifted, glued = train
    assert ok.meta == {"idx": 0, "span1_text": "Lucy", "span2_text": "she", "span1_index": 2,
                       "span2_index": 4}
    assert shifted.text_a == "The trophy did not fit in the suitcase because it was too big."
    assert (shifted.meta["span1_index"], shifted.meta["span2_index"]) == (0, 9)
    assert glued.text_a == "Tom called Sam, but nobody answered him ."
    words = glued.text_a.split()
    assert words[glued.meta["span2_index"]] == "him"
    assert [e.label for e in load("wsc", "dev")] == ["False"]  # dev keeps negatives
    assert load("wsc", "unlabeled")[0].label is None


def test_wsc_span_errors(tmp_path):
    words, _, _, _ = repair_wsc_spans("He saw it.", "He", 0, "she", 1)
    assert words is None
    row = {"text": "He saw it.", "idx": 0, "label": True,
           "target": {"span1_text": "He", "span1_index": 0, "span2_text": "she", "span2_index": 1}}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataFileError, match=r"train\.jsonl:1: span2_text 'she'"):
        load_examples("wsc", tmp_path, "train")
    row["target"] = {"span1_text": "the dog", "span1_index": 0, "span2_text": "it",
                     "span2_index": 2}
    row["text"] = "He saw it ."
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.warns(UserWarning, match=r"train\.jsonl:1: span1_text 'the dog'"):
        assert len(load_examples("wsc", tmp_path, "train")) == 1


def test_multirc_one_example_per_answer():
    train = load("multirc", "train")
    assert [(e.guid, e.label) for e in train] == [
        ("train-p4-q0-a0", "1"), ("train-p4-q0-a1", "0"), ("train-p4-q1-a2", "1"),
        ("train-p4-q1-a3", "0"), ("train-p4-q1-a4", "1")]
    last = train[-1]
    assert last.text_a.startswith("Lena planted") and last.text_b == "When were the plants tall?"
    assert last.meta == {"passage_idx": 4, "question_idx": 1, "answer_idx": 4,
                         "question": "When were the plants tall?", "answer": "By August"}
    assert load("multirc", "test")[0].label is None


def test_record_candidates():
    train = load("record", "train")
    lines = (DATA / "record" / "train.jsonl").read_text().splitlines()
    passage = json.loads(lines[0])["passage"]
    entities = list(dict.fromkeys(passage["text"][e["start"]:e["end"] + 1]
                                  for e in passage["entities"]))
    assert len(entities) == 12
    # question 0 has one distinct answer, question 1 two -> three training examples
    assert [e.guid for e in train] == ["train-p0-q0-a0", "train-p0-q1-a0", "train-p0-q1-a1"]
    assert train[0].text_a == passage["text"].replace("@highlight\n", "- ")
    assert "@highlight" not in train[0].text_a and "\n- Oslo summit ends" in train[0].text_a
    shuffler = random.Random(42)  # one shuffler per file, used in example order
    for example, answer in zip(train, ["Oslo", "Chile", "Kenya"], strict=True):
        gold = ["Oslo"] if answer == "Oslo" else ["Chile", "Kenya"]
        others = [e for e in entities if e not in gold]
        shuffler.shuffle(others)
        assert example.meta["candidates"] == [answer] + others[:9]
        assert example.meta["answers"] == [answer] and example.label == "1"
        assert "@placeholder" in example.text_b == example.meta["query"]
    assert load("record", "train") == train  # deterministic
    dev = load("record", "dev")
    assert [(e.guid, e.meta["candidates"], e.meta["answers"]) for e in dev] == [
        ("dev-p0-q7", ["Rome", "Milan"], ["Rome"])]
    assert dev[0].text_a == "Rome beat Milan 2-1.\n- Rome win derby"
    assert load("record", "test")[0].meta["answers"] == []


def test_demo_dataset_is_balanced_agnews():
    train = load_examples("agnews", DEMO, "train")
    test = load_examples("agnews", DEMO, "test")
    assert len(train) == 400 and len(test) == 200
    for examples, per_label in ((train, 100), (test, 50)):
        assert {lab: sum(e.label == lab for e in examples) for lab in "1234"} == dict.fromkeys(
            "1234", per_label)
    assert not {(e.text_a, e.text_b) for e in train} & {(e.text_a, e.text_b) for e in test}


# --- bad input ------------------------------------------------------------------------------


def test_unknown_task_and_split(tmp_path):
    with pytest.raises(KeyError, match=r"unknown task 'nope'; known tasks: .*agnews"):
        get_task("nope")
    with pytest.raises(ValueError, match="split must be one of"):
        load_examples("agnews", DATA / "agnews", "validation")


def test_missing_file_lists_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "test.csv"))) as err:
        load_examples("agnews", tmp_path, "dev")
    message = str(err.value)
    assert str(tmp_path / "test.csv") in message and "'dev' split from 'test.csv'" in message
    assert "train <- train.csv" in message and "unlabeled <- train.csv" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples("boolq", tmp_path / "missing", "unlabeled")


@pytest.mark.parametrize("content, line, pattern", [
    ('"1","a","b"\n"2","only two"\n', 2, "row has 2 columns but expected 3"),
    ('"1","multi\nline","b"\n"2","x","y","z"\n', 3, "row has 4 columns"),
    ('"1","a","b"\n"3","x,"y\n', 2, "malformed CSV record"),
    ('"1","a","b"\n"5","x","y"\n', 2, r"unknown label '5'; this task's labels are \['1'"),
])
def test_bad_csv_rows(tmp_path, content, line, pattern):
    (tmp_path / "train.csv").write_text(content)
    with pytest.raises(DataFileError, match=rf"train\.csv:{line}: {pattern}"):
        load_examples("agnews", tmp_path, "train")


def test_bad_tsv(tmp_path):
    header = "\t".join(f"c{i}" for i in range(12))
    row = "\t".join(["0"] + ["x"] * 10 + ["neutral"])
    (tmp_path / "train.tsv").write_text(f"{header}\n{row}\n{row}\tEXTRA\n")
    with pytest.raises(DataFileError, match=r"train\.tsv:3: row has 13 columns but the header"):
        load_examples("mnli", tmp_path, "train")
    (tmp_path / "train.tsv").write_text(f"{header}\n{row[:-7]}maybe\n")
    with pytest.raises(DataFileError, match=r"train\.tsv:2: unknown label 'maybe'"):
        load_examples("mnli", tmp_path, "train")
    (tmp_path / "train.tsv").write_text("a\tb\n")
    with pytest.raises(DataFileError, match=r"train\.tsv:1: a GLUE MNLI header"):
        load_examples("mnli", tmp_path, "train")


@pytest.mark.parametrize("task, lines, line, pattern", [
    ("boolq", ['{"idx": 0, "passage": "p", "question": "q"}', '{"idx": 1, "passage": '], 2,
     "invalid JSON"),
    ("boolq", ['[1, 2]'], 1, "expected a JSON object, got list"),
    ("boolq", ['{"idx": 0, "question": "q", "label": true}'], 1, "missing field 'passage'"),
    ("boolq", ['{"idx": 0, "passage": "p", "question": "q", "label": "maybe"}'], 1,
     "unknown label 'maybe'"),
    ("rte", ['{"idx": 0, "premise": "p", "hypothesis": 3}'], 1,
     "field 'hypothesis' should be str"),
    ("wic", ['{"idx": 0, "sentence1": "a", "sentence2": "b", "word": "w", "label": "yes"}'], 1,
     "WiC label must be true or false"),
    ("copa", ['{"idx": 0, "premise": "p", "choice1": "a", "choice2": "b", "question": "why"}'],
     1, "COPA question must be 'cause' or 'effect'"),
    ("multirc", ['{"idx": 0, "passage": {"text": "t", "questions": [{"question": "q", "idx": 0, '
                 '"answers": [{"idx": 0, "label": 1}]}]}}'], 1,
     r"missing field 'passage\.questions\[0\]\.answers\[0\]\.text'"),
    ("record", ['{"idx": 0, "passage": {"text": "ab", "entities": [{"start": 0, "end": 5}]}, '
                '"qas": []}'], 1, "entity span"),
])
def test_bad_jsonl(tmp_path, task, lines, line, pattern):
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFileError, match=rf"train\.jsonl:{line}: {pattern}"):
        load_examples(task, tmp_path, "train")


def test_empty_split_and_invalid_utf8(tmp_path):
    (tmp_path / "train.csv").write_text("\n")
    with pytest.raises(DataFileError, match=r"train\.csv: the 'train' split of task 'agnews' "
                       "has no examples"):
        load_examples("agnews", tmp_path, "train")
    row = {"text": "He saw it .", "idx": 0, "label": False,
           "target": {"span1_text": "He", "span1_index": 0, "span2_text": "it", "span2_index": 2}}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataFileError, match="has no examples"):  # WSC train keeps only True
        load_examples("wsc", tmp_path, "train")
    (tmp_path / "test.csv").write_bytes(b'"1","ok","fine"\n"2","bad \xff byte","x"\n')
    with pytest.raises(DataFileError, match=r"test\.csv:\d+: not valid utf-8"):
        load_examples("agnews", tmp_path, "test")


def test_register_task_checks(tmp_path):
    def reader(path, split):
        return [__import__("jaxpet.data.example", fromlist=["Example"]).Example(
            guid=f"{split}-0", text_a=Path(path).read_text().strip(), label="maybe")]

    (tmp_path / "a.txt").write_text("hello")
    spec = register_task("test-python-task", reader, ["yes", "no"], {"train": "a.txt"},
                         overwrite=True)
    assert get_task("test-python-task") is spec
    with pytest.raises(DataFileError, match=r"a\.txt: example 'train-0' has unknown label"):
        load_examples("test-python-task", tmp_path, "train")
    with pytest.raises(ValueError, match="already registered"):
        register_task("test-python-task", reader, ["yes"], {"train": "a.txt"})
    with pytest.raises(ValueError, match="built-in task"):
        register_task("agnews", reader, ["1"], {"train": "a.txt"}, overwrite=True)
    with pytest.raises(ValueError, match="files must map splits"):
        register_task("test-python-task-2", reader, ["1"], {"validation": "a.txt"})


def test_examples_to_dataset():
    from jaxpet.data.files import examples_to_dataset

    examples = load("copa", "train")
    dataset = examples_to_dataset(examples)
    assert dataset.num_rows == 4 and dataset["guid"] == [e.guid for e in examples]
    assert [json.loads(m) for m in dataset["meta"]] == [e.meta for e in examples]
    assert dataset["label"] == ["0", "1", "1", "0"]
