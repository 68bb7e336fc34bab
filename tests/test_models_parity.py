"""Flax encoders reproduce transformers' PyTorch logits (MLM, gathered MLM, classifier)."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models as tm
import torch

from jaxpet.models.pretrained import load_pretrained

POSITIONS_BxP = np.array([[0, 5, 23], [3, 3, 1], [7, 20, 2], [22, 0, 11]])


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tm.shared_root(tmp_path_factory)


def _torch_logits(model, batch):
    kwargs = {k: torch.from_numpy(np.asarray(batch[k])) for k in ("input_ids", "attention_mask")}
    kwargs["token_type_ids"] = torch.from_numpy(np.asarray(batch["token_type_ids"]))
    with torch.no_grad():
        return model(**kwargs).logits.numpy()


def _batch(lm, family):
    batch = tm.encode_batch(lm.tokenizer, pairs=True)
    if family == "albert":  # its tokenizer emits no token types; exercise them anyway
        sep = batch["input_ids"] == lm.tokenizer.sep_token_id
        batch["token_type_ids"] = (np.cumsum(sep, axis=1) - sep > 0).astype(np.int64)
        batch["token_type_ids"] *= batch["attention_mask"]
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    return batch


def _apply(lm, batch, **kwargs):
    return np.asarray(
        tm.jit_apply(
            lm.module,
            lm.params,
            jnp.asarray(batch["input_ids"]),
            jnp.asarray(batch["attention_mask"]),
            token_type_ids=jnp.asarray(batch["token_type_ids"]),
            **kwargs,
        )
    )


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_mlm_logits_match_torch(family, tiny_root):
    folder = tm.build_tiny_checkpoint(family, "mlm", tiny_root)
    lm = load_pretrained(folder, head="mlm")
    batch = _batch(lm, family)
    expected_BxSxV = _torch_logits(tm.load_torch_model(folder, family, "mlm"), batch)

    logits_BxSxV = _apply(lm, batch)
    assert logits_BxSxV.shape == expected_BxSxV.shape
    # fp32 parity across frameworks (~1e-6 per op); a wrong mask, scale or layer moves logits > 1e-2
    np.testing.assert_allclose(logits_BxSxV, expected_BxSxV, atol=1e-4, rtol=0)

    positions_BxP = POSITIONS_BxP
    gathered_BxPxV = _apply(lm, batch, positions=jnp.asarray(positions_BxP))
    expected_BxPxV = np.take_along_axis(expected_BxSxV, positions_BxP[:, :, None], axis=1)
    # the head at gathered positions: the same fp32 bound; an off-by-one position differs by > 1e-1
    np.testing.assert_allclose(gathered_BxPxV, expected_BxPxV, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_classifier_logits_match_torch(family, tiny_root):
    folder = tm.build_tiny_checkpoint(family, "classifier", tiny_root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete classifier checkpoint loads without warnings
        lm = load_pretrained(folder, head="classifier")
    batch = _batch(lm, family)
    expected_BxL = _torch_logits(tm.load_torch_model(folder, family, "classifier"), batch)
    logits_BxL = _apply(lm, batch)
    assert logits_BxL.shape == (batch["input_ids"].shape[0], tm.NUM_LABELS)
    # fp32 parity across frameworks; a wrong pooler token or activation moves the logits by > 1e-2
    np.testing.assert_allclose(logits_BxL, expected_BxL, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_bf16_compute_close_to_fp32(family, tiny_root):
    folder = tm.build_tiny_checkpoint(family, "mlm", tiny_root)
    lm32 = load_pretrained(folder, head="mlm")
    lm16 = load_pretrained(folder, head="mlm", dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(lm16.params))
    batch = _batch(lm32, family)
    positions_BxP = jnp.asarray(POSITIONS_BxP)  # the shape the MLM parity test compiled
    fp32_BxPxV = _apply(lm32, batch, positions=positions_BxP)
    bf16_BxPxV = _apply(lm16, batch, positions=positions_BxP)
    assert bf16_BxPxV.dtype == np.float32
    # bf16 really is the compute dtype: every matmul of the program takes bf16 operands
    hlo = jax.jit(lambda p: lm16.module.apply(
        {"params": p}, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
        token_type_ids=jnp.asarray(batch["token_type_ids"]), positions=positions_BxP)).lower(
        lm16.params).as_text()
    operand_dtypes = re.findall(
        r"dot_general.*: \(tensor<(?:\d+x)*(\w+)>, tensor<(?:\d+x)*(\w+)>\)", hlo)
    assert len(operand_dtypes) == hlo.count("dot_general") > 0
    assert set(operand_dtypes) == {("bf16", "bf16")}
    scale = np.abs(fp32_BxPxV).max()
    # bf16 rounding keeps these logits within 0.8% of the largest; a layer, mask or scaling
    # computed wrongly in the bf16 path moves them by tens of percent
    assert np.abs(bf16_BxPxV - fp32_BxPxV).max() < 0.02 * scale
    # the argmax agreed at every position when measured; near-ties may flip a few
    assert (bf16_BxPxV.argmax(-1) == fp32_BxPxV.argmax(-1)).mean() > 0.9


def test_dropout_uses_the_given_rng(tiny_root):
    folder = tm.build_tiny_checkpoint("roberta", "mlm", tiny_root)
    lm = load_pretrained(folder, head="mlm")
    batch = _batch(lm, "roberta")
    positions_BxP = jnp.asarray(POSITIONS_BxP)

    def run(seed):
        return _apply(lm, batch, positions=positions_BxP, deterministic=False,
                      rngs={"dropout": jax.random.key(seed)})

    eval_BxPxV = _apply(lm, batch, positions=positions_BxP)
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))
    assert not np.allclose(run(0), eval_BxPxV)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_same_gradients(tiny_root, policy):
    lm = load_pretrained(tm.build_tiny_checkpoint("bert", "mlm", tiny_root), head="mlm")
    remat_module = lm.module.clone(config=lm.config.replace(remat=True, remat_policy=policy))
    ids_BxS = jnp.asarray(np.random.default_rng(0).integers(5, 60, size=(2, 10)))
    mask_BxS = jnp.ones_like(ids_BxS)

    positions_BxP = jnp.asarray([[1, 3], [0, 9]])

    def grads(module):
        def loss(params):
            logits_BxPxV = module.apply(
                {"params": params}, ids_BxS, mask_BxS, positions=positions_BxP
            )
            return logits_BxPxV.mean()

        return jax.jit(jax.grad(loss))(lm.params)

    for a, b in zip(jax.tree_util.tree_leaves(grads(lm.module)),
                    jax.tree_util.tree_leaves(grads(remat_module)), strict=True):
        # remat changes only fusion order (~1e-8); a remat that drops a term differs > 1e-4
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_params_carry_logical_axis_names(tiny_root):
    from jax.sharding import PartitionSpec

    from jaxpet.models.pretrained import logical_partition_specs

    lm = load_pretrained(tm.build_tiny_checkpoint("bert", "mlm", tiny_root), head="mlm")
    specs = logical_partition_specs(lm)
    layer = specs["encoder"]["layers"]["layer"]
    assert layer["attention"]["query"]["kernel"] == PartitionSpec("layers", "embed", "heads", "kv")
    assert layer["intermediate"]["kernel"] == PartitionSpec("layers", "embed", "mlp")
    assert specs["encoder"]["embeddings"]["word_embeddings"]["embedding"] == PartitionSpec(
        "vocab", "embed"
    )
    assert jax.tree_util.tree_structure(specs) == jax.tree_util.tree_structure(lm.params)
