"""The texts `jaxpet predict` labels, read as Examples from input files or in-memory records."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jaxpet.data.example import Example
from jaxpet.data.files import read_jsonl
from jaxpet.data.hf_dataset import load_splits
from jaxpet.data.tasks import get_task

# input columns with a meaning of their own; every other column or field goes to Example.meta
INPUT_KEYS = ("id", "text_a", "text_b", "choices")

__all__ = ["PredictInputError", "as_examples", "example_from_record", "read_input"]


class PredictInputError(ValueError):
    """An input file jaxpet predict cannot read; the message names the file and line."""


def as_examples(items: Iterable[Any]) -> list[Example]:
    """Examples from Example objects, plain strings (text_a) or dicts with text_a / text_b /
    choices / id (other keys go to meta); ids default to the position."""
    examples = []
    for i, item in enumerate(items):
        if isinstance(item, Example):
            examples.append(item)
        elif isinstance(item, str):
            examples.append(Example(guid=str(i), text_a=item))
        elif isinstance(item, Mapping):
            examples.append(example_from_record(item, str(i), f"example {i}"))
        else:
            raise TypeError(f"example {i}: expected an Example, a str or a dict with text_a, "
                            f"got {type(item).__name__}")
    return examples


def example_from_record(record: Mapping[str, Any], default_id: str, where: str) -> Example:
    """An Example from an input record; `where` (file:line) names it in errors."""
    if "text_a" not in record:
        raise PredictInputError(f"{where}: no 'text_a' (has {sorted(record)}); each input needs "
                                "text_a, and may have text_b, choices and id")
    for key in ("text_a", "text_b"):
        value = record.get(key)
        if not (isinstance(value, str) or (key == "text_b" and value in (None, ""))):
            raise PredictInputError(f"{where}: {key} must be a string, got {value!r}")
    meta = {k: v for k, v in record.items() if k not in INPUT_KEYS}
    choices = record.get("choices")
    if choices is not None:
        if isinstance(choices, str):  # a CSV cell: a JSON list
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError:
                choices = None
        if not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
            raise PredictInputError(f"{where}: choices must be a list of strings (in CSV: a "
                                    f"JSON list), got {record.get('choices')!r}")
        # COPA's answers are meta choice1, choice2; other multi-token tasks read candidates
        meta.update({f"choice{k + 1}": c for k, c in enumerate(choices)}, candidates=choices)
    guid = record.get("id")
    return Example(guid=default_id if guid in (None, "") else str(guid),
                   text_a=record["text_a"], text_b=record.get("text_b") or None, meta=meta)


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise PredictInputError(f"{name}:{line}: not valid UTF-8 text (byte "
                                f"{error.start})") from None


def read_input(path: str, task: str) -> list[Example]:
    """The examples of an input file: `-` is stdin with one text per line; a .txt file the
    same; JSONL or CSV (header row) with a text_a column; a folder written by datasets'
    save_to_disk with such columns; else the task's own file format (read as its test split,
    labels dropped). Errors name the file and line (the dataset's split and row)."""
    if path == "-":
        return _lines(_decode(sys.stdin.buffer.read(), "stdin"), "stdin")
    file = Path(path)
    if file.is_dir():
        return _dataset_folder(path)
    if not file.is_file():
        raise FileNotFoundError(f"{path}: input file not found")
    text = _decode(file.read_bytes(), path)
    if not text.strip():
        raise PredictInputError(f"{path}: the file is empty; expected JSONL or CSV with a "
                                "text_a column, one text per line (.txt), or the task's format")
    if file.suffix == ".txt":
        return _lines(text, path)
    if file.suffix in (".jsonl", ".json") or text.lstrip()[0] == "{":
        examples, keys = _jsonl(path)
    elif file.suffix in (".csv", ".tsv"):
        examples, keys = _csv(text, path, "\t" if file.suffix == ".tsv" else ",")
    else:
        return _task_file(path, task)
    if examples is not None:
        return examples
    try:  # no text_a: a file in the task's own format (e.g. SuperGLUE JSONL)
        return _task_file(path, task)
    except PredictInputError as error:
        raise PredictInputError(
            f"{path}:1: no 'text_a' column (has {keys}); give text_a, and optionally text_b, "
            f"choices, id, or task {task!r}'s own format, as which it did not read: "
            f"{error.args[0]}") from None


def _dataset_folder(path: str) -> list[Example]:
    """The rows of a save_to_disk folder (its one split, or its "test" split) as inputs."""

    splits = load_splits(path)
    name = next(iter(splits)) if len(splits) == 1 else "test" if "test" in splits else None
    if name is None:
        raise PredictInputError(f"{path}: a dataset with splits {sorted(splits)}; give one "
                                "split (or one named 'test') to label")
    dataset, where = splits[name], f"{path} [split {name!r}]"
    if "text_a" not in dataset.column_names:
        raise PredictInputError(f"{where}: no 'text_a' column (has {dataset.column_names}); "
                                "each input needs text_a, and may have text_b, choices and id")
    examples = [example_from_record(row, str(i), f"{where}, row {i}")
                for i, row in enumerate(dataset.to_list())]
    if not examples:
        raise PredictInputError(f"{where}: no rows")
    return examples


def _lines(text: str, name: str) -> list[Example]:
    examples = [Example(guid=str(n), text_a=line.rstrip("\r"))
                for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not examples:
        raise PredictInputError(f"{name}: no text; expected one text per line")
    return examples


def _jsonl(path: str) -> tuple[list[Example] | None, list[str]]:
    """Generic JSONL inputs and the first record's keys; None when it has no text_a."""
    examples = []
    for n, record in read_jsonl(path, encoding="utf-8-sig"):
        if not examples and "text_a" not in record:
            return None, sorted(record)
        examples.append(example_from_record(record, str(n), f"{path}:{n}"))
    return examples, []


def _csv(text: str, path: str, delimiter: str) -> tuple[list[Example] | None, list[str]]:
    """Generic CSV inputs (a header row naming text_a) and the header; None without text_a."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [(reader.line_num, row) for row in reader if row]
    except csv.Error as error:
        raise PredictInputError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None
    header = rows[0][1]
    if "text_a" not in header:
        return None, header
    examples = []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise PredictInputError(f"{path}:{line}: {len(row)} columns, the header has "
                                    f"{len(header)}")
        examples.append(example_from_record(dict(zip(header, row, strict=True)), str(line),
                                            f"{path}:{line}"))
    if not examples:
        raise PredictInputError(f"{path}: only a header, no rows")
    return examples, header


def _task_file(path: str, task: str) -> list[Example]:
    try:
        examples = get_task(task).reader(path, "test")
    except (ValueError, KeyError) as error:
        raise PredictInputError(
            f"{str(error.args[0]) if isinstance(error, KeyError) else error} (read as task "
            f"{task!r}'s own format; or give JSONL / CSV with a text_a column, and optionally "
            "text_b, choices, id)") from None
    if not examples:
        raise PredictInputError(f"{path}: no examples in task {task!r}'s format")
    return [dataclasses.replace(e, label=None) for e in examples]
