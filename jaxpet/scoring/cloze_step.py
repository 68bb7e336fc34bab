"""Loss functions for the train step: PET (cloze + auxiliary MLM), classifier, MLM-only.

Every builder returns `loss_fn(params, batch, rng) -> (loss, aux)` for
jaxpet.engine.training.Trainer.
`apply_fn` is a Flax module's `apply` (e.g. `lm.module.apply`), called as
`apply_fn({"params": params}, input_ids, attention_mask, token_type_ids=..., positions=...,
deterministic=False, rngs={"dropout": key})`; dropout is on while training, as in PET.

PET batch keys: input_ids, attention_mask, token_type_ids (optional), mask_positions [B, K]
(-1 = unused), labels [B]; the unlabeled part has the same keys prefixed with "unlabeled_"
(optionally unlabeled_special_tokens_mask) and is the pattern-applied text P(x). Both parts
must share one sequence length (jaxpet.data.batching cuts them to one bucket) and go through
ONE forward/backward: the MLM head runs only at P = max(K, max_mlm_targets) positions per row
(the mask slot for labeled rows; the masked targets for unlabeled rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxpet import losses
from jaxpet.data.masking import mask_tokens_positions
from jaxpet.engine.ensemble_training import constants_from_batch

Array = jax.Array
Batch = Mapping[str, Array]
LossFn = Callable[[Any, Batch, Array], tuple[Array, dict[str, Array]]]
UNLABELED = "unlabeled_"


def forward(
    apply_fn: Callable, params: Any, batch: Batch, prefix: str, rng: Array | None, **kwargs: Any
) -> Array:
    deterministic = rng is None
    return apply_fn(
        {"params": params},
        batch[prefix + "input_ids"],
        batch[prefix + "attention_mask"],
        token_type_ids=batch.get(prefix + "token_type_ids"),
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
        **kwargs,
    )


def _pad_columns(x_BxK: Array, width: int, value: int) -> Array:
    return jnp.pad(x_BxK, ((0, 0), (0, width - x_BxK.shape[1])), constant_values=value)


def _special_mask(
    batch: Batch, prefix: str, special_token_ids: Sequence[int]
) -> Array:
    if prefix + "special_tokens_mask" in batch:
        return batch[prefix + "special_tokens_mask"].astype(bool)
    ids_BxS = batch[prefix + "input_ids"]
    return jnp.isin(ids_BxS, jnp.asarray(list(special_token_ids), ids_BxS.dtype))


def _mask_unlabeled(
    rng: Array,
    batch: Batch,
    prefix: str,
    *,
    vocab_size: int,
    mask_token_id: int,
    max_mlm_targets: int,
    probability: float,
    special_token_ids: Sequence[int],
) -> tuple[Array, Array, Array, Array]:
    return mask_tokens_positions(
        rng,
        batch[prefix + "input_ids"],
        _special_mask(batch, prefix, special_token_ids),
        vocab_size=vocab_size,
        mask_token_id=mask_token_id,
        probability=probability,
        max_targets=max_mlm_targets,
        attention_mask=batch[prefix + "attention_mask"],
    )


def make_pet_loss(
    apply_fn: Callable,
    verbalizer_ids_LxW: Any,
    *,
    alpha: float = 1e-4,
    mask_token_id: int,
    vocab_size: int,
    max_mlm_targets: int = 20,
    pad_id: int = 0,
    special_token_ids: Sequence[int] = (),
    mlm_probability: float = 0.15,
) -> LossFn:
    """PET loss: (1 - alpha) * cloze + alpha * MLM (paper convention, alpha = 1e-4).

    Without "unlabeled_input_ids" in the batch the loss is the cloze loss alone (alpha unused).
    special_token_ids (CLS/SEP/PAD/MASK...) are never MLM targets; pad_id is among them.
    aux: cloze, mlm (0 without unlabeled rows).
    """
    verbalizer_ids_LxW = jnp.asarray(verbalizer_ids_LxW, jnp.int32)
    specials = tuple(sorted({int(pad_id), int(mask_token_id), *map(int, special_token_ids)}))

    def loss_fn(params: Any, batch: Batch, rng: Array) -> tuple[Array, dict[str, Array]]:
        rng_mask, rng_dropout = jax.random.split(rng)
        mask_positions_BxK = batch["mask_positions"]
        with_mlm = UNLABELED + "input_ids" in batch
        width = max(mask_positions_BxK.shape[1], max_mlm_targets if with_mlm else 0)
        positions_BxP = _pad_columns(jnp.maximum(mask_positions_BxK, 0), width, 0)
        joint = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                 if k in batch}
        num_labeled = positions_BxP.shape[0]
        if with_mlm:
            inputs_UxS, mlm_positions_UxP, targets_UxP, weights_UxP = _mask_unlabeled(
                rng_mask, batch, UNLABELED, vocab_size=vocab_size, mask_token_id=mask_token_id,
                max_mlm_targets=max_mlm_targets, probability=mlm_probability,
                special_token_ids=specials,
            )
            unlabeled = {"input_ids": inputs_UxS,
                         "attention_mask": batch[UNLABELED + "attention_mask"]}
            if "token_type_ids" in joint:
                unlabeled["token_type_ids"] = batch.get(
                    UNLABELED + "token_type_ids", jnp.zeros_like(inputs_UxS)
                )
            if joint["input_ids"].shape[1] != inputs_UxS.shape[1]:
                raise ValueError(
                    "labeled and unlabeled arrays must have the same sequence length, got "
                    f"{joint['input_ids'].shape[1]} and {inputs_UxS.shape[1]}"
                )
            joint = {k: jnp.concatenate([v, unlabeled[k]], axis=0) for k, v in joint.items()}
            positions_BxP = jnp.concatenate(
                [positions_BxP, _pad_columns(mlm_positions_UxP, width, 0)], axis=0
            )
        logits_BxPxV = forward(apply_fn, params, joint, "", rng_dropout, positions=positions_BxP)
        logits_BxPxV = logits_BxPxV.astype(jnp.float32)
        scores_BxL = losses.label_logits(logits_BxPxV[:num_labeled, 0], verbalizer_ids_LxW)
        cloze = losses.cloze_loss(scores_BxL, batch["labels"])
        if not with_mlm:
            return cloze, {"cloze": cloze, "mlm": jnp.zeros((), jnp.float32)}
        mlm = losses.mlm_loss(
            logits_BxPxV[num_labeled:, :max_mlm_targets], targets_UxP, weights_UxP
        )
        return losses.pet_loss(cloze, mlm, alpha), {"cloze": cloze, "mlm": mlm}

    return loss_fn


def make_member_pet_loss(apply_fn: Callable, **pet_kwargs: Any) -> LossFn:
    """make_pet_loss reading the verbalizer ids [L, W] from the batch key "verbalizer_ids"
    ([M, L, W] for the ensemble, jaxpet.engine.ensemble_training); pet_kwargs as make_pet_loss
    takes them."""
    return constants_from_batch(lambda v_LxW: make_pet_loss(apply_fn, v_LxW, **pet_kwargs),
                                ("verbalizer_ids",))


def make_classifier_loss(
    apply_fn: Callable, soft_labels: bool = False, temperature: float = 2.0
) -> LossFn:
    """Sequence classifier: cross-entropy on `labels` [B], or with soft_labels distillation
    (KL * T^2) towards the teacher scores in `logits` [B, L]; optional `weights` [B]."""

    def loss_fn(params: Any, batch: Batch, rng: Array) -> tuple[Array, dict[str, Array]]:
        logits_BxL = forward(apply_fn, params, batch, "", rng).astype(jnp.float32)
        weights_B = batch.get("weights")
        if soft_labels:
            loss = losses.distillation_loss(logits_BxL, batch["logits"], temperature, weights_B)
        else:
            loss = losses.classification_loss(logits_BxL, batch["labels"], weights_B)
        return loss, {}

    return loss_fn


def make_mlm_loss(
    apply_fn: Callable,
    *,
    mask_token_id: int,
    vocab_size: int,
    max_mlm_targets: int = 20,
    pad_id: int = 0,
    special_token_ids: Sequence[int] = (),
    mlm_probability: float = 0.15,
) -> LossFn:
    """MLM-only loss (the mlm_pretrain stage) on input_ids/attention_mask[/token_type_ids]."""
    specials = tuple(sorted({int(pad_id), int(mask_token_id), *map(int, special_token_ids)}))

    def loss_fn(params: Any, batch: Batch, rng: Array) -> tuple[Array, dict[str, Array]]:
        rng_mask, rng_dropout = jax.random.split(rng)
        inputs_BxS, positions_BxP, targets_BxP, weights_BxP = _mask_unlabeled(
            rng_mask, batch, "", vocab_size=vocab_size, mask_token_id=mask_token_id,
            max_mlm_targets=max_mlm_targets, probability=mlm_probability,
            special_token_ids=specials,
        )
        masked = {**batch, "input_ids": inputs_BxS}
        logits_BxPxV = forward(apply_fn, params, masked, "", rng_dropout, positions=positions_BxP)
        mlm = losses.mlm_loss(logits_BxPxV.astype(jnp.float32), targets_BxP, weights_BxP)
        return mlm, {"mlm": mlm}

    return loss_fn


def make_label_logits_fn(
    apply_fn: Callable, verbalizer_ids_LxW: Any
) -> Callable[[Any, Batch], Array]:
    """fn(params, batch) -> [B, L] verbalizer scores at the first mask slot (for predict)."""
    verbalizer_ids_LxW = jnp.asarray(verbalizer_ids_LxW, jnp.int32)

    def label_logits_fn(params: Any, batch: Batch) -> Array:
        positions_Bx1 = jnp.maximum(batch["mask_positions"][:, :1], 0)
        logits_Bx1xV = forward(apply_fn, params, batch, "", None, positions=positions_Bx1)
        return losses.label_logits(logits_Bx1xV[:, 0].astype(jnp.float32), verbalizer_ids_LxW)

    return label_logits_fn


def make_classifier_logits_fn(apply_fn: Callable) -> Callable[[Any, Batch], Array]:
    """fn(params, batch) -> [B, L] classifier logits (for predict)."""

    def classifier_logits_fn(params: Any, batch: Batch) -> Array:
        return forward(apply_fn, params, batch, "", None).astype(jnp.float32)

    return classifier_logits_fn
