"""The pattern-verbalizer pair (PVP): how an example becomes a cloze input, and label words."""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxpet.data.example import Example
from jaxpet.prompts.encoding import MASK, Part, Segments, assemble, encode_segments, tokenize_parts
from jaxpet.prompts.verbalizer import Verbalizer, verbalizer_ids

__all__ = ["PVP", "Part", "MASK", "mask", "shorten", "remove_final_punc", "lowercase_first"]


def mask(n: int = 1) -> str:
    """Text of n consecutive mask tokens (inside a part, before tokenization)."""
    return MASK * n


def shorten(text: str) -> Part:
    """A part that truncation may cut."""
    return Part(text, True)


def remove_final_punc(text: str) -> str:
    """Strip trailing punctuation as the original PET does (`str.rstrip(string.punctuation)`)."""
    return text.rstrip(string.punctuation)


def lowercase_first(text: str) -> str:
    return text[:1].lower() + text[1:]


PartsFn = Callable[["PVP", Example, int], tuple[list[Part | str], list[Part | str]]]


class PVP:
    """A pattern (one or two segments of parts) plus a verbalizer (label -> words).

    Subclasses or `parts_fn` return the filled parts of an example; a plain `str` part is
    fixed (never truncated), a `Part(text, True)` is shortenable. `mask(n)` inserts masks.
    """

    #: True when the answer spans several tokens (COPA, WSC, ReCoRD, multi-token verbalizers)
    multi_token: bool = False

    def __init__(
        self, task_name: str, pattern_id: int, labels: Sequence[str], verbalizer: Verbalizer,
        parts_fn: PartsFn | None = None,
    ) -> None:
        self.task_name = task_name
        self.pattern_id = pattern_id
        self.labels = list(labels)
        self.verbalizer = verbalizer
        self._parts_fn = parts_fn
        if verbalizer.words:
            verbalizer.check_labels(self.labels, f"verbalizer of {task_name} pattern {pattern_id}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task_name!r}, pattern_id={self.pattern_id})"

    # -- pattern -----------------------------------------------------------------------------
    def get_parts(self, example: Example, num_masks: int = 1) -> tuple[list, list]:
        """Segments a and b (b may be empty) for `example` with `num_masks` masks."""
        if self._parts_fn is None:
            raise NotImplementedError(f"{type(self).__name__} defines no pattern")
        return self._parts_fn(self, example, num_masks)

    def fill(self, example: Example, num_masks: int = 1) -> Segments:
        parts_a, parts_b = self.get_parts(example, num_masks)
        return _as_parts(parts_a), _as_parts(parts_b)

    def verbalize(self, label: str) -> tuple[str, ...]:
        return self.verbalizer(label)

    def num_masks(self, example: Example, tokenizer: Any) -> int:
        """Masks the pattern holds for this example (1 for single-token PVPs)."""
        return 1

    def masks_per_example(self, examples: Sequence[Example], tokenizer: Any) -> list[int]:
        return [self.num_masks(e, tokenizer) for e in examples]

    # -- encoding ----------------------------------------------------------------------------
    def label_index(self, examples: Sequence[Example]) -> np.ndarray:
        """[N] label indices (-1 unlabeled); an unknown label names the example."""
        index = {label: i for i, label in enumerate(self.labels)}
        labels_N = np.full(len(examples), -1, dtype=np.int32)
        for i, ex in enumerate(examples):
            if ex.label is None:
                continue
            if str(ex.label) not in index:
                raise ValueError(
                    f"example {ex.guid!r} has label {ex.label!r}, which {self.task_name} does not "
                    f"know; known labels: {self.labels}"
                )
            labels_N[i] = index[str(ex.label)]
        return labels_N

    def encode_ids(
        self, examples: Sequence[Example], tokenizer: Any, max_seq_length: int,
        num_masks: Sequence[int] | None = None,
    ) -> list[tuple[list[int], list[int] | None]]:
        """Truncated token ids of both segments per example (no special tokens)."""
        if num_masks is None:
            num_masks = self.masks_per_example(examples, tokenizer)
        filled = [self.fill(e, n) for e, n in zip(examples, num_masks, strict=True)]
        return encode_segments(tokenizer, filled, [e.guid for e in examples], max_seq_length)

    def encode(
        self, examples: Sequence[Example], tokenizer: Any, max_seq_length: int
    ) -> dict[str, np.ndarray]:
        """input_ids/attention_mask/token_type_ids [N,S], mask_positions [N,K], labels [N]."""
        examples = list(examples)
        num_masks = self.masks_per_example(examples, tokenizer)
        segments = self.encode_ids(examples, tokenizer, max_seq_length, num_masks)
        enc = assemble(
            tokenizer, segments, max_seq_length, [e.guid for e in examples],
            max(num_masks, default=1),
        )
        enc["labels"] = self.label_index(examples)
        return enc

    # -- verbalizer --------------------------------------------------------------------------
    def word_ids(self, words: Sequence[str], tokenizer: Any) -> list[list[int]]:
        """Token ids of words encoded like a pattern part (word-initial)."""
        return tokenize_parts(tokenizer, list(words))

    def verbalizer_ids(self, tokenizer: Any) -> np.ndarray:
        """[L, W] single-token ids of every label's words (-1 pad)."""
        if self.multi_token:
            raise ValueError(
                f"{self.task_name} pattern {self.pattern_id} scores multi-token answers; use "
                "jaxpet.prompts.multitoken instead of verbalizer_ids"
            )
        words = [w for label in self.labels for w in self.verbalize(label)]
        return verbalizer_ids(self.verbalizer, self.labels, tokenizer,
                              self.word_ids(words, tokenizer))


def _as_parts(parts: Sequence[Part | str]) -> list[Part]:
    return [p if isinstance(p, Part) else Part(p, False) for p in parts]
