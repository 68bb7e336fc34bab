"""Training losses for multi-token verbalizers: generic hinge, COPA/ReCoRD hinge, WSC MLM.

All take the MLM logits at the K mask slots of the input (one forward pass, the input always
carries the maximum number of masks) and candidate targets aligned with those slots: a
candidate of n < K tokens fills the first n slots and has -1 in the others.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpet.losses import hinge_loss, mlm_loss, multi_token_log_likelihood, token_log_probs

Array = jax.Array


def multi_mask_hinge_loss(
    logits_BxKxV: Array,
    target_ids_BxCxK: Array,
    labels_B: Array,
    margin: float = 1.0,
    candidate_mask_BxC: Array | None = None,
) -> Array:
    """The generic multi-mask loss: per-example hinge over summed token log-likelihoods.

    score(y) = sum_k log p(t_k(y)); loss = mean_b sum_{y' != y} max(0, margin - score(y) +
    score(y')), as the original PET's multi-mask task helper computes it. Candidates without
    any target token (all -1) count as padding unless candidate_mask_BxC says otherwise;
    examples with a negative label are ignored.
    """
    if candidate_mask_BxC is None:
        candidate_mask_BxC = jnp.any(target_ids_BxCxK >= 0, axis=-1)
    scores_BxC = multi_token_log_likelihood(logits_BxKxV, target_ids_BxCxK)
    return hinge_loss(scores_BxC, labels_B, margin, candidate_mask_BxC)


def _batch_token_mean_ce(log_probs_BxK: Array, valid_BxK: Array) -> tuple[Array, Array]:
    """Token-mean cross-entropy over the whole batch, and whether any token counted."""
    count = jnp.sum(valid_BxK)
    total = -jnp.sum(jnp.where(valid_BxK, log_probs_BxK, 0.0))
    return total / jnp.maximum(count, 1), count > 0


def token_mean_hinge_loss(
    logits_BxKxV: Array,
    target_ids_BxCxK: Array,
    labels_B: Array,
    margin: float = 1.0,
) -> Array:
    """COPA/ReCoRD-style loss: one hinge per wrong-candidate slot on batch-level token-mean CE.

    For each example the correct candidate is target_ids_BxCxK[b, labels_B[b]]; the other C - 1
    candidates, in their original order, form the wrong slots j = 0..C-2. CE_correct and each
    CE_wrong_j are cross-entropies averaged over every target token of the whole batch (not per
    example), and the loss is sum_j max(0, margin + CE_correct - CE_wrong_j), as the original
    PET's COPA and ReCoRD task helpers compute it.

    jaxpet differs in one guarded case: a wrong slot with no target token in the whole batch
    (a padded candidate, or an example with a negative label) is left out, where the original
    code would average over zero tokens and return NaN.
    """
    num_candidates = target_ids_BxCxK.shape[1]
    labelled_B = labels_B >= 0
    safe_labels_B = jnp.maximum(labels_B, 0)
    log_probs_BxCxK = token_log_probs(logits_BxKxV, target_ids_BxCxK)
    valid_BxCxK = (target_ids_BxCxK >= 0) & labelled_B[:, None, None]

    take = jax.vmap(lambda x, i: x[i])
    ce_correct, has_correct = _batch_token_mean_ce(
        take(log_probs_BxCxK, safe_labels_B), take(valid_BxCxK, safe_labels_B)
    )
    # Index of the j-th wrong candidate of each example: skip the label's own slot.
    slot_J = jnp.arange(num_candidates - 1)
    wrong_idx_BxJ = slot_J[None, :] + (slot_J[None, :] >= safe_labels_B[:, None])
    total = jnp.zeros((), jnp.float32)
    for j in range(num_candidates - 1):
        ce_wrong, has_wrong = _batch_token_mean_ce(
            take(log_probs_BxCxK, wrong_idx_BxJ[:, j]), take(valid_BxCxK, wrong_idx_BxJ[:, j])
        )
        hinge = jax.nn.relu(margin + ce_correct - ce_wrong)
        total = total + jnp.where(has_wrong & has_correct, hinge, 0.0)
    return total


def copa_loss(
    logits_BxKxV: Array, choice_ids_Bx2xK: Array, labels_B: Array, margin: float = 1.0
) -> Array:
    """COPA: max(0, margin + CE(correct choice) - CE(wrong choice)), batch token means."""
    if choice_ids_Bx2xK.shape[1] != 2:
        raise ValueError(
            f"copa_loss expects 2 choices per example, got {choice_ids_Bx2xK.shape[1]}"
        )
    return token_mean_hinge_loss(logits_BxKxV, choice_ids_Bx2xK, labels_B, margin)


def record_loss(
    logits_BxKxV: Array, candidate_ids_BxCxK: Array, margin: float = 1.0
) -> Array:
    """ReCoRD: candidate 0 is the answer; hinge summed over candidate slots 1..C-1.

    Slots that are padding (-1) for an example do not contribute tokens; a slot that is padding
    for the whole batch is skipped (see token_mean_hinge_loss).
    """
    labels_B = jnp.zeros(candidate_ids_BxCxK.shape[0], jnp.int32)
    return token_mean_hinge_loss(logits_BxKxV, candidate_ids_BxCxK, labels_B, margin)


def wsc_loss(
    logits_BxKxV: Array,
    target_ids_BxK: Array,
    mask_positions_BxK: Array,
    pad_token_id: int,
) -> Array:
    """WSC: plain MLM loss on the target tokens; mask slots beyond the target predict pad.

    A slot k is a mask of the input when mask_positions_BxK[b, k] >= 0; where the target has no
    token there (-1) the label becomes pad_token_id, as the original PET trains it. Token mean
    over the whole batch.
    """
    is_mask_BxK = mask_positions_BxK >= 0
    labels_BxK = jnp.where(target_ids_BxK >= 0, target_ids_BxK, pad_token_id)
    labels_BxK = jnp.where(is_mask_BxK, labels_BxK, -1)
    return mlm_loss(logits_BxKxV, labels_BxK, is_mask_BxK.astype(jnp.float32))
