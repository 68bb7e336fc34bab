"""Tasks defined by a config dict: csv/tsv/jsonl reading and config validation errors."""

import json

import pytest

from jaxpet.data.custom import TaskConfigError, task_from_config
from jaxpet.data.files import DataFileError
from jaxpet.data.tasks import get_task, load_examples


def config(**overrides):
    cfg = {"name": "test-custom", "format": "csv", "text_a": 1, "label": 0,
           "labels": ["neg", "pos"], "files": {"train": "train.csv", "unlabeled": "train.csv"}}
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not None}


def test_csv_without_header(tmp_path):
    (tmp_path / "train.csv").write_text('pos,"Great, really",x1\nneg,Dull,x2\n')
    spec = task_from_config(config(text_b=2), base_dir=tmp_path)
    assert get_task("test-custom") is spec and spec.data_dir == str(tmp_path)
    train = load_examples("test-custom", None, "train")
    assert [(e.guid, e.text_a, e.text_b, e.label) for e in train] == [
        ("train-0", "Great, really", "x1", "pos"), ("train-1", "Dull", "x2", "neg")]
    assert [e.label for e in load_examples(spec, tmp_path, "unlabeled")] == [None, None]


def test_tsv_with_header_names_and_data_dir(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dev.tsv").write_text('id\tsentence\tgold\nq7\tsays "hi"\tpos\n')
    spec = task_from_config(config(format="tsv", header=True, text_a="sentence", label="gold",
                                   guid="id", files={"dev": "dev.tsv"}, data_dir="data"),
                            base_dir=tmp_path)
    dev = load_examples(spec, None, "dev")
    assert [(e.guid, e.text_a, e.text_b, e.label) for e in dev] == [
        ("q7", 'says "hi"', None, "pos")]


def test_jsonl_fields(tmp_path):
    rows = [{"uid": 5, "body": {"text": "fine"}, "title": "t", "y": 1},
            {"uid": 6, "body": {"text": "poor"}, "title": "u", "y": 0}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps({"uid": 7, "body": {"text": "?"},
                                                     "title": "v"}) + "\n")
    spec = task_from_config(config(format="jsonl", text_a="body.text", text_b="title",
                                   label="y", guid="uid", labels=[0, 1],
                                   files={"train": "train.jsonl", "test": "test.jsonl"}),
                            base_dir=tmp_path)
    assert spec.labels == ["0", "1"]
    train = load_examples(spec, tmp_path, "train")
    assert [(e.guid, e.text_a, e.text_b, e.label) for e in train] == [
        ("5", "fine", "t", "1"), ("6", "poor", "u", "0")]
    assert load_examples(spec, tmp_path, "test")[0].label is None  # label may be absent in test
    (tmp_path / "train.jsonl").write_text(json.dumps({"uid": 1, "body": {"text": "x"},
                                                      "title": "t"}) + "\n")
    with pytest.raises(DataFileError, match=r"train\.jsonl:1: missing field 'y' .*'label'"):
        load_examples(spec, tmp_path, "train")


@pytest.mark.parametrize("overrides, key", [
    ({"format": None}, "format"),
    ({"format": "xml"}, "format"),
    ({"labels": []}, "labels"),
    ({"labels": "pos"}, "labels"),
    ({"files": {"validation": "x.csv"}}, "files.validation"),
    ({"text_a": "review"}, "text_a"),  # a name but no header
    ({"format": "jsonl", "text_a": 3, "label": "y"}, "text_a"),
    ({"label": -1}, "label"),
    ({"colour": "red"}, "colour"),
    ({"header": "yes"}, "header"),
    ({"name": "agnews"}, "name"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(TaskConfigError, match=rf"task config key '{key}'"):
        task_from_config(config(**overrides))


def test_file_errors_name_the_key(tmp_path):
    (tmp_path / "train.csv").write_text("text,stars\nok,pos\n")
    spec = task_from_config(config(header=True, text_a="text", label="rating"), tmp_path)
    with pytest.raises(DataFileError, match=r"train\.csv:1: no column named 'rating' "
                       r"\(task config key 'label'\)"):
        load_examples(spec, None, "train")
    spec = task_from_config(config(text_a=5), tmp_path)
    with pytest.raises(DataFileError, match=r"column 5 \(task config key 'text_a'\)"):
        load_examples(spec, None, "train")
    (tmp_path / "train.csv").write_text("pos,a\nmeh,b\n")
    spec = task_from_config(config(), tmp_path)
    with pytest.raises(DataFileError, match=r"train\.csv:2: unknown label 'meh'"):
        load_examples(spec, None, "train")


def test_jsonl_null_label_in_train(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"t": "x", "y": None}) + "\n")
    spec = task_from_config(config(format="jsonl", text_a="t", label="y",
                                   files={"train": "train.jsonl"}), tmp_path)
    with pytest.raises(DataFileError, match=r"train\.jsonl:1: null field 'y'"):
        load_examples(spec, None, "train")
