"""BERT-style MLM masking (15% of eligible tokens; 80% mask, 10% random, 10% kept), jit-friendly."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _eligible(
    input_ids_BxS: Array,
    special_tokens_mask_BxS: Array,
    mask_token_id: int,
    attention_mask_BxS: Array | None,
) -> Array:
    """Positions that may become targets: not special, not the pattern's mask slot, not padding."""
    eligible_BxS = ~special_tokens_mask_BxS.astype(bool) & (input_ids_BxS != mask_token_id)
    if attention_mask_BxS is not None:
        eligible_BxS = eligible_BxS & attention_mask_BxS.astype(bool)
    return eligible_BxS


def _corrupt(
    rng: Array,
    input_ids_BxS: Array,
    selected_BxS: Array,
    vocab_size: int,
    mask_token_id: int,
) -> Array:
    """Apply 80% [MASK] / 10% random token / 10% unchanged to the selected positions."""
    rng_kind, rng_random = jax.random.split(rng)
    u_BxS = jax.random.uniform(rng_kind, input_ids_BxS.shape)
    random_ids_BxS = jax.random.randint(
        rng_random, input_ids_BxS.shape, 0, vocab_size, dtype=input_ids_BxS.dtype
    )
    corrupted_BxS = jnp.where(u_BxS < 0.8, jnp.asarray(mask_token_id, input_ids_BxS.dtype),
                              jnp.where(u_BxS < 0.9, random_ids_BxS, input_ids_BxS))
    return jnp.where(selected_BxS, corrupted_BxS, input_ids_BxS)


def _select_top(rng: Array, drawn_BxS: Array, max_targets: int) -> tuple[Array, Array]:
    """Keep a uniformly random subset of at most max_targets drawn positions per row.

    Returns (positions_BxP sorted ascending, kept_BxP); unused slots point at position 0.
    """
    seq_len = drawn_BxS.shape[-1]
    if max_targets > seq_len:
        raise ValueError(f"max_targets={max_targets} exceeds the sequence length {seq_len}")
    # i.i.d. uniform priorities make the top-P drawn positions a uniform random subset.
    priority_BxS = jnp.where(drawn_BxS, jax.random.uniform(rng, drawn_BxS.shape), -1.0)
    top_priority_BxP, top_idx_BxP = jax.lax.top_k(priority_BxS, max_targets)
    kept_BxP = top_priority_BxP >= 0.0
    positions_BxP = jnp.sort(jnp.where(kept_BxP, top_idx_BxP, seq_len), axis=-1)
    kept_BxP = positions_BxP < seq_len
    return jnp.where(kept_BxP, positions_BxP, 0).astype(jnp.int32), kept_BxP


def mask_tokens_positions(
    rng: Array,
    input_ids: Array,
    special_tokens_mask: Array,
    *,
    vocab_size: int,
    mask_token_id: int,
    probability: float = 0.15,
    max_targets: int,
    attention_mask: Array | None = None,
) -> tuple[Array, Array, Array, Array]:
    """MLM masking with a fixed number P = max_targets of target slots per sequence.

    Each eligible position (not special, not padding, not an existing mask token) is drawn with
    `probability`. When more than P are drawn, a uniformly random P of them are kept and the
    rest stay untouched (neither corrupted nor targets); when fewer, the extra slots have
    position 0, target -1 and weight 0. Kept positions are corrupted 80/10/10 (mask / random id
    in [0, vocab_size) / unchanged). Deterministic given rng.

    Returns (inputs_BxS, positions_BxP ascending, targets_BxP original ids, weights_BxP float).
    """
    input_ids_BxS = jnp.asarray(input_ids)
    special_tokens_mask_BxS = jnp.asarray(special_tokens_mask)
    rng_draw, rng_keep, rng_corrupt = jax.random.split(rng, 3)
    eligible_BxS = _eligible(
        input_ids_BxS, special_tokens_mask_BxS, mask_token_id, attention_mask
    )
    drawn_BxS = eligible_BxS & jax.random.bernoulli(rng_draw, probability, eligible_BxS.shape)
    positions_BxP, kept_BxP = _select_top(rng_keep, drawn_BxS, max_targets)
    batch_idx_Bx1 = jnp.arange(input_ids_BxS.shape[0])[:, None]
    selected_BxS = jnp.zeros_like(drawn_BxS).at[batch_idx_Bx1, positions_BxP].max(kept_BxP)
    inputs_BxS = _corrupt(rng_corrupt, input_ids_BxS, selected_BxS, vocab_size, mask_token_id)
    original_BxP = jnp.take_along_axis(input_ids_BxS, positions_BxP, axis=-1)
    targets_BxP = jnp.where(kept_BxP, original_BxP, -1)
    return inputs_BxS, positions_BxP, targets_BxP, kept_BxP.astype(jnp.float32)


def mask_tokens(
    rng: Array,
    input_ids: Array,
    special_tokens_mask: Array,
    *,
    vocab_size: int,
    mask_token_id: int,
    probability: float = 0.15,
    max_targets: int | None = None,
    attention_mask: Array | None = None,
) -> tuple[Array, Array, Array]:
    """MLM masking over full sequences -> (inputs_BxS, targets_BxS, weights_BxS).

    targets_BxS holds the original id at selected positions and -1 elsewhere; weights_BxS is 1.0
    at selected positions. Special tokens (special_tokens_mask, which should mark CLS/SEP/PAD/
    MASK), existing mask tokens and, when attention_mask is given, padding never become
    targets. max_targets caps the targets per sequence (a random subset is kept; see
    mask_tokens_positions). The original PET masks with the same 15% / 80-10-10 rule; unlike
    jaxpet, its tokenizers' special-token mask let it also pick padding and the pattern's own
    mask slot, which the PET paper says is never asked for.
    """
    input_ids_BxS = jnp.asarray(input_ids)
    special_tokens_mask_BxS = jnp.asarray(special_tokens_mask)
    if max_targets is not None:
        inputs_BxS, positions_BxP, targets_BxP, weights_BxP = mask_tokens_positions(
            rng, input_ids_BxS, special_tokens_mask_BxS, vocab_size=vocab_size,
            mask_token_id=mask_token_id, probability=probability, max_targets=max_targets,
            attention_mask=attention_mask,
        )
        batch_idx_Bx1 = jnp.arange(input_ids_BxS.shape[0])[:, None]
        weights_BxS = jnp.zeros(input_ids_BxS.shape, jnp.float32)
        weights_BxS = weights_BxS.at[batch_idx_Bx1, positions_BxP].max(weights_BxP)
        targets_BxS = jnp.where(weights_BxS > 0, input_ids_BxS, -1)
        return inputs_BxS, targets_BxS, weights_BxS
    rng_draw, _, rng_corrupt = jax.random.split(rng, 3)
    eligible_BxS = _eligible(
        input_ids_BxS, special_tokens_mask_BxS, mask_token_id, attention_mask
    )
    selected_BxS = eligible_BxS & jax.random.bernoulli(rng_draw, probability, eligible_BxS.shape)
    inputs_BxS = _corrupt(rng_corrupt, input_ids_BxS, selected_BxS, vocab_size, mask_token_id)
    targets_BxS = jnp.where(selected_BxS, input_ids_BxS, -1)
    return inputs_BxS, targets_BxS, selected_BxS.astype(jnp.float32)
