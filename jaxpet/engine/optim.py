"""AdamW with PET's defaults: linear warmup/decay, clipping, no decay on biases and LayerNorm.

Schedules count optimizer updates, not micro-batches: with `accumulation_steps` k the
transformation (optax.MultiSteps) averages k micro-batch gradients, clips the average and
applies one AdamW update, so `num_steps` is the number of such updates. The original PET
divides the loss by k and sums gradients, which is the same average.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxpet.config import TrainingConfig

# No weight decay on biases and on normalisation parameters (any path part with "norm",
# e.g. LayerNorm, attention_norm, final_layer_norm, or "ln_*"), as the original PET does.
_NO_DECAY_PART = re.compile(r"norm|^ln(_|$)", re.IGNORECASE)


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def decay_mask(params: Any) -> Any:
    """Tree of bools: True where weight decay applies (not biases, not normalisation params)."""

    def decays(path: tuple, _leaf: Any) -> bool:
        names = [_key_name(p) for p in path]
        if names and names[-1] == "bias":
            return False
        return not any(_NO_DECAY_PART.search(n) for n in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_schedule(learning_rate: float, num_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """lr * t/warmup during warmup, then linear decay to 0 at num_steps (per optimizer update)."""
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if not 0 <= warmup_steps <= num_steps:
        raise ValueError(f"warmup_steps must be in [0, num_steps={num_steps}], got {warmup_steps}")
    decay = optax.linear_schedule(learning_rate, 0.0, num_steps - warmup_steps)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def make_learning_rate_fn(
    learning_rate: float = 1e-5,
    num_steps: int = 1,
    warmup_steps: int = 0,
    accumulation_steps: int = 1,
) -> Callable[[jax.Array], jax.Array]:
    """Learning rate used at micro-step `step` (the train state's step), for logging."""
    schedule = make_schedule(learning_rate, num_steps, warmup_steps)
    return lambda step: schedule(jnp.asarray(step) // accumulation_steps)


def make_optimizer(
    learning_rate: float = 1e-5,
    num_steps: int = 1,
    warmup_steps: int = 0,
    weight_decay: float = 0.01,
    adam_eps: float = 1e-8,
    max_grad_norm: float = 1.0,
    accumulation_steps: int = 1,
    b1: float = 0.9,
    b2: float = 0.999,
) -> optax.GradientTransformation:
    """clip(max_grad_norm) -> AdamW(schedule, eps, decoupled weight decay on the decay mask).

    max_grad_norm <= 0 disables clipping; accumulation_steps > 1 wraps it in optax.MultiSteps.
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    parts = []
    if max_grad_norm and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(
        optax.adamw(
            make_schedule(learning_rate, num_steps, warmup_steps),
            b1=b1,
            b2=b2,
            eps=adam_eps,
            weight_decay=weight_decay,
            mask=decay_mask,
        )
    )
    tx = optax.chain(*parts)
    if accumulation_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulation_steps)
    return tx


def num_updates(settings: TrainingConfig, num_rows: int, batch_size: int) -> int:
    """Optimizer updates: max_steps, or num_train_epochs passes over the `num_rows` rows that
    the stage steps through `batch_size` at a time (the labeled set for a PET member; the
    unlabeled set, in classifier.unlabeled_batch_size batches, for the distillation)."""
    if settings.max_steps > 0:
        return settings.max_steps
    micro_steps = settings.num_train_epochs * -(-num_rows // batch_size)
    return max(1, -(-micro_steps // settings.accumulation_steps))
