"""Verbalizers: label -> words, PET verbalizer files, YAML overrides and token ids."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

VerbalizerSpec = Mapping[str, str | Sequence[str]] | str | os.PathLike | None


@dataclass(frozen=True)
class Verbalizer:
    """Maps every label string to one or more words (several words: mean of their raw logits)."""

    words: dict[str, tuple[str, ...]]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], source: str = "verbalizer") -> Verbalizer:
        words: dict[str, tuple[str, ...]] = {}
        for label, value in mapping.items():
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, Sequence) or not value or not all(
                isinstance(w, str) and w for w in value
            ):
                raise ValueError(
                    f"{source}: label {label!r} must map to a word or a non-empty list of words, "
                    f"got {value!r}"
                )
            words[str(label)] = tuple(value)
        return cls(words)

    def __call__(self, label: str) -> tuple[str, ...]:
        return self.words[label]

    def check_labels(self, labels: Sequence[str], source: str = "verbalizer") -> None:
        """Every label needs at least one word."""
        missing = [label for label in labels if label not in self.words]
        if missing:
            raise ValueError(
                f"{source} has no words for labels {missing}; it covers {sorted(self.words)}, "
                f"the task's labels are {list(labels)}"
            )

    @property
    def max_words(self) -> int:
        return max(len(w) for w in self.words.values())


def parse_pet_verbalizer_file(path: str | os.PathLike) -> dict[int, dict[str, list[str]]]:
    """Read PET's verbalizer file: a line with a pattern id, then lines `label word1 word2 ...`."""
    table: dict[int, dict[str, list[str]]] = {}
    current: int | None = None
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh.read().splitlines(), start=1):
            if line.isdigit():
                current = int(line)
                table.setdefault(current, {})
            elif line.strip():
                if current is None:
                    raise ValueError(
                        f"{path}:{line_no}: a label line comes before any pattern-id line"
                    )
                label, *words = line.split()
                if not words:
                    raise ValueError(f"{path}:{line_no}: label {label!r} has no words")
                table[current][label] = words
    return table


def load_verbalizer(spec: VerbalizerSpec, pattern_id: int) -> Verbalizer | None:
    """Turn a verbalizer override (mapping, PET file or YAML file) into a `Verbalizer`.

    A YAML file holds either `{label: word(s)}` or `{pattern_id: {label: word(s)}}`.
    """
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        return Verbalizer.from_mapping(spec)
    path = os.fspath(spec)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"verbalizer file {path!r} does not exist")
    if path.endswith((".yaml", ".yml", ".json")):
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        if not isinstance(data, Mapping) or not data:
            raise ValueError(f"{path}: expected a mapping label -> word(s)")
        if all(isinstance(v, Mapping) for v in data.values()):
            by_id = {int(k): v for k, v in data.items()}
            if pattern_id not in by_id:
                raise ValueError(
                    f"{path} has no verbalizer for pattern {pattern_id}; it has {sorted(by_id)}"
                )
            return Verbalizer.from_mapping(by_id[pattern_id], source=path)
        return Verbalizer.from_mapping(data, source=path)
    table = parse_pet_verbalizer_file(path)
    if pattern_id not in table:
        raise ValueError(
            f"{path} has no verbalizer for pattern {pattern_id}; it has {sorted(table)}"
        )
    return Verbalizer.from_mapping(table[pattern_id], source=path)


def verbalizer_ids(
    verbalizer: Verbalizer, labels: Sequence[str], tokenizer: Any, word_ids: list[list[int]]
) -> np.ndarray:
    """[L, W] int32 token ids (-1 pad); `word_ids` are the word-initial token ids of each word
    in label order, flattened."""
    num_words = max(len(verbalizer(label)) for label in labels)
    ids_LxW = np.full((len(labels), num_words), -1, dtype=np.int32)
    special = set(getattr(tokenizer, "all_special_ids", []))
    k = 0
    for li, label in enumerate(labels):
        for wi, word in enumerate(verbalizer(label)):
            ids = word_ids[k]
            k += 1
            if len(ids) != 1:
                tokens = tokenizer.convert_ids_to_tokens(ids)
                raise ValueError(
                    f"verbalizer word {word!r} (label {label!r}) is not a single token for this "
                    f"tokenizer: it splits into {tokens}. Use a single-token word, or a "
                    "multi-token verbalizer (jaxpet.prompts.multitoken.encode_multi_token with "
                    "multi-mask decoding)"
                )
            if ids[0] in special:
                raise ValueError(f"verbalizer word {word!r} maps to a special token id {ids[0]}")
            ids_LxW[li, wi] = ids[0]
    return ids_LxW
