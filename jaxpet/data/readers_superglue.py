"""Readers for the SuperGLUE/FewGLUE JSON Lines tasks (BoolQ CB COPA RTE WiC WSC MultiRC ReCoRD AX).

Each split reads its own file (`train.jsonl`, `val.jsonl` as "dev", `test.jsonl`,
`unlabeled.jsonl`). Guids are "<split>-<idx>". A record without a `label` field gives
`label=None` (the original PET gives WiC "F" there). `meta["idx"]` keeps the record's idx
for writing predictions. Task-specific construction follows the original PET; see each reader.
"""

from __future__ import annotations

import functools
import random
import warnings
from collections.abc import Sequence

from jaxpet.data.example import Example
from jaxpet.data.files import DataFileError, check_label, get_field, read_jsonl

_SCALAR = (str, int, float, bool)


def _label(obj: dict, path: str, line: int, labels: Sequence[str]) -> str | None:
    if "label" not in obj or obj["label"] is None:
        return None
    # JSON booleans and ints become "True"/"False" and "0"/"1", as the original PET's str().
    return check_label(str(obj["label"]), labels, path, line)


def _int_idx(obj: dict, path: str, line: int, fallback: int) -> int:
    idx = get_field(obj, "idx", path, line, (int, str))
    if isinstance(idx, str):
        try:
            return int(idx)
        except ValueError:
            return fallback
    return idx


def read_rte(path: str, split: str, labels: Sequence[str], premise: str = "premise",
             hypothesis: str = "hypothesis") -> list[Example]:
    """RTE / CB / AX-g (premise, hypothesis) and AX-b (sentence1, sentence2) pairs.

    A string idx that is not a number is replaced by the record's 0-based position, as in
    the original PET.
    """
    examples = []
    for pos, (line, obj) in enumerate(read_jsonl(path)):
        idx = _int_idx(obj, path, line, fallback=pos)
        examples.append(Example(
            guid=f"{split}-{idx}", text_a=get_field(obj, premise, path, line, str),
            text_b=get_field(obj, hypothesis, path, line, str),
            label=_label(obj, path, line, labels), meta={"idx": idx}))
    return examples


def read_boolq(path: str, split: str, labels: Sequence[str]) -> list[Example]:
    """BoolQ: text_a = passage, text_b = question, label "False"/"True"."""
    examples = []
    for line, obj in read_jsonl(path):
        idx = get_field(obj, "idx", path, line, _SCALAR)
        examples.append(Example(
            guid=f"{split}-{idx}", text_a=get_field(obj, "passage", path, line, str),
            text_b=get_field(obj, "question", path, line, str),
            label=_label(obj, path, line, labels), meta={"idx": idx}))
    return examples


def read_wic(path: str, split: str, labels: Sequence[str]) -> list[Example]:
    """WiC: text_a/text_b = sentence1/sentence2, meta word; a true label is "T", false "F"."""
    examples = []
    for line, obj in read_jsonl(path):
        idx = get_field(obj, "idx", path, line, (int, str))
        idx = int(idx) if isinstance(idx, str) and idx.lstrip("-").isdigit() else idx
        raw = obj.get("label")
        if raw is not None and not isinstance(raw, bool):
            raise DataFileError(path, f"WiC label must be true or false, got {raw!r}", line)
        label = None if raw is None else ("T" if raw else "F")
        examples.append(Example(
            guid=f"{split}-{idx}", text_a=get_field(obj, "sentence1", path, line, str),
            text_b=get_field(obj, "sentence2", path, line, str),
            label=check_label(label, labels, path, line),
            meta={"idx": idx, "word": get_field(obj, "word", path, line, str)}))
    return examples


def read_copa(path: str, split: str, labels: Sequence[str]) -> list[Example]:
    """COPA: text_a = premise; meta choice1, choice2, question ("cause"/"effect").

    The train and unlabeled splits are doubled, as in the original PET: after all records
    come their mirrored copies (guid + "m", choices swapped, label flipped, meta mirrored=True).
    """
    examples = []
    for line, obj in read_jsonl(path):
        idx = get_field(obj, "idx", path, line, _SCALAR)
        question = get_field(obj, "question", path, line, str)
        if question not in ("cause", "effect"):
            raise DataFileError(path, f"COPA question must be 'cause' or 'effect', got "
                                f"{question!r}", line)
        meta = {"choice1": get_field(obj, "choice1", path, line, str),
                "choice2": get_field(obj, "choice2", path, line, str),
                "question": question, "idx": idx, "mirrored": False}
        examples.append(Example(guid=f"{split}-{idx}",
                                text_a=get_field(obj, "premise", path, line, str),
                                label=_label(obj, path, line, labels), meta=meta))
    if split in ("train", "unlabeled"):
        flip = {"0": "1", "1": "0", None: None}
        examples += [
            Example(guid=e.guid + "m", text_a=e.text_a, label=flip[e.label],
                    meta={**e.meta, "choice1": e.meta["choice2"], "choice2": e.meta["choice1"],
                          "mirrored": True})
            for e in examples
        ]
    return examples


