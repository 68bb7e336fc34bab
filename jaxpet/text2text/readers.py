"""Readers for local text-to-text data files: translation TSV/JSONL, CNN/DailyMail JSONL, GLUE TSV
(MNLI, STS-B), SQuAD v1.1 JSON, and splits of a Hugging Face dataset.  Each returns plain dict
records for jaxpet.text2text.tasks."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from typing import Any

from jaxpet.data.files import DataFileError, read_jsonl
from jaxpet.data.hf_dataset import load_splits

Record = dict[str, Any]


def _open(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such data file")
    return open(path, encoding="utf-8", newline="")


def jsonl_records(path: str) -> Iterator[tuple[int, Record]]:
    """(line number, object) of each non-blank line (jaxpet.data.files.read_jsonl, after a
    check that names a missing file as a data file)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such data file")
    return read_jsonl(path)


def _require(record: Any, keys: tuple[str, ...], path: str, line: int | None = None,
             where: str = "") -> None:
    """`record` is an object with `keys`; errors name the file, line and `where` inside it."""
    if not isinstance(record, dict):
        raise DataFileError(path, f"{where}expected an object with field(s) {list(keys)}, "
                            f"found {type(record).__name__}", line)
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataFileError(path, f"{where}missing field(s) {missing}; has {sorted(record)}",
                            line)


def read_translation(path: str, source_key: str = "source",
                     target_key: str = "target") -> list[Record]:
    """Sentence pairs -> [{"source", "target"}].

    .tsv: `source<TAB>target` per line (target optional for inference files: one column).
    .jsonl: objects with `source_key`/`target_key` (e.g. "en"/"de"), either at the top level
    or under "translation" as in WMT dumps."""
    records: list[Record] = []
    if path.endswith(".tsv"):
        with _open(path) as f:
            for line_no, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                cols = line.split("\t")
                if len(cols) > 2:
                    raise DataFileError(path, "expected 'source<TAB>target', found "
                                        f"{len(cols)} columns", line_no)
                records.append({"source": cols[0], "target": cols[1] if len(cols) == 2 else None,
                                "id": f"{line_no}"})
        return records
    for line_no, record in jsonl_records(path):
        pair = record.get("translation", record)
        _require(pair, (source_key,), path, line_no)
        records.append({"source": pair[source_key], "target": pair.get(target_key),
                        "id": str(record.get("id", line_no))})
    return records


def read_cnn_dailymail(path: str) -> list[Record]:
    """CNN/DailyMail-style JSONL with `article` and (for labeled splits) `highlights`."""
    records = []
    for line_no, record in jsonl_records(path):
        _require(record, ("article",), path, line_no)
        records.append({"article": record["article"], "highlights": record.get("highlights"),
                        "id": str(record.get("id", line_no))})
    return records


_GLUE_COLUMNS = {
    # task -> (first text column, second text column, label column, record keys)
    "mnli": ("sentence1", "sentence2", "gold_label", ("premise", "hypothesis")),
    "stsb": ("sentence1", "sentence2", "score", ("sentence1", "sentence2")),
}


def read_glue_tsv(path: str, task: str) -> list[Record]:
    """A GLUE TSV with a header row (MNLI: sentence1/sentence2/gold_label -> premise/hypothesis/
    label; STS-B: sentence1/sentence2/score -> label as float).  Test files without the label
    column give label None."""
    if task not in _GLUE_COLUMNS:
        raise ValueError(
            f"read_glue_tsv: unsupported task {task!r}; known: {sorted(_GLUE_COLUMNS)}")
    first, second, label_col, (key1, key2) = _GLUE_COLUMNS[task]
    records = []
    with _open(path) as f:
        # GLUE files contain stray quote characters inside sentences: read fields verbatim.
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataFileError(path, "empty file")
        missing = [c for c in (first, second) if c not in header]
        if missing:
            raise DataFileError(path, f"header lacks column(s) {missing}; has {header}", 1)
        col = {name: i for i, name in enumerate(header)}
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataFileError(path, f"{len(row)} fields, header has {len(header)}",
                                    line_no)
            label: Any = row[col[label_col]] if label_col in col else None
            if task == "stsb" and label is not None:
                try:
                    label = float(label)
                except ValueError:
                    raise DataFileError(path, f"score {label!r} is not a number",
                                        line_no) from None
            guid = row[col["pairID"]] if "pairID" in col else row[col.get("index", 0)]
            records.append({key1: row[col[first]], key2: row[col[second]], "label": label,
                            "id": guid})
    return records


def read_squad(path: str) -> list[Record]:
    """SQuAD v1.1 JSON -> [{"id", "question", "context", "answers": [texts]}]."""
    with _open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise DataFileError(path, f"invalid JSON ({err.msg})", err.lineno) from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataFileError(path, "not a SQuAD file (no top-level 'data' list)")
    records = []
    for a, article in enumerate(data["data"]):
        _require(article, ("paragraphs",), path, where=f"data[{a}]: ")
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{a}].paragraphs[{p}]"
            _require(paragraph, ("context", "qas"), path, where=f"{where}: ")
            for q, qa in enumerate(paragraph["qas"]):
                _require(qa, ("id", "question"), path, where=f"{where}.qas[{q}]: ")
                for n, answer in enumerate(qa.get("answers", [])):
                    _require(answer, ("text",), path, where=f"{where}.qas[{q}].answers[{n}]: ")
                answers = [answer["text"] for answer in qa.get("answers", [])]
                records.append({"id": qa["id"], "question": qa["question"],
                                "context": paragraph["context"], "answers": answers})
    return records


def read_hf_dataset(path: str, split: str, name: str | None = None) -> list[Record]:
    """The records (one dict per row) of `split` of a Hugging Face dataset: a save_to_disk
    folder or a hub name (needs jaxpet[datasets]). A ClassLabel column gives its label names,
    as a text-to-text target wants them."""

    splits = load_splits(path, name, key="text2text.reader_options")
    if split not in splits:
        raise DataFileError(path, f"no split {split!r}; the dataset has {sorted(splits)}")
    dataset = splits[split]
    names = {column: feature.names for column, feature in dataset.features.items()
             if getattr(feature, "names", None)}
    records = dataset.to_list()
    for record in records:
        for column, labels in names.items():
            value = record[column]
            record[column] = labels[value] if isinstance(value, int) and value >= 0 else value
    return records
