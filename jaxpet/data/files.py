"""Line-accurate reading of task data files (CSV, TSV, JSON Lines) with file:line errors.

Task files are read with Python's own `csv` and `json` modules in one streaming pass. That
choice is deliberate: it yields the exact (1-based) line on which every record starts, keeps
every CSV field a string exactly as written, and accepts JSON Lines whose fields change type
from line to line (e.g. an `idx` that is sometimes a string). Loading through
`datasets`/pandas/Arrow would coerce "NA"-like fields to nulls, infer numeric types for label
columns, reject heterogeneous JSON lines, and lose the line numbers the error messages need.
Use `examples_to_dataset` to turn the resulting examples into a `datasets.Dataset`.

Blank (whitespace-only) lines carry no record and are ignored; a UTF-8 byte-order mark at
the start of a file is dropped; every other malformed line raises `DataFileError`.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from jaxpet.data.example import Example


class DataFileError(ValueError):
    """A problem with a task data file; the message names the file and, where known, the line."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = os.fspath(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def read_delimited(
    path: str | os.PathLike,
    *,
    delimiter: str = ",",
    quoting: int = csv.QUOTE_MINIMAL,
    encoding: str = "utf-8-sig",
    num_columns: int | None = None,
    header: bool = False,
) -> Iterator[tuple[int, list[str]]]:
    """Yield `(line, row)` for every record of a CSV/TSV file; `line` is where the record starts.

    With `header=True` the first record is the header and is yielded like any other row.
    When `num_columns` is None the first record (header or not) fixes the column count every
    later row must have. A row with another number of columns raises `DataFileError` naming
    its line.
    """
    path = os.fspath(path)
    with open(path, encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
        start = 1
        expected = num_columns
        first = True
        try:
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or (len(row) == 1 and not row[0].strip() and expected != 1):
                    continue
                if first and expected is None:
                    expected = len(row)
                if len(row) != expected:
                    what = ("expected" if num_columns is not None else
                            "the header has" if header else "the first row has")
                    raise DataFileError(
                        path,
                        f"row has {len(row)} columns but {what} {expected} "
                        f"(delimiter {delimiter!r})",
                        line,
                    )
                first = False
                yield line, row
        except csv.Error as e:
            raise DataFileError(path, f"malformed {_format_name(delimiter)} record: {e}",
                                start) from None
        except UnicodeDecodeError as e:
            # the decoder reads ahead in blocks, so `start` is not where the bad byte is
            raise DataFileError(path, f"not valid {encoding} text ({e.reason})",
                                _undecodable_line(path, encoding) or start) from None


def _undecodable_line(path: str, encoding: str) -> int | None:
    """The 1-based line of the first byte that `encoding` cannot decode, or None."""

    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError:
                return line_no
    return None


def _format_name(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def read_jsonl(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[tuple[int, dict]]:
    """Yield `(line, object)` for every line of a JSON Lines file; each line must be an object."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataFileError(path, f"not valid {encoding} text ({e.reason})",
                                    line_no) from None
            if line_no == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataFileError(path, f"invalid JSON: {e.msg} (column {e.colno})",
                                    line_no) from None
            if not isinstance(obj, dict):
                raise DataFileError(
                    path, f"expected a JSON object, got {type(obj).__name__}", line_no)
            yield line_no, obj


_MISSING = object()


def get_field(
    obj: dict,
    key: str,
    path: str | os.PathLike,
    line: int,
    types: type | tuple[type, ...] | None = None,
    default: Any = _MISSING,
    within: str = "",
) -> Any:
    """`obj[key]` (a dotted key walks nested objects), or a `DataFileError` naming file and line.

    With `default` given, a missing key returns it instead of raising. With `types` given, the
    value must be an instance of one of them. `within` names the enclosing object in messages
    (e.g. "passage.questions[2]").
    """
    name = f"{within}.{key}" if within else key
    value: Any = obj
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            if default is not _MISSING:
                return default
            raise DataFileError(path, f"missing field '{name}'", line)
        value = value[part]
    if types is not None and not isinstance(value, types):
        names = (
            "/".join(t.__name__ for t in types) if isinstance(types, tuple) else types.__name__
        )
        raise DataFileError(
            path, f"field '{name}' should be {names}, got {type(value).__name__} {value!r}", line)
    return value


def check_label(
    label: str | None, labels: Sequence[str], path: str | os.PathLike, line: int
) -> str | None:
    """Return `label` if the task knows it (or it is None), else raise naming file and line."""
    if label is not None and label not in labels:
        raise DataFileError(path, f"unknown label {label!r}; this task's labels are "
                            f"{list(labels)}", line)
    return label


def examples_to_dataset(examples: Sequence[Example]):
    """A `datasets.Dataset` with columns guid, text_a, text_b, label and meta (as JSON text);
    needs the `datasets` extra (pip install jaxpet[datasets])."""
    try:
        import datasets  # imported lazily: it is slow to import and optional
    except ImportError:
        raise ImportError("examples_to_dataset needs the datasets package: pip install "
                          "jaxpet[datasets]") from None

    return datasets.Dataset.from_dict({
        "guid": [e.guid for e in examples],
        "text_a": [e.text_a for e in examples],
        "text_b": [e.text_b for e in examples],
        "label": [e.label for e in examples],
        "meta": [json.dumps(e.meta) for e in examples],
    })