def repair_wsc_spans(
    text: str, span1_text: str, span1_index: int, span2_text: str, span2_index: int
) -> tuple[list[str] | None, int, int, bool]:
    """Repair WSC word indices as the original PET does.

    Returns (words, span1_index, span2_index, span1_found); words is None when the pronoun
    (span2) cannot be located. Off-by-one indices are moved; a pronoun glued to following
    characters ("him.") is split into two words. Unlike the original, an offset never wraps
    around to the end of the sentence through a negative index.
    """
    words = text.split()
    lower_words, span1_words = text.lower().split(), span1_text.lower().split()

    def span1_at(i: int) -> bool:
        return i >= 0 and lower_words[i:i + len(span1_words)] == span1_words

    def span2_at(i: int) -> bool:
        return 0 <= i < len(words) and words[i] == span2_text

    if not span1_at(span1_index):
        for offset in (-1, 1):
            if span1_at(span1_index + offset):
                span1_index += offset
    if not span2_at(span2_index):
        for offset in (-1, 1):
            if span2_at(span2_index + offset):
                span2_index += offset
        if (not span2_at(span2_index) and 0 <= span2_index < len(words)
                and words[span2_index].startswith(span2_text)):
            word = words[span2_index]
            words[span2_index:span2_index + 1] = [word[:len(span2_text)], word[len(span2_text):]]
    found = words if span2_at(span2_index) else None
    return found, span1_index, span2_index, span1_at(span1_index)


def read_wsc(path: str, split: str, labels: Sequence[str]) -> list[Example]:
    """WSC: text_a = text; meta span1_text (the referent), span2_text (the pronoun) and indices.

    Span indices are word indices into `text_a.split()`; like the original PET, an index that
    is off by one is repaired, a pronoun glued to following characters ("him.") is split off
    into its own word, and text_a is rejoined with single spaces. A pronoun that still cannot
    be found is an error; a referent that cannot be found gives a warning. The train split
    keeps only the examples labeled True (the referent is the generation target).
    """
    examples = []
    for line, obj in read_jsonl(path):
        idx = get_field(obj, "idx", path, line, _SCALAR)
        text = get_field(obj, "text", path, line, str)
        span1_text = get_field(obj, "target.span1_text", path, line, str)
        span2_text = get_field(obj, "target.span2_text", path, line, str)
        span1_index = get_field(obj, "target.span1_index", path, line, int)
        span2_index = get_field(obj, "target.span2_index", path, line, int)
        words, span1_index, span2_index, span1_ok = repair_wsc_spans(
            text, span1_text, span1_index, span2_text, span2_index)
        if not span1_ok:
            warnings.warn(f"{path}:{line}: span1_text {span1_text!r} is not at word "
                          f"{span1_index} of {text!r}", stacklevel=2)
        if words is None:
            raise DataFileError(path, f"span2_text {span2_text!r} (the pronoun) is not at word "
                                f"{span2_index} (nor next to it) of {text!r}", line)
        label = _label(obj, path, line, labels)
        if split == "train" and label != "True":
            continue
        examples.append(Example(
            guid=f"{split}-{idx}", text_a=" ".join(words), label=label,
            meta={"idx": idx, "span1_text": span1_text, "span2_text": span2_text,
                  "span1_index": span1_index, "span2_index": span2_index}))
    return examples


def read_multirc(path: str, split: str, labels: Sequence[str]) -> list[Example]:
    """MultiRC: one example per answer; text_a = passage, text_b = question.

    guid "<split>-p{passage}-q{question}-a{answer}"; meta passage_idx, question_idx,
    answer_idx (exact match groups answers by question_idx), question and answer.
    """
    examples = []
    for line, obj in read_jsonl(path):
        passage_idx = get_field(obj, "idx", path, line, _SCALAR)
        text = get_field(obj, "passage.text", path, line, str)
        for qi, question in enumerate(get_field(obj, "passage.questions", path, line, list)):
            where = f"passage.questions[{qi}]"
            if not isinstance(question, dict):
                raise DataFileError(path, f"{where} must be an object", line)
            q_text = get_field(question, "question", path, line, str, within=where)
            q_idx = get_field(question, "idx", path, line, _SCALAR, within=where)
            for ai, answer in enumerate(get_field(question, "answers", path, line, list,
                                                  within=where)):
                a_where = f"{where}.answers[{ai}]"
                if not isinstance(answer, dict):
                    raise DataFileError(path, f"{a_where} must be an object", line)
                a_idx = get_field(answer, "idx", path, line, _SCALAR, within=a_where)
                examples.append(Example(
                    guid=f"{split}-p{passage_idx}-q{q_idx}-a{a_idx}", text_a=text,
                    text_b=q_text, label=_label(answer, path, line, labels),
                    meta={"passage_idx": passage_idx, "question_idx": q_idx,
                          "answer_idx": a_idx, "question": q_text,
                          "answer": get_field(answer, "text", path, line, str,
                                              within=a_where)}))
    return examples


