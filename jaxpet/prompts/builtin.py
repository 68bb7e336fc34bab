"""The original PET's pattern-verbalizer pairs for every built-in task, part for part."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from jaxpet.data.example import Example
from jaxpet.prompts.multitoken import MultiTokenPVP
from jaxpet.prompts.pvp import PVP, Part, lowercase_first, mask, remove_final_punc, shorten
from jaxpet.prompts.verbalizer import Verbalizer

Filled = tuple[list[Part | str], list[Part | str]]


def _news(word: str):
    def parts(pvp: PVP, ex: Example, n: int) -> Filled:
        a, b = shorten(ex.text_a), shorten(ex.text_b or "")
        return {
            0: ([mask(n), ":", a, b], []),
            1: ([mask(n), word, a, b], []),
            2: ([a, "(", mask(n), ")", b], []),
            3: ([a, b, "(", mask(n), ")"], []),
            4: (["[ Category:", mask(n), "]", a, b], []),
            5: ([mask(n), "-", a, b], []),
        }[pvp.pattern_id]
    return parts


def _yelp(pvp: PVP, ex: Example, n: int) -> Filled:
    text = shorten(ex.text_a)
    return {
        0: (["It was", mask(n), ".", text], []),
        1: ([text, ". All in all, it was", mask(n), "."], []),
        2: (["Just", mask(n), "!"], [text]),
        3: ([text], ["In summary, the restaurant is", mask(n), "."]),
    }[pvp.pattern_id]


def _mnli(pvp: PVP, ex: Example, n: int) -> Filled:
    a, b = shorten(remove_final_punc(ex.text_a)), shorten(ex.text_b or "")
    if pvp.pattern_id in (0, 2):
        return ['"', a, '" ?'], [mask(n), ', "', b, '"']
    return [a, "?"], [mask(n), ",", b]


def _xstance(pvp: PVP, ex: Example, n: int) -> Filled:
    a, b = shorten(ex.text_a), shorten(ex.text_b or "")
    if pvp.pattern_id in (0, 2, 4):
        return ['"', a, '"'], [mask(n), '. "', b, '"']
    return [a], [mask(n), ".", b]


def _rte(pvp: PVP, ex: Example, n: int) -> Filled:
    premise = shorten(ex.text_a)
    hyp = shorten(remove_final_punc(ex.text_b or ""))
    pid = pvp.pattern_id
    if pid == 4:
        tail = " true, false or neither? answer:" if pvp.task_name == "cb" else \
            " True or False? answer:"
        return [premise, " question: ", shorten(ex.text_b or ""), tail, mask(n)], []
    joiner = ", " if pid in (0, 1) else ". "
    if pid in (0, 2):
        return ['"', hyp, '" ?'], [mask(n), joiner + '"', premise, '"']
    return [hyp, "?"], [mask(n), joiner.strip(), premise]


def _boolq(pvp: PVP, ex: Example, n: int) -> Filled:
    passage, question = shorten(ex.text_a), shorten(ex.text_b or "")
    if pvp.pattern_id < 2:
        return [passage, ". Question: ", question, "? Answer: ", mask(n), "."], []
    if pvp.pattern_id < 4:
        return [passage, ". Based on the previous passage, ", question, "?", mask(n), "."], []
    return ["Based on the following passage, ", question, "?", mask(n), ".", passage], []


def _multirc(pvp: PVP, ex: Example, n: int) -> Filled:
    passage, question, answer = shorten(ex.text_a), ex.text_b or "", _meta(ex, "answer")
    return {
        0: ([passage, ". Question: ", question, "? Is it ", answer, "?", mask(n), "."], []),
        1: ([passage, ". Question: ", question, '? Is the correct answer "', answer, '"?',
             mask(n), "."], []),
        2: ([passage, ". Based on the previous passage, ", question, '? Is "', answer,
             '" a correct answer?', mask(n), "."], []),
        3: ([passage, question, "- [", mask(n), "]", answer], []),
    }[pvp.pattern_id]


def _wic(pvp: PVP, ex: Example, n: int) -> Filled:
    a, b, word = shorten(ex.text_a), shorten(ex.text_b or ""), _meta(ex, "word")
    return {
        0: (['"', a, '" / "', b, '" Similar sense of "' + word + '"?', mask(n), "."], []),
        1: ([a, b, "Does " + word + " have the same meaning in both sentences?", mask(n)], []),
        2: ([word, ' . Sense (1) (a) "', a, '" (', mask(n), ') "', b, '"'], []),
    }[pvp.pattern_id]


def _meta(ex: Example, key: str) -> Any:
    if key not in ex.meta:
        raise ValueError(f"example {ex.guid!r} lacks meta field {key!r} (has {sorted(ex.meta)})")
    return ex.meta[key]


class CopaPVP(MultiTokenPVP):
    """COPA: the choices themselves are the (multi-token) answers."""

    def candidates(self, example: Example) -> list[str]:
        return [remove_final_punc(lowercase_first(_meta(example, c)))
                for c in ("choice1", "choice2")]

    def get_parts(self, example: Example, num_masks: int = 1) -> Filled:
        premise = shorten(remove_final_punc(example.text_a))
        c1, c2 = self.candidates(example)
        question = _meta(example, "question")
        if question not in ("cause", "effect"):
            raise ValueError(
                f"example {example.guid!r}: COPA question must be 'cause' or 'effect', "
                f"got {question!r}"
            )
        joiner = "because" if question == "cause" else ", so"
        if self.pattern_id == 0:
            return ['"', c1, '" or "', c2, '"?', premise, joiner, mask(num_masks), "."], []
        return [c1, "or", c2, "?", premise, joiner, mask(num_masks), "."], []


class WscPVP(MultiTokenPVP):
    """WSC: the target noun phrase is generated into n = #tokens(target) + padding masks."""

    def __init__(self, *args: Any, seed: int = 42, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed

    def candidates(self, example: Example) -> list[str]:
        return [_meta(example, "span1_text")]

    def num_pad(self, example: Example) -> int:
        """Extra masks: uniform 0..3 for training examples (guid contains 'train'), else 1.

        Seeded per (seed, guid), so it does not depend on the order examples are seen."""
        if "train" in example.guid:
            return random.Random(f"{self.seed}:{example.guid}").randint(0, 3)
        return 1

    def masks_for(self, example: Example, lengths: Sequence[int]) -> int:
        return lengths[0] + self.num_pad(example)

    def get_parts(self, example: Example, num_masks: int = 1) -> Filled:
        pronoun = _meta(example, "span2_text")
        idx = int(_meta(example, "span2_index"))
        words = example.text_a.split()
        if not 0 <= idx < len(words):
            raise ValueError(
                f"example {example.guid!r}: span2_index {idx} is outside the text's "
                f"{len(words)} words"
            )
        words[idx] = "*" + words[idx] + "*"
        text = shorten(" ".join(words))
        masks = mask(num_masks) + "."
        return {
            0: ([text, "The pronoun '*" + pronoun + "*' refers to", masks], []),
            1: ([text, "In the previous sentence, the pronoun '*" + pronoun + "*' refers to",
                 masks], []),
            2: ([text, "Question: In the passage above, what does the pronoun '*" + pronoun
                 + "*' refer to? Answer: ", masks], []),
        }[self.pattern_id]


class RecordPVP(MultiTokenPVP):
    """ReCoRD: the query's @placeholder becomes n masks, n = longest candidate entity."""

    def candidates(self, example: Example) -> list[str]:
        return list(_meta(example, "candidates"))

    def correct_candidate(self, example: Example) -> int:
        """The first candidate that is a gold answer (-1 without answers)."""
        answers = set(example.meta.get("answers") or [])
        return next((i for i, c in enumerate(self.candidates(example)) if c in answers), -1)

    def get_parts(self, example: Example, num_masks: int = 1) -> Filled:
        query = example.meta.get("query", example.text_b) or ""
        if "@placeholder" not in query:
            raise ValueError(f"example {example.guid!r}: query {query!r} has no @placeholder")
        return [shorten(example.text_a), query.replace("@placeholder", mask(num_masks))], []


def _v(*pairs: tuple[str, str]) -> dict[str, str]:
    return dict(pairs)


NEWS = ["1", "2", "3", "4"]
YAHOO = [str(i) for i in range(1, 11)]
MNLI = ["contradiction", "entailment", "neutral"]
RTE = ["entailment", "not_entailment"]
CB = ["entailment", "contradiction", "neutral"]
BOOL = ["False", "True"]
BINARY = ["0", "1"]
XSTANCE = ["FAVOR", "AGAINST"]

_AGNEWS_V = dict(zip(NEWS, ["World", "Sports", "Business", "Tech"], strict=True))
_YAHOO_V = dict(zip(YAHOO, ["Society", "Science", "Health", "Education", "Computer", "Sports",
                            "Business", "Entertainment", "Relationship", "Politics"], strict=True))
_MNLI_A = dict(zip(MNLI, ["Wrong", "Right", "Maybe"], strict=True))
_MNLI_B = dict(zip(MNLI, ["No", "Yes", "Maybe"], strict=True))
_RTE_V = {"not_entailment": "No", "entailment": "Yes"}
_RTE_4 = {"entailment": "true", "not_entailment": "false"}
_CB_V = {"contradiction": "No", "entailment": "Yes", "neutral": "Maybe"}
_CB_4 = {"entailment": "true", "contradiction": "false", "neutral": "neither"}
_BOOLQ_A = {"False": "No", "True": "Yes"}
_BOOLQ_B = {"False": "false", "True": "true"}
_XSTANCE = [{"FAVOR": "Ja", "AGAINST": "Nein"}, {"FAVOR": "Yes", "AGAINST": "No"},
            {"FAVOR": "Oui", "AGAINST": "Non"}]

# task -> (labels, parts function or PVP class, {pattern_id: verbalizer mapping})
SPECS: dict[str, tuple[list[str], Any, dict[int, dict[str, str]]]] = {
    "yelp-polarity": (["1", "2"], _yelp, {i: {"1": "bad", "2": "good"} for i in range(4)}),
    "yelp-full": ([str(i) for i in range(1, 6)], _yelp, {
        i: dict(zip("12345", ["terrible", "bad", "okay", "good", "great"], strict=True))
        for i in range(4)}),
    "agnews": (NEWS, _news("News:"), {i: _AGNEWS_V for i in range(6)}),
    "yahoo": (YAHOO, _news("Question:"), {i: _YAHOO_V for i in range(6)}),
    "mnli": (MNLI, _mnli, {0: _MNLI_A, 1: _MNLI_A, 2: _MNLI_B, 3: _MNLI_B}),
    "mnli-mm": (MNLI, _mnli, {0: _MNLI_A, 1: _MNLI_A, 2: _MNLI_B, 3: _MNLI_B}),
    **{name: (XSTANCE, _xstance, {i: _XSTANCE[i // 2] for i in range(6)})
       for name in ("xstance", "xstance-de", "xstance-fr")},
    **{name: (RTE, _rte, {**{i: _RTE_V for i in range(4)}, 4: _RTE_4})
       for name in ("rte", "ax-b", "ax-g")},
    "cb": (CB, _rte, {**{i: _CB_V for i in range(4)}, 4: _CB_4}),
    "boolq": (BOOL, _boolq, {i: _BOOLQ_A if i % 2 == 0 else _BOOLQ_B for i in range(6)}),
    "multirc": (BINARY, _multirc, {**{i: {"0": "No", "1": "Yes"} for i in range(3)},
                                   3: {"0": "False", "1": "True"}}),
    "wic": (["F", "T"], _wic, {0: {"F": "No", "T": "Yes"}, 1: {"F": "No", "T": "Yes"},
                               2: {"F": "2", "T": "b"}}),
    "copa": (BINARY, CopaPVP, {0: {}, 1: {}}),
    "wsc": (BOOL, WscPVP, {0: {}, 1: {}, 2: {}}),
    "record": (BINARY, RecordPVP, {0: {}}),
}


def pattern_ids(task: str) -> list[int]:
    return sorted(SPECS[task][2])


def make_builtin_pvp(task: str, pattern_id: int, verbalizer: Verbalizer | None = None) -> PVP:
    """Build the original PET PVP `pattern_id` of `task` (optionally with another verbalizer)."""
    labels, impl, verbalizers = SPECS[task]
    words = verbalizer if verbalizer is not None else Verbalizer.from_mapping(
        verbalizers[pattern_id]
    )
    if isinstance(impl, type):
        return impl(task, pattern_id, labels, words)
    return PVP(task, pattern_id, labels, words, parts_fn=impl)


def builtin_tasks() -> Sequence[str]:
    return list(SPECS)
