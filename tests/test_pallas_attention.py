"""The Pallas attention kernel (interpret mode on CPU): XLA's attention without dropout, a
plain-jnp softmax-dropout reference with the hash mask, and the encoder's model.attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet.models.pallas_attention import dropout_keep_mask, pallas_attention

# S = 20 with 16-wide blocks: two key blocks (the online softmax rescales across them) and
# 12 padding positions that the kernel must mask; row 1 also has 9 padded keys of its own.
B, S, N, H, BLOCK = 2, 20, 2, 8, 16
RATE = 0.3


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    q, k, v, w = (jnp.asarray(rng.normal(size=(B, S, N, H)), jnp.float32) for _ in range(4))
    mask_BxS = jnp.asarray(np.arange(S)[None, :] < np.array([S, 11])[:, None], jnp.int32)
    return q, k, v, w, mask_BxS


def _loss_and_grads(attend, q, k, v, w):
    """sum(attention(q, k, v) * w) (w: a random cotangent) and its gradients wrt q, k, v."""
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(attend(q, k, v) * w),
                                      argnums=(0, 1, 2)))(q, k, v)


def _assert_close(got, want):
    # fp32 kernels that sum in different orders agree to ~1e-6; a missing online-softmax
    # rescale, a lost key mask or a wrong dropout entry moves values by > 1e-2
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-4)


def test_forward_and_gradients_equal_xla_attention_without_dropout(inputs):
    q, k, v, w, mask_BxS = inputs
    keep_Bx1x1xS = mask_BxS.astype(bool)[:, None, None, :]
    loss, grads = _loss_and_grads(
        lambda q, k, v: pallas_attention(q, k, v, mask_BxS, block=BLOCK), q, k, v, w)
    ref_loss, ref_grads = _loss_and_grads(
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=keep_Bx1x1xS), q, k, v, w)
    _assert_close(loss, ref_loss)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        _assert_close(grad, ref_grad)


def test_bfloat16_inputs_give_xla_attention_within_bfloat16_rounding(inputs):
    q, k, v, _, mask_BxS = (x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x
                            for x in inputs)
    out = pallas_attention(q, k, v, mask_BxS, block=BLOCK)
    ref = jax.nn.dot_product_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                                       v.astype(jnp.float32),
                                       mask=mask_BxS.astype(bool)[:, None, None, :])
    assert out.dtype == jnp.bfloat16
    # bf16 keeps 8 mantissa bits (~4e-3 relative) on outputs of size ~1; a lost mask or
    # rescale moves them by > 0.1
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=3e-2)


def _reference_with_dropout(q, k, v, mask_BxS, keep_BxNxSxS, rate):
    """Softmax over unmasked keys, then the kept probabilities scaled by 1 / (1 - rate)."""
    scores_BxNxSxS = jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(H)
    scores_BxNxSxS = jnp.where(mask_BxS.astype(bool)[:, None, None, :], scores_BxNxSxS, -1e30)
    probs_BxNxSxS = jax.nn.softmax(scores_BxNxSxS, axis=-1)
    probs_BxNxSxS = jnp.where(keep_BxNxSxS, probs_BxNxSxS / (1.0 - rate), 0.0)
    return jnp.einsum("bnqk,bknh->bqnh", probs_BxNxSxS, v)


def test_dropout_output_and_gradients_equal_the_reference_with_the_hash_mask(inputs):
    q, k, v, w, mask_BxS = inputs
    seed, step = 1234, 7
    keep_BxNxSxS = dropout_keep_mask(seed, B, N, S, RATE, step=step)
    loss, grads = _loss_and_grads(
        lambda q, k, v: pallas_attention(q, k, v, mask_BxS, dropout_rate=RATE, seed=seed,
                                         step=step, block=BLOCK), q, k, v, w)
    ref_loss, ref_grads = _loss_and_grads(
        lambda q, k, v: _reference_with_dropout(q, k, v, mask_BxS, keep_BxNxSxS, RATE),
        q, k, v, w)
    _assert_close(loss, ref_loss)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        _assert_close(grad, ref_grad)
    # and dropout really acted: the output is not the no-dropout one
    no_drop = _reference_with_dropout(q, k, v, mask_BxS, jnp.ones_like(keep_BxNxSxS), 0.0)
    out = pallas_attention(q, k, v, mask_BxS, dropout_rate=RATE, seed=seed, step=step,
                           block=BLOCK)
    assert float(jnp.abs(out - no_drop).max()) > 0.1


def test_dropout_mask_keeps_1_minus_rate_and_changes_with_seed_and_step():
    b, n, s = 2, 3, 64
    keep = np.asarray(dropout_keep_mask(5, b, n, s, RATE, step=0))
    assert keep.shape == (b, n, s, s) and keep.dtype == bool
    # 24576 Bernoulli(0.7) draws: std of the mean 0.003; a biased threshold is off by > 0.02
    assert abs(keep.mean() - (1 - RATE)) < 0.015
    # two independent masks agree on a fraction r^2 + (1-r)^2 = 0.58; a hash that ignores
    # seed, step or an index agrees on 1.0 there
    agree = RATE**2 + (1 - RATE) ** 2
    others = {
        "seed": np.asarray(dropout_keep_mask(6, b, n, s, RATE, step=0)),
        "step": np.asarray(dropout_keep_mask(5, b, n, s, RATE, step=1)),
    }
    pairs = {
        **{name: (keep, other) for name, other in others.items()},
        "batch": (keep[0], keep[1]),
        "head": (keep[:, 0], keep[:, 1]),
        "query": (keep[:, :, :-1], keep[:, :, 1:]),
        "key": (keep[..., :-1], keep[..., 1:]),
        "transpose": (keep, keep.transpose(0, 1, 3, 2)),
    }
    for name, (left, right) in pairs.items():
        # >= 8000 pairs: std of the agreement 0.006; 0.03 is 5 std
        assert abs((left == right).mean() - agree) < 0.03, name
    # the same seed and step give the same mask (reproducible on resume)
    np.testing.assert_array_equal(np.asarray(dropout_keep_mask(5, b, n, s, RATE)), keep)


def test_dropout_rate_out_of_range_is_refused(inputs):
    q, k, v, _, mask_BxS = inputs
    with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\)"):
        pallas_attention(q, k, v, mask_BxS, dropout_rate=1.0)


def test_tpus_are_refused_with_the_alternative(inputs, monkeypatch):
    q, k, v, _, mask_BxS = inputs
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    with pytest.raises(ValueError, match="not on TPUs: use model.attention 'xla'"):
        pallas_attention(q, k, v, mask_BxS)


TINY_BERT = dict(model_type="bert", vocab_size=64, hidden_size=16, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                 embedding_size=16)


def test_bert_mlm_with_pallas_attention_gives_the_xla_logits():
    from jaxpet.models.config import EncoderConfig
    from jaxpet.models.pretrained import init_model

    rng = np.random.default_rng(1)
    mask_BxS = (np.arange(12)[None, :] < np.array([12, 7])[:, None]).astype(np.int32)
    ids_BxS = np.where(mask_BxS > 0, rng.integers(5, 64, size=(2, 12)), 0).astype(np.int32)
    xla = init_model(EncoderConfig(**TINY_BERT), head="mlm")
    pallas_module = xla.module.clone(config=EncoderConfig(**TINY_BERT, attention="pallas"))
    logits_xla = xla.module.apply({"params": xla.params}, ids_BxS, mask_BxS)
    logits_pallas = jax.jit(pallas_module.apply)({"params": xla.params}, ids_BxS, mask_BxS)
    valid = mask_BxS.astype(bool)
    # two fp32 attention kernels round differently (~1e-6); a lost key mask is > 1e-2
    np.testing.assert_allclose(np.asarray(logits_pallas)[valid], np.asarray(logits_xla)[valid],
                               atol=1e-5)


def _config_with(tmp_path, *overrides: str):
    from jaxpet.config import load_config

    path = tmp_path / "exp.yaml"
    path.write_text("output_dir: out\ntask:\n  name: agnews\n  data_dir: d\nmodel:\n  name: m\n"
                    "mesh:\n  data: 1\n")
    return load_config(path, list(overrides))


def test_config_accepts_pallas_with_attention_dropout_and_lists_the_choices(tmp_path):
    from jaxpet.config import ConfigError
    from jaxpet.models.config import EncoderConfig

    config = _config_with(tmp_path, "model.attention=pallas", "model.attention_dropout=0.1")
    assert (config.model.attention, config.model.attention_dropout) == ("pallas", 0.1)
    with pytest.raises(ConfigError, match=r"'model.attention'.*\['xla', 'cudnn', 'pallas'\]"):
        _config_with(tmp_path, "model.attention=flash")
    with pytest.raises(ValueError, match="attention must be 'xla', 'cudnn' or 'pallas'"):
        EncoderConfig(**TINY_BERT, attention="flash")


def test_bert_trains_with_pallas_attention_dropout_reproducibly_per_rng():
    from jaxpet.models.config import EncoderConfig
    from jaxpet.models.pretrained import init_model

    config = EncoderConfig(**TINY_BERT, attention="pallas", hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.5)
    lm = init_model(config, head="mlm")
    ids_BxS = np.arange(2 * 12, dtype=np.int32).reshape(2, 12) % 60 + 4
    mask_BxS = np.ones_like(ids_BxS)

    @jax.jit
    def loss_and_grads(params, key):
        def loss(params):
            logits = lm.module.apply({"params": params}, ids_BxS, mask_BxS, deterministic=False,
                                     rngs={"dropout": key})
            return jnp.mean(logits**2), logits
        return jax.value_and_grad(loss, has_aux=True)(params)

    (_, logits_a), grads_a = loss_and_grads(lm.params, jax.random.key(0))
    (_, logits_again), _ = loss_and_grads(lm.params, jax.random.key(0))
    (_, logits_b), _ = loss_and_grads(lm.params, jax.random.key(1))
    logits_eval = lm.module.apply({"params": lm.params}, ids_BxS, mask_BxS)
    # same rng, same hash mask: bit-identical
    np.testing.assert_array_equal(np.asarray(logits_a), np.asarray(logits_again))
    # half the probabilities dropped moves the logits far beyond fp32 rounding (~1e-7)
    assert float(jnp.abs(logits_a - logits_b).max()) > 1e-4
    assert float(jnp.abs(logits_a - logits_eval).max()) > 1e-4
    leaves = jax.tree_util.tree_leaves(grads_a)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_memory_estimate_counts_no_score_matrix_for_pallas(tmp_path, monkeypatch):
    import types

    import jaxpet.engine.memory as memory
    import jaxpet.pipelines.setup as setup
    from jaxpet.models.config import EncoderConfig
    from jaxpet.pipelines.setup import check_memory

    seen: list[bool] = []
    original = memory.estimate_memory

    def recording(*args, **kwargs):
        seen.append(kwargs["fused_attention"])
        return original(*args, **kwargs)

    # patched where check_memory looks them up
    monkeypatch.setattr(setup, "estimate_memory", recording)
    monkeypatch.setattr(setup, "device_memory_bytes", lambda: None)
    lm = types.SimpleNamespace(config=EncoderConfig(**TINY_BERT), head="mlm")
    for attention in ("xla", "pallas"):
        check_memory(_config_with(tmp_path, f"model.attention={attention}"), lm, "mlm")
    assert seen == [False, True]  # the kernel keeps no [S, S] scores, as cudnn's


def test_kernels_lower_to_triton_for_cuda_without_a_gpu(monkeypatch):
    """The GPU path's lowering (Triton IR) runs on the CPU; only compiling it needs a GPU."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    x = jax.ShapeDtypeStruct((2, 100, 4, 64), jnp.bfloat16)  # padded to 128 inside
    mask = jax.ShapeDtypeStruct((2, 100), jnp.int32)

    def grads(q, k, v, mask_BxS):
        def loss(q, k, v):
            out = pallas_attention(q, k, v, mask_BxS, dropout_rate=0.1, seed=3)
            return out.astype(jnp.float32).sum()
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    text = jax.jit(grads).trace(x, x, x, mask).lower(lowering_platforms=("cuda",)).as_text()
    # forward, dK/dV and dQ: three Triton kernels, none of them interpreted
    assert text.count("__gpu$xla.gpu.triton") == 3
