"""Loss and scoring functions for multi-token PET models: train step losses, candidate scores.

`make_multitoken_loss` returns `loss_fn(params, batch, rng) -> (loss, aux)` for
jaxpet.engine.training.Trainer. One forward pass per batch: the input carries the most masks any
candidate needs and the MLM head runs only at the K mask slots (`positions`). Batch keys:
input_ids, attention_mask, token_type_ids (optional), mask_positions [B, K] (-1 = unused),
and target_ids [B, C, K] (a candidate fills the first slots, -1 beyond), candidate_mask [B, C],
labels [B] (index of the right candidate) -- or, for "wsc", target_ids [B, K] (the target's
tokens, then pad on the extra masks; jaxpet.prompts.multitoken.encode_generation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxpet import losses
from jaxpet.decoding.multi_mask import make_multi_mask_decoder
from jaxpet.decoding.wsc_match import generate_tokens
from jaxpet.scoring.cloze_step import LossFn, forward

Array = jax.Array
Batch = Mapping[str, Array]
LOSS_VARIANTS = ("hinge", "copa", "record", "wsc")
# PET's per-task choice of the multi-token loss; every other task uses the generic hinge.
AUTO_VARIANTS = {"copa": "copa", "record": "record", "wsc": "wsc"}


def resolve_loss_variant(task_name: str, variant: str = "auto") -> str:
    """The loss of `task_name` for config value `variant` ("auto" = as the original PET)."""
    if variant == "auto":
        return AUTO_VARIANTS.get(task_name.lower(), "hinge")
    if variant not in LOSS_VARIANTS:
        raise ValueError(f"config key 'pet.multitoken_loss' must be 'auto' or one of "
                         f"{list(LOSS_VARIANTS)}, got {variant!r}")
    return variant


def mask_logits(apply_fn: Callable, params: Any, batch: Batch, rng: Array | None) -> Array:
    """MLM logits [B, K, V] (float32) at the mask slots of the batch's inputs."""
    positions_BxK = jnp.maximum(batch["mask_positions"], 0)
    logits_BxKxV = forward(apply_fn, params, batch, "", rng, positions=positions_BxK)
    return logits_BxKxV.astype(jnp.float32)


def multitoken_loss(variant: str, logits_BxKxV: Array, batch: Batch, *, pad_token_id: int = 0,
                    margin: float = 1.0) -> Array:
    """The training loss `variant` of logits at the mask slots (see module docstring)."""
    if variant == "hinge":
        return losses.multi_mask_hinge_loss(logits_BxKxV, batch["target_ids"],
                                               batch["labels"], margin, batch["candidate_mask"])
    if variant == "copa":
        return losses.copa_loss(logits_BxKxV, batch["target_ids"], batch["labels"], margin)
    if variant == "record":
        # the answer is candidate `labels` (0 for every ReCoRD training example, as in PET)
        return losses.token_mean_hinge_loss(logits_BxKxV, batch["target_ids"],
                                               batch["labels"], margin)
    if variant == "wsc":
        return losses.wsc_loss(logits_BxKxV, batch["target_ids"], batch["mask_positions"],
                                  pad_token_id)
    raise ValueError(f"unknown multi-token loss {variant!r}; expected one of {LOSS_VARIANTS}")


def make_multitoken_loss(apply_fn: Callable, variant: str, *, pad_token_id: int = 0,
                         margin: float = 1.0) -> LossFn:
    """loss_fn(params, batch, rng) -> (loss, {variant: loss}) with dropout on, as in PET."""
    if variant not in LOSS_VARIANTS:
        raise ValueError(f"unknown multi-token loss {variant!r}; expected one of {LOSS_VARIANTS}")

    def loss_fn(params: Any, batch: Batch, rng: Array) -> tuple[Array, dict[str, Array]]:
        logits_BxKxV = mask_logits(apply_fn, params, batch, rng)
        loss = multitoken_loss(variant, logits_BxKxV, batch, pad_token_id=pad_token_id,
                               margin=margin)
        return loss, {variant: loss}

    return loss_fn


def _logits_at(apply_fn: Callable, params: Any, ids_MxS: Array, attn_MxS: Array,
               positions_MxK: Array, token_type_ids: Array | None = None) -> Array:
    return apply_fn({"params": params}, ids_MxS, attn_MxS, token_type_ids=token_type_ids,
                    positions=positions_MxK, deterministic=True)


def make_candidate_scores_fn(apply_fn: Callable, strategy: str = "max_first",
                             row_blocks: int = 1) -> Callable[[Any, Batch], Array]:
    """fn(params, batch) -> [B, C] sum of log p per candidate by K-step multi-mask decoding
    (-inf for padding candidates), on the per-candidate decoding encoding
    (jaxpet.prompts.multitoken.encode_multi_token_decoding: inputs [B, C, S]). For predict."""
    decode = make_multi_mask_decoder(partial(_logits_at, apply_fn), strategy,
                                     row_blocks=row_blocks)

    def scores_fn(params: Any, batch: Batch) -> Array:
        return decode(params, batch["input_ids"], batch["attention_mask"],
                      batch["mask_positions"], batch["target_ids"], batch["candidate_mask"],
                      batch.get("token_type_ids"))

    return scores_fn


def make_generate_fn(apply_fn: Callable, strategy: str = "max_first"
                     ) -> Callable[[Any, Batch], Array]:
    """fn(params, batch) -> [B, K] tokens the model fills into the masks (WSC evaluation;
    -1 in unused slots), on the generation encoding (inputs [B, S]). For predict."""

    def generate_fn(params: Any, batch: Batch) -> Array:
        return generate_tokens(partial(_logits_at, apply_fn, params), strategy, batch["input_ids"],
                         batch["attention_mask"], batch["mask_positions"],
                         batch.get("token_type_ids"))

    return generate_fn
