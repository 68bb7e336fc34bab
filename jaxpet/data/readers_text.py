"""Readers for the original PET's text-classification tasks: Yelp, AG News, Yahoo, MNLI, X-Stance.

These datasets ship a training file and a test file only. As in the original PET, "dev" reads
the test file and "unlabeled" reads the training file (`load_examples` drops its labels);
jaxpet additionally lets "test" read the same test file (MNLI has no "test" split: GLUE's
test files carry no labels and other columns). Guids are "<split>-<row index>" (0-based
record index in the file; MNLI: "<split>-<first column>", X-Stance: the record's `id`).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence

from jaxpet.data.example import Example
from jaxpet.data.files import DataFileError, check_label, get_field, read_delimited, read_jsonl


def _clean(text: str, newlines: bool = True) -> str:
    # The CSV dumps escape line breaks as a literal backslash-n; both it and stray backslashes
    # become spaces, exactly as the original PET does.
    if newlines:
        text = text.replace("\\n", " ")
    return text.replace("\\", " ")


def read_yelp(path: str, split: str, labels: Sequence[str]) -> list[Example]:
    """Yelp CSV without header, rows `label, review`."""
    examples = []
    for idx, (line, (label, body)) in enumerate(read_delimited(path, num_columns=2)):
        examples.append(Example(guid=f"{split}-{idx}", text_a=_clean(body),
                                label=check_label(label, labels, path, line)))
    return examples


def read_agnews(path: str, split: str, labels: Sequence[str]) -> list[Example]:
    """AG News CSV without header, rows `label, headline, body`; text_a/text_b = headline/body.

    Only backslashes become spaces here (not the two-character "\\n"), as in the original PET.
    """
    examples = []
    for idx, (line, (label, headline, body)) in enumerate(read_delimited(path, num_columns=3)):
        examples.append(Example(
            guid=f"{split}-{idx}", text_a=_clean(headline, newlines=False),
            text_b=_clean(body, newlines=False), label=check_label(label, labels, path, line)))
    return examples


def read_yahoo(path: str, split: str, labels: Sequence[str]) -> list[Example]:
    """Yahoo Answers CSV without header, rows `label, title, body, answer`.

    text_a = title + " " + body, text_b = answer.
    """
    examples = []
    rows = read_delimited(path, num_columns=4)
    for idx, (line, (label, title, body, answer)) in enumerate(rows):
        examples.append(Example(
            guid=f"{split}-{idx}", text_a=f"{_clean(title)} {_clean(body)}",
            text_b=_clean(answer), label=check_label(label, labels, path, line)))
    return examples


def read_mnli(path: str, split: str, labels: Sequence[str]) -> list[Example]:
    """GLUE MNLI TSV: header skipped; text_a = column 8, text_b = column 9, label = last column.

    Quote characters are ordinary text (GLUE's TSVs are unquoted); every row must have as many
    columns as the header.
    """
    examples = []
    rows = read_delimited(path, delimiter="\t", quoting=csv.QUOTE_NONE, encoding="utf-8-sig",
                          header=True)
    for line, row in rows:
        if line == 1:
            if len(row) < 11:
                raise DataFileError(path, f"a GLUE MNLI header has at least 11 columns "
                                    f"(sentence1 is column 8, sentence2 column 9, the label the "
                                    f"last); this one has {len(row)}", line)
            continue
        examples.append(Example(guid=f"{split}-{row[0]}", text_a=row[8], text_b=row[9],
                                label=check_label(row[-1], labels, path, line)))
    return examples


def read_xstance(path: str, split: str, labels: Sequence[str],
                 language: str | None = None) -> list[Example]:
    """X-Stance JSON Lines with fields label, id, question, comment, language.

    With `language` set, records of other languages are left out (that is the task's
    definition: xstance-de / xstance-fr). The question and comment must be JSON strings: the
    original PET passes them to the tokenizer as they are, which fails on a number, so a record
    with a non-string text is refused naming the file, line and field rather than converted.
    """
    examples = []
    for line, obj in read_jsonl(path):
        fields = {k: get_field(obj, k, path, line, str if k in ("question", "comment") else None)
                  for k in ("label", "id", "question", "comment", "language")}
        if language is not None and fields["language"] != language:
            continue
        examples.append(Example(
            guid=str(fields["id"]), text_a=fields["question"], text_b=fields["comment"],
            label=check_label(fields["label"], labels, path, line),
            meta={"language": fields["language"]}))
    return examples


def _task(reader, labels: list[str], files: dict[str, str], **kwargs):
    return functools.partial(reader, labels=labels, **kwargs), labels, files


_CSV_FILES = {"train": "train.csv", "dev": "test.csv", "test": "test.csv",
              "unlabeled": "train.csv"}
_XSTANCE_FILES = {"train": "train.jsonl", "dev": "test.jsonl", "test": "test.jsonl",
                  "unlabeled": "train.jsonl"}
_MNLI_LABELS = ["contradiction", "entailment", "neutral"]
_XSTANCE_LABELS = ["FAVOR", "AGAINST"]

# name -> (reader(path, split), labels, files per split)
TASKS = {
    "yelp-polarity": _task(read_yelp, ["1", "2"], _CSV_FILES),
    "yelp-full": _task(read_yelp, ["1", "2", "3", "4", "5"], _CSV_FILES),
    "agnews": _task(read_agnews, ["1", "2", "3", "4"], _CSV_FILES),
    "yahoo": _task(read_yahoo, [str(i) for i in range(1, 11)], _CSV_FILES),
    "mnli": _task(read_mnli, _MNLI_LABELS,
                  {"train": "train.tsv", "dev": "dev_matched.tsv", "unlabeled": "train.tsv"}),
    "mnli-mm": _task(read_mnli, _MNLI_LABELS,
                     {"train": "train.tsv", "dev": "dev_mismatched.tsv",
                      "unlabeled": "train.tsv"}),
    "xstance": _task(read_xstance, _XSTANCE_LABELS, _XSTANCE_FILES),
    "xstance-de": _task(read_xstance, _XSTANCE_LABELS, _XSTANCE_FILES, language="de"),
    "xstance-fr": _task(read_xstance, _XSTANCE_LABELS, _XSTANCE_FILES, language="fr"),
}
