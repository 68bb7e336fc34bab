"""Optimizer: decay mask, PET's schedule, clipping, and accumulation == one large batch."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpet.engine.optim import decay_mask, make_learning_rate_fn, make_optimizer, make_schedule


def _params() -> dict:
    rng = np.random.default_rng(0)
    return {
        "encoder": {
            "layer": {
                "intermediate": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)},
                "attention_norm": {"scale": rng.normal(size=4), "bias": rng.normal(size=4)},
            },
            "embeddings": {"word_embeddings": {"embedding": rng.normal(size=(5, 3))},
                           "LayerNorm": {"scale": rng.normal(size=3), "bias": rng.normal(size=3)}},
        },
        "bias": rng.normal(size=5),
    }


def test_decay_mask_skips_biases_and_layer_norms():
    mask = decay_mask(_params())
    assert mask["encoder"]["layer"]["intermediate"] == {"kernel": True, "bias": False}
    assert mask["encoder"]["layer"]["attention_norm"] == {"scale": False, "bias": False}
    assert mask["encoder"]["embeddings"]["LayerNorm"] == {"scale": False, "bias": False}
    assert mask["encoder"]["embeddings"]["word_embeddings"]["embedding"] is True
    assert mask["bias"] is False


def test_weight_decay_only_where_the_mask_says():
    params = jax.tree.map(jnp.asarray, _params())
    zeros = jax.tree.map(jnp.zeros_like, params)
    lr, wd = 0.1, 0.5
    tx = make_optimizer(learning_rate=lr, num_steps=10, weight_decay=wd)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    mask = decay_mask(params)
    for (path, u), p, m in zip(jax.tree_util.tree_leaves_with_path(updates),
                               jax.tree.leaves(params), jax.tree.leaves(mask), strict=True):
        expected = -lr * wd * np.asarray(p) if m else np.zeros_like(p)
        # fp32 rounding of lr * wd * p; decaying a bias/norm or skipping a kernel is off by 100%
        np.testing.assert_allclose(u, expected, rtol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_schedule_matches_linear_warmup_then_decay():
    lr, total, warmup = 1e-5, 10, 4
    schedule = make_schedule(lr, total, warmup)
    for t in range(total + 2):
        # The formula of the usual "linear schedule with warmup".
        expected = lr * t / warmup if t < warmup else lr * max(0.0, (total - t) / (total - warmup))
        # fp32 rounding of the schedule; an off-by-one step changes it by >= 1/total
        np.testing.assert_allclose(float(schedule(t)), expected, rtol=1e-6, atol=1e-12)
    assert float(make_schedule(lr, total)(0)) == pytest.approx(lr)
    per_micro_step = make_learning_rate_fn(lr, total, warmup, accumulation_steps=2)
    assert float(per_micro_step(5)) == pytest.approx(float(schedule(2)))
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule(lr, 3, 5)


def test_adamw_step_matches_a_hand_computation_with_clipping():
    params = {"w": jnp.array([1.0, -2.0]), "bias": jnp.array([0.5])}
    grads = {"w": jnp.array([3.0, 4.0]), "bias": jnp.array([0.0])}  # global norm 5
    lr, eps, wd = 1e-2, 1e-8, 0.01
    tx = make_optimizer(learning_rate=lr, num_steps=100, weight_decay=wd, adam_eps=eps)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    clipped = np.array([3.0, 4.0]) / 5.0
    m, v = 0.1 * clipped, 0.001 * clipped**2
    m_hat, v_hat = m / 0.1, v / 0.001
    expected_w = -lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * np.array([1.0, -2.0]))
    # fp32 AdamW vs float64 formula; a missing bias correction or epsilon placement is off by > 1e-3
    np.testing.assert_allclose(updates["w"], expected_w, rtol=1e-5)
    np.testing.assert_allclose(updates["bias"], [0.0], atol=1e-12)


def test_accumulation_equals_one_large_batch_step():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=8)
    params = {"w": jnp.asarray(rng.normal(size=3)), "bias": jnp.zeros(())}

    def loss(p, xb, yb):
        return jnp.mean((xb @ p["w"] + p["bias"] - yb) ** 2)

    big = make_optimizer(learning_rate=0.1, num_steps=5, warmup_steps=1, max_grad_norm=0.5)
    grad = jax.jit(jax.grad(loss))
    updates, _ = jax.jit(big.update)(grad(params, x, y), big.init(params), params)
    expected = optax.apply_updates(params, updates)

    acc = make_optimizer(learning_rate=0.1, num_steps=5, warmup_steps=1, max_grad_norm=0.5,
                         accumulation_steps=2)
    state, p, update = acc.init(params), params, jax.jit(acc.update)
    for half in (slice(0, 4), slice(4, 8)):
        updates, state = update(grad(p, x[half], y[half]), state, p)
        p = optax.apply_updates(p, updates)
        if half.start == 0:  # nothing applied after the first micro-batch
            np.testing.assert_array_equal(p["w"], params["w"])
    for k in expected:
        # fp32: two half-batch gradients vs one full batch; a dropped micro-batch is off 2x
        np.testing.assert_allclose(p[k], expected[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("rows", "batch", "epochs", "accumulation", "updates"), [
    (24, 8, 2, 1, 6),  # 3 batches an epoch
    (25, 8, 2, 1, 8),  # a last, partial batch counts
    (24, 4, 3, 2, 9),  # 6 micro-steps an epoch, 2 per update
    (3, 8, 1, 1, 1),  # fewer rows than a batch: one update
])
def test_num_updates_counts_epochs_in_the_stages_own_batches(rows, batch, epochs, accumulation,
                                                             updates):
    from jaxpet.config import TrainingConfig
    from jaxpet.engine.optim import num_updates

    settings = TrainingConfig(max_steps=-1, num_train_epochs=epochs,
                              accumulation_steps=accumulation, train_batch_size=1000)
    # train_batch_size is not the stage's batch (e.g. the distillation's unlabeled batches)
    assert num_updates(settings, rows, batch) == updates
    assert num_updates(dataclasses.replace(settings, max_steps=7), rows, batch) == 7
