"""T5 text-to-text task formats: (inputs, targets) strings with the prefixes T5 was trained on."""

from __future__ import annotations

import dataclasses
import re
import string
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# ISO codes of the WMT pairs T5 used, and a few more; full language names pass through as given.
LANGUAGE_NAMES = {
    "en": "English", "de": "German", "fr": "French", "ro": "Romanian", "es": "Spanish",
    "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "ru": "Russian", "zh": "Chinese",
    "ja": "Japanese", "cs": "Czech", "fi": "Finnish", "tr": "Turkish", "et": "Estonian",
    "lv": "Latvian", "lt": "Lithuanian", "hi": "Hindi", "gu": "Gujarati", "kk": "Kazakh",
}
MNLI_LABELS = ("entailment", "neutral", "contradiction")
UNKNOWN_TARGET = "<unk>"  # T5's target for unlabeled GLUE examples (label -1)


@dataclasses.dataclass(frozen=True)
class TextPair:
    """One text-to-text example; `targets` is None for unlabeled inputs."""

    inputs: str
    targets: str | None
    guid: str = ""
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def language_name(code_or_name: str) -> str:
    return LANGUAGE_NAMES.get(code_or_name.lower(), code_or_name)


def pad_punctuation(text: str) -> str:
    """Spaces around every character that is not a letter, number, mark, '_' or whitespace, then
    single spaces, as T5's SQuAD preprocessing (accented letters are kept whole, as in mT5)."""
    out = []
    for ch in text:
        keep = ch == "_" or ch.isspace() or unicodedata.category(ch)[0] in "LNM"
        out.append(ch if keep else f" {ch} ")
    return re.sub(r"\s+", " ", "".join(out))


def _join(parts: Sequence[str]) -> str:
    return re.sub(r"\s+", " ", " ".join(parts)).strip()


def translation(text: str, source_language: str, target_language: str,
                target: str | None = None) -> TextPair:
    """`translate English to German: That is good.`"""
    prefix = f"translate {language_name(source_language)} to {language_name(target_language)}:"
    return TextPair(f"{prefix} {text}", target)


def summarization(article: str, highlights: str | None = None) -> TextPair:
    """`summarize: <article>` -> highlights (CNN/DailyMail)."""
    return TextPair(f"summarize: {article}", highlights)


def _label_name(label: Any, names: Sequence[str], where: str) -> str | None:
    if label is None:
        return None
    if isinstance(label, str):
        if label not in names:
            raise ValueError(f"{where}: label {label!r} is not one of {list(names)}")
        return label
    index = int(label)
    if index == -1:
        return UNKNOWN_TARGET
    if not 0 <= index < len(names):
        raise ValueError(f"{where}: label index {index} out of range for {list(names)}")
    return names[index]


def mnli(premise: str, hypothesis: str, label: Any = None) -> TextPair:
    """`mnli hypothesis: ... premise: ...` -> entailment / neutral / contradiction."""
    return TextPair(f"mnli hypothesis: {hypothesis} premise: {premise}",
                    _label_name(label, MNLI_LABELS, "mnli"))


def stsb_target(score: float) -> str:
    """The similarity score rounded to the nearest 0.2 (half to even, as tf.round) as "%.1f"."""
    return f"{np.round(float(score) * 5) / 5:.1f}"


def stsb(sentence1: str, sentence2: str, score: float | None = None) -> TextPair:
    """`stsb sentence1: ... sentence2: ...` -> e.g. "3.8" (26 classes, 0.0 .. 5.0)."""
    return TextPair(f"stsb sentence1: {sentence1} sentence2: {sentence2}",
                    None if score is None else stsb_target(score))


def squad(question: str, context: str, answers: Sequence[str] | None = None) -> TextPair:
    """`question: ... context: ...` -> the first answer; all text punctuation-padded as T5 does."""
    inputs = _join(["question:", pad_punctuation(question), "context:", pad_punctuation(context)])
    target = pad_punctuation(answers[0]).strip() if answers else None
    return TextPair(inputs, target, meta={"answers": list(answers or [])})


