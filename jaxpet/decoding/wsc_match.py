"""WSC evaluation as the original PET does it: fill the masks greedily, then string-match.

multi_mask_generate is the compiled generation loop (every row and step in one program, like
multi_mask_decode); wsc_string_match compares the decoded fill with the target span.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxpet.decoding.multi_mask import (
    LogitsFn,
    call_at_masks,
    check_strategy,
    leftmost_slot,
    write_tokens,
)

Array = jax.Array


def wsc_words(text: str) -> list[str]:
    """Lower-cased words of `text`, splitting on every non-letter character."""
    return [word for word in re.split("[^a-zA-Z]", text.lower().strip()) if word]


def wsc_string_match(generated_text: str, target_text: str) -> bool:
    """True if every generated word occurs in the target or every target word in the generation.

    Like the original PET (following the T5 paper), an empty generation matches any target.
    """
    generated, target = wsc_words(generated_text), wsc_words(target_text)
    return all(w in target for w in generated) or all(w in generated for w in target)


def wsc_generated_text(tokenizer: Any, token_ids_K: Sequence[int]) -> str:
    """Decode the tokens filled into the masks, dropping unused slots (-1) and special tokens."""
    special = set(tokenizer.all_special_ids)
    kept = [int(t) for t in token_ids_K if int(t) >= 0 and int(t) not in special]
    return tokenizer.decode(kept)


def generate_tokens(
    logits_fn: LogitsFn,
    strategy: str,
    input_ids_NxS: Array,
    attention_mask_NxS: Array,
    mask_positions_NxK: Array,
    token_type_ids_NxS: Array | None,
) -> Array:
    num_masks = mask_positions_NxK.shape[-1]

    def step(_, state):
        ids_NxS, remaining_NxK, tokens_NxK = state

        def forward():
            logits_NxKxV = call_at_masks(logits_fn, ids_NxS, attention_mask_NxS, mask_positions_NxK,
                                 token_type_ids_NxS).astype(jnp.float32)
            top_tok_NxK = jnp.argmax(logits_NxKxV, axis=-1)
            # Probability of the argmax token = 1 / sum exp(logit - max logit).
            top_p_NxK = jnp.exp(jnp.max(logits_NxKxV, -1) - jax.nn.logsumexp(logits_NxKxV, -1))
            return top_tok_NxK.astype(tokens_NxK.dtype), top_p_NxK

        top_tok_NxK, top_p_NxK = jax.lax.cond(
            jnp.any(remaining_NxK), forward,
            lambda: (jnp.zeros_like(tokens_NxK), jnp.zeros(tokens_NxK.shape, jnp.float32)),
        )
        if strategy == "parallel":
            fill_NxK = remaining_NxK
        else:
            if strategy == "max_first":
                choice_N = jnp.argmax(jnp.where(remaining_NxK, top_p_NxK, -1.0), axis=-1)
            else:
                choice_N = leftmost_slot(remaining_NxK, mask_positions_NxK)
            fill_NxK = jax.nn.one_hot(choice_N, num_masks, dtype=bool) & remaining_NxK
        tokens_NxK = jnp.where(fill_NxK, top_tok_NxK, tokens_NxK)
        for k in range(num_masks):
            ids_NxS = write_tokens(ids_NxS, mask_positions_NxK[:, k], top_tok_NxK[:, k],
                                   fill_NxK[:, k])
        return ids_NxS, remaining_NxK & ~fill_NxK, tokens_NxK

    remaining_NxK = mask_positions_NxK >= 0
    tokens_NxK = jnp.full(mask_positions_NxK.shape, -1, jnp.int32)
    num_steps = 1 if strategy == "parallel" else num_masks
    _, _, tokens_NxK = jax.lax.fori_loop(
        0, num_steps, step, (input_ids_NxS, remaining_NxK, tokens_NxK)
    )
    return tokens_NxK


_generate_jit = jax.jit(generate_tokens, static_argnums=(0, 1))


def multi_mask_generate(
    logits_fn: LogitsFn,
    input_ids_NxS: Array,
    attention_mask_NxS: Array,
    mask_positions_NxK: Array,
    strategy: str = "max_first",
    token_type_ids: Array | None = None,
) -> Array:
    """Fill every mask with the model's argmax token, one mask per forward pass (WSC-style).

    "max_first" fills, at each step, the remaining mask whose argmax token is most probable;
    "ltr" the leftmost remaining mask; "parallel" fills all masks from one forward pass, as the
    original PET's WSC evaluation does. Returns the filled tokens [N, K] in slot order, -1 in
    unused slots (mask_positions -1). token_type_ids [N, S] is passed on as in multi_mask_decode.
    """
    check_strategy(strategy)
    return _generate_jit(logits_fn, strategy, input_ids_NxS, attention_mask_NxS,
                         mask_positions_NxK, token_type_ids)
