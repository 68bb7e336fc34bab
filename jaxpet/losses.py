"""Pure jax.numpy losses: cloze, auxiliary MLM, distillation, hinge, multi-token and seq2seq."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array

# An "ignored" integer label or target is any negative value (jaxpet uses -1; -100, the PyTorch
# convention, works too). Every loss below returns 0, never NaN, when nothing is left to average.


def _safe_mean(values: Array, weights: Array) -> Array:
    """sum(w * v) / sum(w), and 0 when all weights are 0 (the where keeps the gradient finite)."""
    weights = weights.astype(values.dtype)
    total = jnp.sum(weights)
    return jnp.sum(jnp.where(weights > 0, values, 0.0) * weights) / jnp.maximum(total, 1e-12)


def label_logits(mask_logits_BxV: Array, verbalizer_ids_LxW: Array) -> Array:
    """Score of each label: mean of the raw mask logits over the label's verbalizer tokens.

    verbalizer_ids_LxW holds W token ids per label; -1 entries are padding and are neither
    gathered nor counted, as the original PET does with its zero-padded label-to-token table.
    Returns [B, L].
    """
    valid_LxW = verbalizer_ids_LxW >= 0
    gathered_BxLxW = mask_logits_BxV[:, jnp.maximum(verbalizer_ids_LxW, 0)]
    summed_BxL = jnp.sum(jnp.where(valid_LxW[None], gathered_BxLxW, 0.0), axis=-1)
    count_L = jnp.maximum(jnp.sum(valid_LxW, axis=-1), 1)
    return summed_BxL / count_L.astype(summed_BxL.dtype)


def classification_loss(
    logits_BxL: Array, labels_B: Array, weights_B: Array | None = None
) -> Array:
    """Cross-entropy with integer labels; negative labels are ignored; mean over the rest."""
    valid_B = labels_B >= 0
    per_example_B = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxL.astype(jnp.float32), jnp.maximum(labels_B, 0)
    )
    weights_B = valid_B if weights_B is None else valid_B * weights_B
    return _safe_mean(per_example_B, weights_B)


def soft_classification_loss(
    logits_BxL: Array, target_probs_BxL: Array, weights_B: Array | None = None
) -> Array:
    """Cross-entropy against soft targets (probability rows), weighted mean over the batch."""
    per_example_B = optax.softmax_cross_entropy(logits_BxL.astype(jnp.float32), target_probs_BxL)
    if weights_B is None:
        weights_B = jnp.ones(per_example_B.shape, jnp.float32)
    return _safe_mean(per_example_B, weights_B)


def cloze_loss(label_logits_BxL: Array, labels_B: Array) -> Array:
    """PET's cloze loss: cross-entropy over the verbalizer logits (softmax over labels only).

    Examples whose label is negative (unlabeled) are ignored; 0 when none is labeled.
    """
    return classification_loss(label_logits_BxL, labels_B)


def mlm_loss(logits_BxPxV: Array, targets_BxP: Array, weights_BxP: Array) -> Array:
    """Masked-LM loss: cross-entropy at the selected positions, weighted mean over all of them.

    Positions with weight 0 (or a negative target) do not count; 0 when no position counts.
    This is the token mean over the whole batch, as the Hugging Face masked-LM loss computes it.
    """
    valid_BxP = (targets_BxP >= 0) * weights_BxP
    per_token_BxP = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxPxV.astype(jnp.float32), jnp.maximum(targets_BxP, 0)
    )
    return _safe_mean(per_token_BxP, valid_BxP)


def pet_loss(cloze: Array, mlm: Array, alpha: float = 1e-4) -> Array:
    """PET's combined loss in the paper's convention: (1 - alpha) * cloze + alpha * mlm.

    alpha weighs the auxiliary MLM loss (paper: 1e-4). The original PET command line names the
    other weight alpha: its `--alpha` (default 0.9999) multiplies the cloze loss, i.e. it is
    1 - alpha here.
    """
    return (1.0 - alpha) * cloze + alpha * mlm


def distillation_loss(
    student_BxL: Array,
    teacher_BxL: Array,
    temperature: float = 2.0,
    weights_B: Array | None = None,
) -> Array:
    """Knowledge distillation: KL(softmax(teacher/T) || softmax(student/T)) * T^2, batch mean.

    teacher_BxL are the raw (unnormalised) merged ensemble scores, as in PET. weights_B (0/1 or
    real) turns the batch mean into a weighted mean, e.g. to ignore padding rows.
    """
    teacher_logp_BxL = jax.nn.log_softmax(teacher_BxL.astype(jnp.float32) / temperature, axis=-1)
    student_logp_BxL = jax.nn.log_softmax(student_BxL.astype(jnp.float32) / temperature, axis=-1)
    teacher_p_BxL = jnp.exp(teacher_logp_BxL)
    kl_B = jnp.sum(teacher_p_BxL * (teacher_logp_BxL - student_logp_BxL), axis=-1)
    if weights_B is None:
        weights_B = jnp.ones(kl_B.shape, jnp.float32)
    return _safe_mean(kl_B, weights_B) * temperature**2


def hinge_loss(
    scores_BxC: Array,
    labels_B: Array,
    margin: float = 1.0,
    candidate_mask_BxC: Array | None = None,
) -> Array:
    """PET's multi-class hinge: sum over y' != y of max(0, margin - s_y + s_y'), batch mean.

    Candidates where candidate_mask_BxC is False (padding) are left out of the sum; examples
    with a negative label are ignored; 0 when none is left.
    """
    scores_BxC = scores_BxC.astype(jnp.float32)
    num_candidates = scores_BxC.shape[-1]
    valid_B = labels_B >= 0
    safe_labels_B = jnp.maximum(labels_B, 0)
    correct_B = jnp.take_along_axis(scores_BxC, safe_labels_B[:, None], axis=-1)[:, 0]
    wrong_BxC = jnp.arange(num_candidates)[None, :] != safe_labels_B[:, None]
    if candidate_mask_BxC is not None:
        wrong_BxC = wrong_BxC & candidate_mask_BxC.astype(bool)
    # Padded scores may be -inf; the where keeps them (and their gradients) out of the sum.
    safe_scores_BxC = jnp.where(wrong_BxC, scores_BxC, 0.0)
    violation_BxC = jax.nn.relu(margin - correct_B[:, None] + safe_scores_BxC)
    per_example_B = jnp.sum(jnp.where(wrong_BxC, violation_BxC, 0.0), axis=-1)
    return _safe_mean(per_example_B, valid_B)


def token_log_probs(logits_BxKxV: Array, target_ids_BxCxK: Array) -> Array:
    """log_softmax(logits)[b, k, target[b, c, k]] -> [B, C, K]; 0 where the target is negative."""
    logits_BxKxV = logits_BxKxV.astype(jnp.float32)
    log_norm_BxK = jax.nn.logsumexp(logits_BxKxV, axis=-1)
    batch, num_masks = logits_BxKxV.shape[:2]
    b_idx = jnp.arange(batch)[:, None, None]
    k_idx = jnp.arange(num_masks)[None, None, :]
    picked_BxCxK = logits_BxKxV[b_idx, k_idx, jnp.maximum(target_ids_BxCxK, 0)]
    log_probs_BxCxK = picked_BxCxK - log_norm_BxK[:, None, :]
    return jnp.where(target_ids_BxCxK >= 0, log_probs_BxCxK, 0.0)


def multi_token_log_likelihood(logits_BxKxV: Array, target_ids_BxCxK: Array) -> Array:
    """Sum over the K mask slots of log p(target token); -1 targets are skipped -> [B, C].

    A candidate shorter than K uses the first mask slots and leaves the rest at -1, as the
    original PET does when training with the maximum number of masks in the input.
    """
    return jnp.sum(token_log_probs(logits_BxKxV, target_ids_BxCxK), axis=-1)


def seq2seq_loss(
    logits_BxTxV: Array,
    targets_BxT: Array,
    weights_BxT: Array,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> Array:
    """Token-level cross-entropy for encoder-decoder models, weighted mean over target tokens.

    With label_smoothing > 0 the target is (1 - ls) on the gold token and ls / (V - 1) elsewhere;
    the entropy of that target is subtracted so that a perfect model still scores 0. z_loss adds
    z_loss * logsumexp(logits)^2 per token, which keeps the softmax normaliser near 1 (T5 trains
    with 1e-4). Tokens with weight 0 or a negative target do not count; 0 when none counts.
    """
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    vocab_size = logits_BxTxV.shape[-1]
    valid_BxT = (targets_BxT >= 0) * weights_BxT
    safe_targets_BxT = jnp.maximum(targets_BxT, 0)
    log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    log_probs_BxTxV = logits_BxTxV - log_z_BxT[..., None]
    gold_BxT = jnp.take_along_axis(log_probs_BxTxV, safe_targets_BxT[..., None], axis=-1)[..., 0]
    if label_smoothing > 0.0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab_size - 1)
        mean_other_BxT = (jnp.sum(log_probs_BxTxV, axis=-1) - gold_BxT) * low
        per_token_BxT = -(confidence * gold_BxT + mean_other_BxT)
        target_entropy = -(
            confidence * jnp.log(confidence) + (vocab_size - 1) * low * jnp.log(low + 1e-20)
        )
        per_token_BxT = per_token_BxT - target_entropy
    else:
        per_token_BxT = -gold_BxT
    if z_loss > 0.0:
        per_token_BxT = per_token_BxT + z_loss * jnp.square(log_z_BxT)
    return _safe_mean(per_token_BxT, valid_BxT)


# ---- multi-token verbalizers -------------------------------------------------------------
# These take the MLM logits at the K mask slots of the input (one forward pass, the input always
# carries the maximum number of masks) and candidate targets aligned with those slots: a
# candidate of n < K tokens fills the first n slots and has -1 in the others. Generic hinge,
# COPA/ReCoRD hinge, WSC MLM.


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


__all__ = [
    "classification_loss",
    "cloze_loss",
    "copa_loss",
    "distillation_loss",
    "hinge_loss",
    "label_logits",
    "mlm_loss",
    "multi_mask_hinge_loss",
    "multi_token_log_likelihood",
    "pet_loss",
    "record_loss",
    "seq2seq_loss",
    "soft_classification_loss",
    "token_log_probs",
    "token_mean_hinge_loss",
    "wsc_loss",
]
