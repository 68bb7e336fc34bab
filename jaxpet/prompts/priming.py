"""Priming: labeled demonstrations (mask filled with their verbalizer) placed before the query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxpet.data.example import Example
from jaxpet.prompts.encoding import find_masks, special_layout
from jaxpet.prompts.pvp import PVP


def encode_primed(
    pvp: PVP, examples: Sequence[Example], tokenizer: Any, max_seq_length: int,
    demonstrations: Sequence[Example] | None = None,
) -> dict[str, np.ndarray]:
    """Encode each query after its demonstrations, as the original PET's `--priming` does.

    Each demonstration is the pattern applied to a labeled example (truncated on its own),
    with its first mask replaced by its label's single-token verbalizer; demonstrations and
    the query are concatenated without separators and get one set of special tokens as a
    single sequence. Demonstrations come from `demonstrations`, or from each example's
    `meta["priming_data"]`. The prediction is read at the query's mask (K = 1).
    """
    examples = list(examples)
    shared = list(demonstrations) if demonstrations is not None else None
    demo_lists = [shared if shared is not None else list(e.meta.get("priming_data", []))
                  for e in examples]
    # encode every distinct demonstration once
    unique: dict[int, Example] = {}
    for demos in demo_lists:
        for d in demos:
            unique.setdefault(id(d), d)
    demo_list = list(unique.values())
    for d in demo_list:
        if d.label is None:
            raise ValueError(f"priming demonstration {d.guid!r} has no label")
    word_ids = pvp.verbalizer_ids(tokenizer)[:, 0]
    if any(len(pvp.verbalize(label)) != 1 for label in pvp.labels):
        raise ValueError("priming needs exactly one verbalizer word per label")
    labels_D = pvp.label_index(demo_list)
    demo_tokens: dict[int, list[int]] = {}
    for d, label, (ids_a, ids_b) in zip(
        demo_list, labels_D, pvp.encode_ids(demo_list, tokenizer, max_seq_length), strict=True
    ):
        ids = ids_a + (ids_b or [])
        if tokenizer.mask_token_id not in ids:
            raise ValueError(f"priming demonstration {d.guid!r} lost its mask in truncation")
        ids[ids.index(tokenizer.mask_token_id)] = int(word_ids[label])
        demo_tokens[id(d)] = ids
    queries = pvp.encode_ids(examples, tokenizer, max_seq_length)
    layout = special_layout(tokenizer, False)
    n = len(examples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids_NxS = np.full((n, max_seq_length), pad_id, dtype=np.int32)
    attention_mask_NxS = np.zeros((n, max_seq_length), dtype=np.int32)
    token_type_ids_NxS = np.zeros((n, max_seq_length), dtype=np.int32)
    for i, (e, demos, (ids_a, ids_b)) in enumerate(zip(examples, demo_lists, queries, strict=True)):
        body = [t for d in demos for t in demo_tokens[id(d)]] + ids_a + (ids_b or [])
        ids, types = layout.build(body, None)
        if len(ids) > max_seq_length:
            raise ValueError(
                f"example {e.guid!r} with {len(demos)} demonstrations needs {len(ids)} tokens, "
                f"more than max_seq_length={max_seq_length}"
            )
        input_ids_NxS[i, : len(ids)] = ids
        token_type_ids_NxS[i, : len(ids)] = types
        attention_mask_NxS[i, : len(ids)] = 1
    guids = [e.guid for e in examples]
    return {
        "input_ids": input_ids_NxS,
        "attention_mask": attention_mask_NxS,
        "token_type_ids": token_type_ids_NxS,
        "mask_positions": find_masks(
            input_ids_NxS, attention_mask_NxS, tokenizer.mask_token_id, 1, guids
        ),
        "labels": pvp.label_index(examples),
    }
