"""Flax T5 vs transformers' T5ForConditionalGeneration: logits, KV cache, conversion round trips."""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_t5 import make_tiny_t5

torch = pytest.importorskip("torch")

from jaxpet.models.t5 import T5, init_t5_params, t5_logical_axes  # noqa: E402
from jaxpet.models.t5_config import T5Config  # noqa: E402
from jaxpet.models.t5_convert import flax_to_hf, hf_to_flax, load_t5, save_t5  # noqa: E402

VOCAB = 224


@pytest.fixture(scope="module", params=["1.0", "1.1"])
def tiny(request, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp(f"t5v{request.param}"))
    hf = make_tiny_t5(folder, request.param, vocab_size=VOCAB)
    module, params, config = load_t5(folder)
    forward = jax.jit(lambda p, ids, mask, dec, dmask: module.apply(
        {"params": p}, ids, mask, decoder_input_ids=dec, decoder_attention_mask=dmask))
    return dict(version=request.param, folder=folder, hf=hf, module=module, params=params,
                config=config, forward=forward)


def padded_batch(seed: int = 0):
    """Encoder inputs with right padding and decoder inputs with padded tails."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (3, 13))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    dec = rng.integers(3, VOCAB, (3, 7))
    dec[:, 0] = 0
    dmask = np.ones_like(dec)
    dmask[1, 5:] = 0
    dmask[2, 2:] = 0
    dec[dmask == 0] = 0
    return ids, mask, dec, dmask


def hf_logits(hf, ids, mask, dec, dmask):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  decoder_input_ids=torch.tensor(dec),
                  decoder_attention_mask=torch.tensor(dmask)).logits.numpy()


def test_config_flags_follow_checkpoint(tiny):
    cfg = tiny["config"]
    if tiny["version"] == "1.0":
        assert cfg.tie_word_embeddings and cfg.scale_decoder_outputs
        assert not cfg.is_gated_act and "lm_head" not in tiny["params"]
    else:
        assert not cfg.tie_word_embeddings and not cfg.scale_decoder_outputs
        assert cfg.is_gated_act and cfg.dense_act_fn == "gelu_new"
        assert tiny["params"]["lm_head"]["kernel"].shape == (cfg.d_model, VOCAB)
    assert tiny["params"]["encoder"]["block"]["self_attention"]["q"]["kernel"].shape == (
        cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.d_kv)


def test_logits_match_transformers_with_padding(tiny):
    ids, mask, dec, dmask = padded_batch()
    ref = hf_logits(tiny["hf"], ids, mask, dec, dmask)
    ours = np.asarray(tiny["forward"](tiny["params"], ids, mask, dec, dmask))
    assert ours.shape == ref.shape == (3, 7, VOCAB)
    # fp32 parity across frameworks (~1e-6 per op); a wrong bias bucket or mask moves logits > 1e-2
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # Encoder padding matters: unmasking the pads changes the logits of row 2.
    unmasked = np.asarray(tiny["forward"](tiny["params"], ids, np.ones_like(mask), dec, dmask))
    assert np.abs(unmasked[2] - ours[2]).max() > 1e-3


def test_cached_decoding_equals_full_forward(tiny):
    module, params = tiny["module"], tiny["params"]
    ids, mask, dec, _ = padded_batch(1)
    full = np.asarray(tiny["forward"](params, ids, mask, dec, np.ones_like(dec)))
    variables = {"params": params}
    cache = jax.jit(lambda: module.apply(variables, module.apply(
        variables, ids, mask, method="encode"), mask, 9, method="init_cache"))()
    step = jax.jit(lambda c, tok: module.apply(variables, tok, c, mask, method="decode_step"))
    pieces = []
    for t in range(dec.shape[1]):
        logits, cache = step(cache, dec[:, t:t + 1])
        pieces.append(np.asarray(logits))
    assert int(cache["index"]) == dec.shape[1]
    # cached steps vs one full pass (fp32 reordering); a stale cache entry or position is > 1e-2
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)


def test_save_then_transformers_loads_same_logits(tiny, tmp_path):
    from transformers import T5ForConditionalGeneration

    out = save_t5(tiny["module"], tiny["params"], tiny["config"], str(tmp_path / "saved"))
    reloaded = T5ForConditionalGeneration.from_pretrained(out).eval()
    ids, mask, dec, dmask = padded_batch(2)
    ours = np.asarray(tiny["forward"](tiny["params"], ids, mask, dec, dmask))
    # fp32 parity after saving; a mis-named or transposed weight moves logits by > 1e-2
    np.testing.assert_allclose(hf_logits(reloaded, ids, mask, dec, dmask), ours, atol=1e-4, rtol=0)
    # ... and jaxpet reads its own output back to identical parameters and flags.
    _, params2, config2 = load_t5(out)
    assert config2 == tiny["config"]
    jax.tree.map(np.testing.assert_array_equal, params2, tiny["params"])


def test_state_dict_round_trip_is_exact(tiny):
    from safetensors.numpy import load_file

    state = load_file(os.path.join(tiny["folder"], "model.safetensors"))
    back = flax_to_hf(hf_to_flax(state, tiny["config"]), tiny["config"])
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    with pytest.raises(ValueError, match="unexpected T5 weights"):
        hf_to_flax(dict(state, **{"encoder.block.9.extra.weight": np.zeros(2)}), tiny["config"])
    missing = {k: v for k, v in state.items() if "final_layer_norm" not in k}
    with pytest.raises(KeyError, match="final_layer_norm"):
        hf_to_flax(missing, tiny["config"])


def test_transformers5_config_flags_are_honoured():
    base = dict(vocab_size=10, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    # Old-style config (as on the hub): tie_word_embeddings false -> no rescale, untied.
    old = T5Config.from_hf_dict(
        dict(base, feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    assert not old.scale_decoder_outputs and not old.tie_word_embeddings
    # transformers 5 writes tie_word_embeddings true plus an explicit scale_decoder_outputs.
    new = T5Config.from_hf_dict(dict(base, tie_word_embeddings=True, scale_decoder_outputs=False))
    assert not new.scale_decoder_outputs and new.tie_word_embeddings
    assert T5Config.from_hf_dict(base).scale_decoder_outputs
    assert not T5Config.from_hf_dict(dict(base, model_type="mt5")).scale_decoder_outputs
    with pytest.raises(ValueError, match="missing T5 config key 'd_ff'"):
        T5Config.from_hf_dict({k: v for k, v in base.items() if k != "d_ff"}, "x/config.json")
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-gelu-x")


def test_transformers5_reads_our_flags(tmp_path):
    from transformers import T5Config as HFT5Config

    cfg = T5Config(vocab_size=10, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1,
                   num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   scale_decoder_outputs=False)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    hf = HFT5Config.from_pretrained(str(tmp_path))
    assert hf.scale_decoder_outputs is False and hf.is_gated_act and hf.dense_act_fn == "gelu_new"


# dtype handling and the param layout do not depend on the version: one compile, on v1.1.
@pytest.mark.parametrize("tiny", ["1.1"], indirect=True)
def test_bf16_compute_keeps_fp32_params_and_close_logits(tiny):
    ids, mask, dec, dmask = padded_batch()
    module16 = T5(tiny["config"], jnp.bfloat16)
    logits16 = jax.jit(lambda p: module16.apply({"params": p}, ids, mask, decoder_input_ids=dec,
                                                decoder_attention_mask=dmask))(tiny["params"])
    assert logits16.dtype == jnp.float32  # logits come back in float32 for the loss
    # bf16 really is the compute dtype: every matmul of the program takes bf16 operands
    hlo = jax.jit(lambda p: module16.apply({"params": p}, ids, mask, decoder_input_ids=dec,
                                           decoder_attention_mask=dmask)).lower(
        tiny["params"]).as_text()
    operand_dtypes = re.findall(
        r"dot_general.*: \(tensor<(?:\d+x)*(\w+)>, tensor<(?:\d+x)*(\w+)>\)", hlo)
    assert len(operand_dtypes) == hlo.count("dot_general") > 0
    assert set(operand_dtypes) == {("bf16", "bf16")}
    ref = np.asarray(tiny["forward"](tiny["params"], ids, mask, dec, dmask))
    scale = np.abs(ref).max()
    # bf16 rounding through this model stays near 1.3% of the largest logit; a skipped layer,
    # mask or scale moves logits by tens of percent
    assert np.abs(np.asarray(logits16) - ref).max() < 0.03 * scale
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tiny["params"]))


@pytest.mark.parametrize("tiny", ["1.1"], indirect=True)
def test_logical_axes_and_random_init(tiny):
    cfg = tiny["config"]
    axes = t5_logical_axes(cfg)
    block = axes["decoder"]["block"]
    assert tuple(block["self_attention"]["q"]["kernel"]) == ("layers", "embed", "heads", "kv")
    assert tuple(block["cross_attention"]["o"]["kernel"]) == ("layers", "heads", "kv", "embed")
    assert tuple(block["mlp"]["wo"]["kernel"]) == ("layers", "mlp", "embed")
    assert tuple(axes["shared"]["embedding"]) == ("vocab", "embed")
    params = init_t5_params(cfg, jax.random.key(0))
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, tiny["params"])