def read_record(path: str, split: str, labels: Sequence[str], seed: int = 42,
                max_train_candidates: int = 10) -> list[Example]:
    """ReCoRD: text_a = passage ("@highlight\\n" -> "- "), text_b = query with "@placeholder".

    Entities are `passage.text[start:end + 1]` (deduplicated, first occurrence first; the
    original PET uses a set, whose order changes from run to run). train: one example per
    distinct gold answer, candidates = [answer] + the non-answer entities, of which at most
    `max_train_candidates - 1` are kept after a shuffle by one `random.Random(seed)` shared
    by the whole file; answers = [answer]. Other splits: one example per query with every
    entity as a candidate and all gold answers. Every example has label "1" (the correct
    candidate is among the candidates); meta holds candidates, answers, query, passage_idx
    and question_idx.
    """
    shuffler = random.Random(seed)
    examples = []
    for line, obj in read_jsonl(path):
        p_idx = get_field(obj, "idx", path, line, _SCALAR)
        text = get_field(obj, "passage.text", path, line, str)
        entities: dict[str, None] = {}
        for ei, entity in enumerate(get_field(obj, "passage.entities", path, line, list)):
            start = get_field(entity, "start", path, line, int, within=f"passage.entities[{ei}]")
            end = get_field(entity, "end", path, line, int, within=f"passage.entities[{ei}]")
            if not 0 <= start <= end < len(text):
                raise DataFileError(path, f"entity span [{start}, {end}] lies outside the "
                                    f"passage ({len(text)} characters)", line)
            entities[text[start:end + 1]] = None
        passage = text.replace("@highlight\n", "- ")
        for qi, qa in enumerate(get_field(obj, "qas", path, line, list)):
            where = f"qas[{qi}]"
            query = get_field(qa, "query", path, line, str, within=where)
            if "@placeholder" not in query:
                raise DataFileError(path, f"{where}.query {query!r} has no @placeholder", line)
            q_idx = get_field(qa, "idx", path, line, _SCALAR, within=where)
            gold = get_field(qa, "answers", path, line, list, default=[], within=where)
            answers = list(dict.fromkeys(
                get_field(a, "text", path, line, str, within=f"{where}.answers[{ai}]")
                for ai, a in enumerate(gold)))
            base = {"passage_idx": p_idx, "question_idx": q_idx, "query": query}
            if split != "train":
                examples.append(Example(
                    guid=f"{split}-p{p_idx}-q{q_idx}", text_a=passage, text_b=query, label="1",
                    meta={**base, "candidates": list(entities), "answers": answers}))
                continue
            if not answers:
                raise DataFileError(path, f"training query {q_idx!r} has no answers", line)
            for a_idx, answer in enumerate(answers):
                others = [e for e in entities if e not in answers]
                if len(others) > max_train_candidates - 1:
                    shuffler.shuffle(others)
                    others = others[:max_train_candidates - 1]
                examples.append(Example(
                    guid=f"{split}-p{p_idx}-q{q_idx}-a{a_idx}", text_a=passage, text_b=query,
                    label="1", meta={**base, "answer_idx": a_idx,
                                     "candidates": [answer] + others, "answers": [answer]}))
    return examples


def _task(reader, labels: list[str], files: dict[str, str] | None = None, **kwargs):
    files = files or {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl",
                      "unlabeled": "unlabeled.jsonl"}
    return functools.partial(reader, labels=labels, **kwargs), labels, files


_RTE_LABELS = ["entailment", "not_entailment"]
_BOOL_LABELS = ["False", "True"]


def _ax_files(name: str) -> dict[str, str]:
    # As in the original PET, the diagnostics read one file for train and test; dev and
    # unlabeled are RTE's files.
    return {"train": name, "dev": "val.jsonl", "test": name, "unlabeled": "unlabeled.jsonl"}


# name -> (reader(path, split), labels, files per split)
TASKS = {
    "boolq": _task(read_boolq, _BOOL_LABELS),
    "cb": _task(read_rte, ["entailment", "contradiction", "neutral"]),
    "copa": _task(read_copa, ["0", "1"]),
    "rte": _task(read_rte, _RTE_LABELS),
    "wic": _task(read_wic, ["F", "T"]),
    "wsc": _task(read_wsc, _BOOL_LABELS),
    "multirc": _task(read_multirc, ["0", "1"]),
    "record": _task(read_record, ["0", "1"]),
    "ax-b": _task(read_rte, _RTE_LABELS, _ax_files("AX-b.jsonl"), premise="sentence1",
                  hypothesis="sentence2"),
    "ax-g": _task(read_rte, _RTE_LABELS, _ax_files("AX-g.jsonl")),
}