def glue(benchmark: str, fields: Mapping[str, Any], label: Any = None,
         label_names: Sequence[str] | None = None,
         feature_names: Sequence[str] | None = None) -> TextPair:
    """Generic GLUE/SuperGLUE rendering `"{benchmark} key1: v1 key2: v2 ..."`, keys sorted unless
    `feature_names` fixes the order; the target is the label name (or "<unk>" for -1)."""
    keys = list(feature_names) if feature_names is not None else sorted(
        k for k in fields if k not in ("idx", "label"))
    missing = [k for k in keys if k not in fields]
    if missing:
        raise KeyError(f"{benchmark}: example has no field(s) {missing}")
    parts = [benchmark]
    for key in keys:
        parts += [f"{key}:", str(fields[key])]
    if label is None or label_names is None:
        target = None if label is None else str(label)
    else:
        target = _label_name(label, label_names, benchmark)
    return TextPair(_join(parts), target)


class _Fields(dict):
    def __init__(self, record: Mapping[str, Any], where: str):
        super().__init__(record)
        self.where = where

    def __missing__(self, key: str) -> str:
        raise KeyError(f"{self.where}: template field {{{key}}} is not in the example "
                       f"(fields: {sorted(self)})")


def template(record: Mapping[str, Any], inputs: str, targets: str | None = None,
             where: str = "template") -> TextPair:
    """User-defined prefix format, e.g. inputs="sentiment: {text}", targets="{label}"."""
    fields = _Fields(record, where)
    formatter = string.Formatter()
    return TextPair(formatter.vformat(inputs, (), fields),
                    None if targets is None else formatter.vformat(targets, (), fields))


# Keys that _from_record reads from the format options rather than from the record.
FORMAT_OPTION_KEYS = ("source_language", "target_language", "benchmark", "inputs")


def _from_record(kind: str) -> Callable[..., TextPair]:
    def build(record: Mapping[str, Any], **options: Any) -> TextPair:
        try:
            if kind == "translate":
                return translation(record[options.get("source_key", "source")],
                                   options["source_language"], options["target_language"],
                                   record.get(options.get("target_key", "target")))
            if kind == "summarize":
                return summarization(record["article"], record.get("highlights"))
            if kind == "mnli":
                return mnli(record["premise"], record["hypothesis"], record.get("label"))
            if kind == "stsb":
                return stsb(record["sentence1"], record["sentence2"], record.get("label"))
            if kind == "squad":
                return squad(record["question"], record["context"], record.get("answers"))
            if kind == "glue":
                return glue(options["benchmark"], record, record.get("label"),
                            options.get("label_names"), options.get("feature_names"))
            return template(record, options["inputs"], options.get("targets"),
                            options.get("name", "template"))
        except KeyError as err:
            if not str(err).startswith(("'", '"')):
                raise  # already a full message (template field, glue features)
            key = err.args[0]
            if key in FORMAT_OPTION_KEYS:
                raise KeyError(f"{kind}: missing key {key!r} (a format option, config key "
                               f"text2text.format_options.{key})") from None
            raise KeyError(f"{kind}: missing key {key!r} (the record has fields "
                           f"{sorted(record)})") from None

    return build


FORMATS = {k: _from_record(k) for k in
           ("translate", "summarize", "mnli", "stsb", "squad", "glue", "template")}


def _record_error(error: KeyError | ValueError, where: str, guid: str
                  ) -> KeyError | ValueError:
    """The same error type with the file and the record's id in front, so that a user can find
    the example (KeyError keeps its message in args[0], which str() would quote)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return type(error)(f"{where}: record {guid!r}: {message}")


def format_records(
    records: Sequence[Mapping[str, Any]], config: Mapping[str, Any], where: str = ""
) -> list[TextPair]:
    """Render records with a format config, e.g. {"format": "translate", "source_language": "en",
    "target_language": "de"} or {"format": "template", "inputs": "cola sentence: {sentence}",
    "targets": "{label}"}. `where` (e.g. the data file) prefixes errors about a record, with its
    id (JSONL records without one are numbered by line)."""
    if "format" not in config:
        raise KeyError(f"text-to-text config needs a 'format' key (one of {sorted(FORMATS)})")
    kind = config["format"]
    if kind not in FORMATS:
        raise ValueError(f"unknown text-to-text format {kind!r}; known: {sorted(FORMATS)}")
    options = {k: v for k, v in config.items() if k != "format"}
    pairs = []
    for i, record in enumerate(records):
        guid = str(record.get("guid", record.get("id", i)))
        try:
            pair = FORMATS[kind](record, **options)
        except (KeyError, ValueError) as err:
            if not where:
                raise
            raise _record_error(err, where, guid) from None
        pairs.append(dataclasses.replace(pair, guid=guid))
    return pairs
