"""Few-shot sampling of examples: seeded shuffle-and-take, or the first N/|L| per label."""

from __future__ import annotations

import random
import warnings
from collections import Counter
from collections.abc import Sequence

from jaxpet.data.example import Example


def eq_div(n: int, k: int) -> list[int]:
    """Split `n` items into `k` near-equal buckets, larger ones first: eq_div(10, 3) = [4, 3, 3]."""
    if k <= 0:
        return []
    return [n // k + 1] * (n % k) + [n // k] * (k - n % k)


def shuffle_and_take(
    examples: Sequence[Example], num_examples: int, seed: int = 42
) -> list[Example]:
    """Take `num_examples` examples at random, reproducibly.

    * `num_examples < 0`: all examples, in file order.
    * `num_examples == 0`: no examples (the original PET reads 0 as "all"; jaxpet does not).
    * `0 < num_examples < len(examples)`: a copy of the list is shuffled in place by
      `random.Random(seed).shuffle` and its first `num_examples` items are returned. This is
      exactly what the original PET does, so the same file, seed and N give the same sample.
    * `num_examples >= len(examples)`: all examples, in file order (not shuffled, as in PET).
    """
    if num_examples < 0 or num_examples >= len(examples):
        return list(examples)
    if num_examples == 0:
        return []
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:num_examples]


def take_evenly(
    examples: Sequence[Example], labels: Sequence[str], num_examples: int, source: str = ""
) -> list[Example]:
    """The first examples of each label in file order, `eq_div(num_examples, len(labels))` each.

    The quotas follow the order of `labels` (earlier labels get the remainder), and the result
    keeps file order, as the original PET's per-label limited list does. `num_examples < 0`
    returns every example; 0 returns none. A label with fewer examples than its quota
    contributes all it has, and a `UserWarning` says so (the original PET is silent here).
    """
    if num_examples < 0:
        return list(examples)
    quota = dict(zip(labels, eq_div(num_examples, len(labels)), strict=True))
    taken: Counter[str] = Counter()
    chosen = []
    for example in examples:
        if example.label is None:
            raise ValueError(
                f"{source or 'examples'}: split_examples_evenly needs labeled examples, but "
                f"example {example.guid!r} has no label")
        if example.label not in quota:
            raise ValueError(f"{source or 'examples'}: example {example.guid!r} has label "
                             f"{example.label!r}, which is not one of {list(labels)}")
        if taken[example.label] < quota[example.label]:
            taken[example.label] += 1
            chosen.append(example)
    short = {lab: f"{taken[lab]}/{q}" for lab, q in quota.items() if taken[lab] < q}
    if short:
        warnings.warn(
            f"{source or 'examples'}: not enough examples to split {num_examples} evenly over "
            f"{len(labels)} labels; got (found/wanted) {short}",
            stacklevel=2,
        )
    return chosen


def sample_examples(
    examples: Sequence[Example],
    labels: Sequence[str],
    num_examples: int = -1,
    seed: int = 42,
    split_examples_evenly: bool = False,
    source: str = "",
) -> list[Example]:
    """`take_evenly` when `split_examples_evenly`, else `shuffle_and_take` (seed is unused then)."""
    if split_examples_evenly:
        return take_evenly(examples, labels, num_examples, source)
    return shuffle_and_take(examples, num_examples, seed)
