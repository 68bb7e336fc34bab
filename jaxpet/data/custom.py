"""Tasks defined entirely by a config dict (file format, columns or fields, labels, split files).

Example (YAML)::

    task:
      name: my-reviews
      format: csv            # csv | tsv | jsonl
      header: true           # csv/tsv: the first row names the columns (default false)
      text_a: review         # column index (0-based), header name, or JSON field ("a.b" nests)
      text_b: null           # optional second text
      label: stars           # the label column/field
      guid: null             # optional id column/field; default "<split>-<record index>"
      labels: ["1", "2"]     # label strings; file values are compared as str(value)
      files: {train: train.csv, dev: dev.csv, test: test.csv, unlabeled: train.csv}
      data_dir: data         # optional; relative to the config's folder (base_dir)

In JSON Lines files a missing label field gives an unlabeled example (label None); that is
an error in the train and dev splits. In CSV/TSV files every row must have every column.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from jaxpet.data.example import Example
from jaxpet.data.files import DataFileError, check_label, get_field, read_delimited, read_jsonl
from jaxpet.data.tasks import SPLITS, TaskSpec, register_task

_FORMATS = ("csv", "tsv", "jsonl")
_KEYS = {"name", "format", "header", "delimiter", "encoding", "text_a", "text_b", "label",
         "guid", "labels", "files", "data_dir", "description"}
_REQUIRED = ("name", "format", "text_a", "label", "labels", "files")
_COLUMN_KEYS = ("text_a", "text_b", "label", "guid")


class TaskConfigError(ValueError):
    """A task config that jaxpet cannot use; the message names the offending key."""


def _fail(key: str, message: str) -> TaskConfigError:
    return TaskConfigError(f"task config key '{key}': {message}")


def _validate(cfg: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(cfg) - _KEYS)
    if unknown:
        raise _fail(unknown[0], f"unknown key; allowed keys are {sorted(_KEYS)}")
    for key in _REQUIRED:
        if cfg.get(key) is None:
            raise _fail(key, "is required")
    out = dict(cfg)
    if not isinstance(out["name"], str) or not out["name"]:
        raise _fail("name", f"must be a non-empty string, got {out['name']!r}")
    fmt = out["format"]
    if fmt not in _FORMATS:
        raise _fail("format", f"must be one of {list(_FORMATS)}, got {fmt!r}")
    out["header"] = out.get("header", False)
    if not isinstance(out["header"], bool):
        raise _fail("header", f"must be true or false, got {out['header']!r}")
    if fmt == "jsonl" and (out["header"] or out.get("delimiter") is not None):
        raise _fail("header" if out["header"] else "delimiter", "only applies to csv/tsv files")
    delimiter = out.get("delimiter") or ("\t" if fmt == "tsv" else ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise _fail("delimiter", f"must be a single character, got {delimiter!r}")
    out["delimiter"] = delimiter
    out["encoding"] = out.get("encoding") or "utf-8-sig"

    labels = out["labels"]
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
        raise _fail("labels", f"must be a non-empty list of label strings, got {labels!r}")
    out["labels"] = [str(lab) for lab in labels]
    if len(set(out["labels"])) != len(out["labels"]):
        raise _fail("labels", f"has duplicates: {out['labels']}")

    files = out["files"]
    if not isinstance(files, Mapping) or not files:
        raise _fail("files", f"must map splits {list(SPLITS)} to file names, got {files!r}")
    for split, name in files.items():
        if split not in SPLITS:
            raise _fail(f"files.{split}", f"unknown split; splits are {list(SPLITS)}")
        if not isinstance(name, str) or not name:
            raise _fail(f"files.{split}", f"must be a file name, got {name!r}")
    out["files"] = dict(files)

    for key in _COLUMN_KEYS:
        ref = out.get(key)
        if ref is None:
            continue
        if isinstance(ref, bool) or not isinstance(ref, int | str):
            raise _fail(key, f"must be a column index or a name, got {ref!r}")
        if isinstance(ref, int) and (fmt == "jsonl" or ref < 0):
            raise _fail(key, f"{ref} is not usable: " + (
                "jsonl files need a field name" if fmt == "jsonl" else "indices start at 0"))
        if isinstance(ref, str) and fmt != "jsonl" and not out["header"]:
            raise _fail(key, f"names a column ({ref!r}) but the files have no header; "
                        "use a 0-based column index or set header: true")
    return out


def _column_indices(cfg: dict, header: list[str], path: str) -> dict[str, int]:
    indices = {}
    for key in _COLUMN_KEYS:
        ref = cfg.get(key)
        if ref is None:
            continue
        if isinstance(ref, str):
            if ref not in header:
                raise DataFileError(path, f"no column named {ref!r} (task config key '{key}'); "
                                    f"the header has {header}", 1)
            indices[key] = header.index(ref)
        elif ref >= len(header):
            raise DataFileError(path, f"column {ref} (task config key '{key}') does not exist; "
                                f"rows have {len(header)} columns", 1)
        else:
            indices[key] = ref
    return indices


def _read_delimited_task(cfg: dict, path: str, split: str) -> list[Example]:
    quoting = csv.QUOTE_NONE if cfg["format"] == "tsv" else csv.QUOTE_MINIMAL
    rows = read_delimited(path, delimiter=cfg["delimiter"], quoting=quoting,
                          encoding=cfg["encoding"], header=cfg["header"])
    examples: list[Example] = []
    indices: dict[str, int] | None = None
    for line, row in rows:
        if indices is None:
            indices = _column_indices(cfg, row, path)
            if cfg["header"]:
                continue
        values = {key: row[i] for key, i in indices.items()}
        examples.append(_example(cfg, values, split, len(examples), path, line))
    return examples


def _read_jsonl_task(cfg: dict, path: str, split: str) -> list[Example]:
    examples: list[Example] = []
    for line, obj in read_jsonl(path, encoding=cfg["encoding"]):
        values = {}
        for key in _COLUMN_KEYS:
            if cfg.get(key) is None:
                continue
            optional = key == "label" and split in ("test", "unlabeled")
            value = get_field(obj, cfg[key], path, line, default=None if optional else ...)
            if value is ... or (value is None and not optional and key != "guid"):
                what = "missing" if value is ... else "null"
                raise DataFileError(path, f"{what} field '{cfg[key]}' (task config key "
                                    f"'{key}')", line)
            if key in ("text_a", "text_b") and not isinstance(value, str):
                raise DataFileError(path, f"field '{cfg[key]}' (task config key '{key}') "
                                    f"should be text, got {value!r}", line)
            values[key] = value
        examples.append(_example(cfg, values, split, len(examples), path, line))
    return examples


def _example(cfg: dict, values: dict, split: str, index: int, path: str, line: int) -> Example:
    label = values.get("label")
    label = None if label is None else check_label(str(label), cfg["labels"], path, line)
    guid = values.get("guid")
    return Example(guid=f"{split}-{index}" if guid is None else str(guid),
                   text_a=values["text_a"], text_b=values.get("text_b"), label=label)


def _read(cfg: dict, path: str, split: str) -> list[Example]:
    if cfg["format"] == "jsonl":
        return _read_jsonl_task(cfg, path, split)
    return _read_delimited_task(cfg, path, split)


def task_from_config(cfg: Mapping[str, Any], base_dir: str | os.PathLike | None = None
                     ) -> TaskSpec:
    """Build a `TaskSpec` from a config mapping and register it under `cfg["name"]`.

    `base_dir` (usually the config file's folder) anchors a relative `data_dir`; without a
    `data_dir` key the data folder is `base_dir` itself. Registering again under the same
    name replaces the earlier custom task; the name of a built-in task is refused.
    """
    if not isinstance(cfg, Mapping):
        raise TaskConfigError(f"a task config must be a mapping, got {type(cfg).__name__}")
    valid = _validate(cfg)
    data_dir = valid.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
        raise _fail("data_dir", f"must be a folder path, got {data_dir!r}")
    if base_dir is not None:
        data_dir = os.path.normpath(os.path.join(os.fspath(base_dir), os.fspath(data_dir or ".")))
    try:
        return register_task(valid["name"], partial(_read, valid), valid["labels"],
                             valid["files"], overwrite=True,
                             data_dir=None if data_dir is None else os.fspath(data_dir),
                             description=str(valid.get("description") or ""))
    except ValueError as e:
        raise _fail("name", str(e)) from None
