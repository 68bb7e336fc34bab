"""task.hf_dataset: a task's splits from a save_to_disk folder give the examples its files give."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from test_train_cli import build_workspace

from jaxpet.cli import train_main
from jaxpet.config import ConfigError, load_config
from jaxpet.data.hf_dataset import HfDatasetError, hf_task, register_hf_task
from jaxpet.data.tasks import get_task, load_examples
from jaxpet.runs.fingerprint import run_fingerprint
from jaxpet.runs.outputs import read_jsonl

AGNEWS_NAMES = ["World", "Sports", "Business", "Sci/Tech"]  # the hub's ClassLabel of AG News


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _agnews_split(rows: list[list[str]], class_label: bool) -> datasets.Dataset:
    """One AG News split as the hub shapes it (title, description, label), built from the CSV
    rows by hand: label strings "1".."4", or ClassLabel indices 0..3."""
    features = datasets.Features({
        "title": datasets.Value("string"), "description": datasets.Value("string"),
        "label": (datasets.ClassLabel(names=AGNEWS_NAMES) if class_label
                  else datasets.Value("string"))})
    return datasets.Dataset.from_dict({
        "title": [r[1] for r in rows], "description": [r[2] for r in rows],
        "label": [int(r[0]) - 1 if class_label else r[0] for r in rows]}, features=features)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """build_workspace's AG News CSVs and tiny BERT, plus the same data as save_to_disk
    folders: a DatasetDict with string labels, one with ClassLabel indices."""
    ws = build_workspace(tmp_path_factory.mktemp("hf_dataset"))
    train, test = _csv_rows(ws["data"] / "train.csv"), _csv_rows(ws["data"] / "test.csv")
    for name, class_label in (("agnews_hf", False), ("agnews_hf_classlabel", True)):
        datasets.DatasetDict(train=_agnews_split(train, class_label),
                             test=_agnews_split(test, class_label)).save_to_disk(
            str(ws["root"] / name))
        ws[name] = ws["root"] / name
    return ws


COLUMNS = {"text_a": "title", "text_b": "description"}


def _fields(examples) -> list[tuple]:
    return [(e.guid, e.text_a, e.text_b, e.label, e.meta) for e in examples]


@pytest.mark.parametrize("folder", ["agnews_hf", "agnews_hf_classlabel"])
@pytest.mark.parametrize("split", ["train", "dev", "test", "unlabeled"])
def test_builtin_task_reads_the_same_examples_as_its_csv_files(workspace, folder, split):
    spec = hf_task({"path": str(workspace[folder]), "columns": COLUMNS}, "agnews",
                   base=get_task("agnews"))
    from_csv = load_examples("agnews", workspace["data"], split)
    from_hf = load_examples(spec, None, split)
    assert _fields(from_hf) == _fields(from_csv)
    # the few-shot sample is drawn from the same examples in the same order
    assert _fields(load_examples(spec, None, split, 5, seed=3)) == _fields(
        load_examples("agnews", workspace["data"], split, 5, seed=3))


def test_config_defined_task_reads_the_same_examples_as_its_jsonl_files(tmp_path):
    records = {"train": [("a fine day", "pos", 7), ("grey rain", "neg", 8), ("sun", "pos", 9)],
               "dev": [("cold wind", "neg", 1), ("warm sea", "pos", 2)]}
    for split, rows in records.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(
            json.dumps({"sentence": t, "mood": m, "id": i}) + "\n" for t, m, i in rows))
    file_task = register_task_from_files(tmp_path)
    # the dataset's ClassLabel lists the labels in another order than the task: names decide
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "mood": datasets.ClassLabel(names=["pos", "neg"]),
                                  "id": datasets.Value("int64")})
    datasets.DatasetDict({split: datasets.Dataset.from_dict(
        {"sentence": [t for t, _, _ in rows], "mood": [["pos", "neg"].index(m) for _, m, _ in rows],
         "id": [i for _, _, i in rows]}, features=features) for split, rows in records.items()}
    ).save_to_disk(str(tmp_path / "moods_hf"))
    spec = register_hf_task("moods-hf", {"labels": ["neg", "pos"]}, {
        "path": str(tmp_path / "moods_hf"),
        "columns": {"text_a": "sentence", "label": "mood", "guid": "id"}})
    for split in ("train", "dev"):
        assert _fields(load_examples("moods-hf", None, split)) == _fields(
            load_examples(file_task, None, split))
    assert spec.labels == ["neg", "pos"]


def register_task_from_files(folder: Path):
    from jaxpet.data.custom import task_from_config

    return task_from_config({"name": "moods-files", "format": "jsonl", "text_a": "sentence",
                             "label": "mood", "guid": "id", "labels": ["neg", "pos"],
                             "files": {"train": "train.jsonl", "dev": "dev.jsonl"},
                             "data_dir": str(folder)})


def test_superglue_task_takes_idx_and_validation_split(tmp_path):
    """RTE from the hub's layout (premise, hypothesis, idx, ClassLabel; 'validation'), against
    the SuperGLUE reader on the same records."""
    rows = [("A man sleeps.", "A person rests.", 10, "entailment"),
            ("It rains.", "The sun shines.", 4, "not_entailment")]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(
        {"premise": p, "hypothesis": h, "idx": i, "label": lab}) + "\n" for p, h, i, lab in rows))
    names = ["entailment", "not_entailment"]
    datasets.DatasetDict(validation=datasets.Dataset.from_dict(
        {"premise": [r[0] for r in rows], "hypothesis": [r[1] for r in rows],
         "idx": [r[2] for r in rows], "label": [names.index(r[3]) for r in rows]},
        features=datasets.Features({"premise": datasets.Value("string"),
                                    "hypothesis": datasets.Value("string"),
                                    "idx": datasets.Value("int32"),
                                    "label": datasets.ClassLabel(names=names)}))
    ).save_to_disk(str(tmp_path / "rte_hf"))
    spec = hf_task({"path": str(tmp_path / "rte_hf"),
                    "columns": {"text_a": "premise", "text_b": "hypothesis"}}, "rte",
                   base=get_task("rte"))
    assert _fields(load_examples(spec, None, "dev")) == _fields(
        load_examples("rte", tmp_path, "dev"))


def _hf_yaml(workspace: dict, path: Path) -> Path:
    """The workspace's config reading the dataset folder, written to `path`: no task.data_dir
    (the CSV files are out of reach)."""
    tree = yaml.safe_load(workspace["config"].read_text())
    del tree["task"]["data_dir"]
    tree["task"]["hf_dataset"] = {"path": str(workspace["agnews_hf"]), "columns": COLUMNS}
    path.write_text(yaml.safe_dump(tree))
    return path


def _hf_config(workspace: dict, out: Path, *extra: str):
    return load_config(_hf_yaml(workspace, out.parent / "hf.yaml"), [f"output_dir={out}", *extra])


RUN = ["pet.pattern_ids=[0]", "pet.max_steps=2", "no_distillation=true", "eval.zero_shot=false"]


@pytest.mark.slow
def test_train_py_run_on_a_dataset_equals_the_run_on_its_csv_files(workspace):
    """Two 2-step PET runs, one on the CSV files and one on the save_to_disk folder: the same
    examples in the same order give the same batches, so the same trained scores."""
    root = workspace["root"]
    hf_yaml = _hf_yaml(workspace, root / "hf-run.yaml")
    for out, config in ((root / "out-csv", workspace["config"]), (root / "out-hf", hf_yaml)):
        assert train_main(["--config", str(config), f"output_dir={out}", *RUN]) == 0
    csv_NxL = np.load(root / "out-csv" / "p0-s0" / "eval_logits.npy")
    hf_NxL = np.load(root / "out-hf" / "p0-s0" / "eval_logits.npy")
    # same data, same seeds, same programs: equal up to float reordering (1e-6 catches one
    # example out of place, which changes a row completely)
    np.testing.assert_allclose(hf_NxL, csv_NxL, atol=1e-6)
    results = json.loads((root / "out-hf" / "results.json").read_text())
    gold = [int(r[0]) - 1 for r in _csv_rows(workspace["data"] / "test.csv")]
    assert results["ensemble"]["metrics"]["acc"] == pytest.approx(
        np.mean(csv_NxL.argmax(-1) == np.asarray(gold)))


def test_the_dataset_folder_enters_the_fingerprint(workspace, tmp_path):
    config = _hf_config(workspace, tmp_path / "out")
    assert config.task.data_dir == ""
    before = run_fingerprint(config)
    files = [k for k in before if k.startswith("task.hf_dataset.path:files/")]
    assert any(k.endswith(".arrow") for k in files)
    assert not any(k.startswith("task.data_dir:files") for k in before)  # not the cwd
    assert before["task.hf_dataset"]["columns"] == COLUMNS
    copy = tmp_path / "changed"
    rows = _csv_rows(workspace["data"] / "train.csv")
    rows[0][1] = "changed headline"
    datasets.DatasetDict(train=_agnews_split(rows, False), test=_agnews_split(rows, False)
                         ).save_to_disk(str(copy))
    after = run_fingerprint(_hf_config(workspace, tmp_path / "out",
                                       f"task.hf_dataset.path={copy}"))
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert "task.hf_dataset" in changed
    assert any(k.startswith("task.hf_dataset.path:files/train/") for k in changed)


def _spec(path: Path, **cfg):
    return hf_task({"path": str(path), **cfg}, "agnews", base=get_task("agnews"))


def test_errors_name_the_dataset_the_key_and_what_exists(workspace, tmp_path):
    folder = workspace["agnews_hf"]
    with pytest.raises(HfDatasetError, match=rf"{folder} \[split 'train'\]: no column 'headline' "
                       r"\(config key 'task.hf_dataset.columns.text_a'\); its columns are "
                       r"\['title', 'description', 'label'\]"):
        load_examples(_spec(folder, columns={"text_a": "headline"}), None, "train")
    with pytest.raises(HfDatasetError, match=r"no column 'text_a' \(the default"):
        load_examples(_spec(folder), None, "train")
    with pytest.raises(HfDatasetError, match=r"no split 'validation' \(config key "
                       r"'task.hf_dataset.splits.dev'\); the dataset has \['test', 'train'\]"):
        load_examples(_spec(folder, columns=COLUMNS, splits={"dev": "validation"}), None, "dev")
    with pytest.raises(HfDatasetError, match=r"'task.hf_dataset.colums': unknown key"):
        _spec(folder, colums=COLUMNS)
    with pytest.raises(HfDatasetError, match=r"task 'copa' needs fields beyond"):
        hf_task({"path": str(folder)}, "copa", base=get_task("copa"))
    with pytest.raises(HfDatasetError, match=r"nowhere: no such folder \(config key "
                       r"'task.hf_dataset.path'"):
        load_examples(_spec(tmp_path / "nowhere", columns=COLUMNS), None, "train")
    with pytest.raises(HfDatasetError, match=rf"{workspace['data']}: not a folder written by "
                       r"Dataset.save_to_disk"):
        load_examples(_spec(workspace["data"], columns=COLUMNS), None, "train")
    # a hub name, offline (conftest): one line, not the loader's traceback
    with pytest.raises(HfDatasetError, match=r"no-such-owner/no-such-set: not a local folder, "
                       r"and loading it from the Hugging Face hub failed"):
        load_examples(hf_task({"path": "no-such-owner/no-such-set", "columns": COLUMNS},
                              "agnews", base=get_task("agnews")), None, "train")


def _labels_dataset(tmp_path: Path, labels: list, dtype: str) -> Path:
    folder = tmp_path / f"labels_{dtype}"
    datasets.Dataset.from_dict(
        {"title": ["a", "b", "c"], "description": ["x", "y", "z"], "label": labels},
        features=datasets.Features({"title": datasets.Value("string"),
                                    "description": datasets.Value("string"),
                                    "label": datasets.Value(dtype)})).save_to_disk(str(folder))
    return folder


def test_a_label_outside_the_task_names_row_and_column(tmp_path):
    folder = _labels_dataset(tmp_path, ["1", "4", "5"], "string")
    with pytest.raises(HfDatasetError, match=rf"{folder} \[split 'train'\], row 2, column "
                       r"'label': unknown label '5'; the task's labels are \['1', '2', '3', '4'\]"):
        load_examples(_spec(folder, columns=COLUMNS), None, "train")
    folder = _labels_dataset(tmp_path, [0, 3, 4], "int64")
    with pytest.raises(HfDatasetError, match=r"row 2, column 'label': class index 4 is outside "
                       r"the task's 4 labels"):
        load_examples(_spec(folder, columns=COLUMNS), None, "train")
    # integers are class indices; -1 (the hub's 'no label') is unlabeled, refused in train
    ok = _labels_dataset(tmp_path / "ok", [0, 3, -1], "int64")
    assert [e.label for e in load_examples(_spec(ok, columns=COLUMNS, splits={"test": "train"}),
                                           None, "test")] == ["1", "4", None]
    with pytest.raises(HfDatasetError, match=r"row 2, column 'label': no label \(-1\) in the "
                       r"'train' split"):
        load_examples(_spec(ok, columns=COLUMNS), None, "train")


def test_without_datasets_the_config_names_the_extra(workspace, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ConfigError, match=r"task.hf_dataset' is set but the datasets package "
                       r"is not installed: pip install jaxpet\[datasets\]"):
        _hf_config(workspace, tmp_path / "out")


T2T_DATA = Path(__file__).resolve().parent / "data" / "t2t"
T5_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "t5_tiny_offline.yaml"


@pytest.mark.slow
def test_text2text_reads_dataset_splits_as_its_jsonl_files(tmp_path):
    """reader hf_dataset: the splits of a save_to_disk folder (labels a ClassLabel) give the
    records of the JSONL files, label names included; a 2-step run on each writes the same
    predictions and metrics."""
    from tiny_t5 import make_t5_tokenizer, make_tiny_t5

    from jaxpet.engine.training import FAST_CPU_COMPILE
    from jaxpet.text2text.config import load_text2text_config
    from jaxpet.text2text.run import run

    names = ["positive", "negative"]
    splits = {}
    for split in ("train", "dev"):
        records = [json.loads(line) for line in (T2T_DATA / f"sentiment_{split}.jsonl").open()]
        splits[split] = datasets.Dataset.from_dict(
            {"id": [r["id"] for r in records], "text": [r["text"] for r in records],
             "label": [names.index(r["label"]) for r in records]},
            features=datasets.Features({"id": datasets.Value("string"),
                                        "text": datasets.Value("string"),
                                        "label": datasets.ClassLabel(names=names)}))
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "sentiment_hf"))
    model = tmp_path / "t5"
    make_t5_tokenizer(str(model))
    make_tiny_t5(str(model), "1.0", vocab_size=224, seed=1)
    common = [f"model.name={model}", "text2text.max_steps=2", "mesh.data=1",
              "checkpoint.every=0"]
    files = load_text2text_config(str(T5_CONFIG), [*common, f"text2text.data_dir={T2T_DATA}"],
                                  output_dir=str(tmp_path / "out-files"))
    hf = load_text2text_config(str(T5_CONFIG), [
        *common, "text2text.reader=hf_dataset", "text2text.train_file=train",
        "text2text.eval_file=dev", f"text2text.reader_options.path={tmp_path / 'sentiment_hf'}"],
        output_dir=str(tmp_path / "out-hf"))
    from jaxpet.text2text.data import read_records

    assert read_records(hf.text2text, "train") == read_records(files.text2text,
                                                               "sentiment_train.jsonl")
    results = [run(c, compiler_options=FAST_CPU_COMPILE) for c in (files, hf)]
    assert results[1]["metrics"] == results[0]["metrics"]
    assert [r["prediction"] for r in read_jsonl(tmp_path / "out-hf" / "predictions.jsonl")] == [
        r["prediction"] for r in read_jsonl(tmp_path / "out-files" / "predictions.jsonl")]
    assert any(k.startswith("text2text.reader_options.path:files/train/") for k in json.loads(
        (tmp_path / "out-hf" / "fingerprint.json").read_text()))


def test_datasets_is_an_extra_that_runs_without_hf_dataset_never_import(monkeypatch):
    """make install leaves datasets out: the demo's config, data and fingerprint need none."""
    import tomllib

    from jaxpet.pipelines.setup import load_task_data

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    named = lambda reqs: {r.split(">")[0].split("=")[0].strip().lower() for r in reqs}  # noqa: E731
    assert "datasets" not in named(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "datasets" in named(extras["datasets"]) and "datasets" in named(extras["test"])
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    config = load_config(root / "configs" / "demo.yaml")
    data = load_task_data(config)
    assert len(data.train) == 10 and data.eval and data.unlabeled
    assert any(k.startswith("task.data_dir:files/") for k in run_fingerprint(config))


@pytest.mark.slow
def test_train_py_config_defined_task_on_a_dataset_equals_its_csv_task(workspace):
    """A config-defined task (only its labels, patterns and verbalizer) on the save_to_disk
    folder trains and scores as the same task defined on the CSV files."""
    root = workspace["root"]
    tree = yaml.safe_load(workspace["config"].read_text())
    labels = ["1", "2", "3", "4"]
    shared = {"name": "my-news", "patterns": ["{mask} news : {text_a:shorten} . {text_b:shorten}"],
              "verbalizer": {"1": "world", "2": "sports", "3": "business", "4": "tech"}}
    on_files = {**tree["task"], **shared, "definition": {
        "format": "csv", "text_a": 1, "text_b": 2, "label": 0, "labels": labels,
        "files": {"train": "train.csv", "dev": "test.csv", "unlabeled": "train.csv"}}}
    on_dataset = {**{k: v for k, v in tree["task"].items() if k != "data_dir"}, **shared,
                  "definition": {"labels": labels}, "hf_dataset": {
                      "path": str(workspace["agnews_hf"]), "columns": COLUMNS,
                      "splits": {"dev": "test"}}}
    for name, task in (("files", on_files), ("dataset", on_dataset)):
        path = root / f"my-news-{name}.yaml"
        path.write_text(yaml.safe_dump({**tree, "task": task}))
        assert train_main(["--config", str(path), f"output_dir={root / f'out-my-{name}'}",
                           *RUN]) == 0
    files_NxL = np.load(root / "out-my-files" / "p0-s0" / "eval_logits.npy")
    # as above: 1e-6 catches one example out of place or a text cut differently
    np.testing.assert_allclose(np.load(root / "out-my-dataset" / "p0-s0" / "eval_logits.npy"),
                               files_NxL, atol=1e-6)
    assert len(files_NxL) == len(_csv_rows(workspace["data"] / "test.csv"))
