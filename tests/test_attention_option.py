"""The encoder's `attention` option: cuDNN's fused kernel is called with key lengths that give
the same outputs as the XLA path's padding mask (checked here through the XLA kernel, since
the test machine has no GPU), and training with attention dropout is refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet.models.config import EncoderConfig
from jaxpet.models.pretrained import init_model

CONFIG = dict(model_type="bert", vocab_size=64, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
              embedding_size=32)


def _right_padded_batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths_B = np.array([12, 5, 9])
    mask_BxS = (np.arange(12)[None, :] < lengths_B[:, None]).astype(np.int32)
    ids_BxS = np.where(mask_BxS > 0, rng.integers(5, 64, size=(3, 12)), 0).astype(np.int32)
    return ids_BxS, mask_BxS


def test_cudnn_attention_gets_key_lengths_equal_to_the_padding_mask(monkeypatch):
    original = jax.nn.dot_product_attention
    seen: list[dict] = []

    def via_xla(query, key, value, *args, implementation=None, key_value_seq_lengths=None,
                **kwargs):
        seen.append({"implementation": implementation, "lengths": key_value_seq_lengths})
        if implementation == "cudnn":  # the same attention, computed by XLA from the lengths
            keep_BxS = jnp.arange(key.shape[1])[None, :] < key_value_seq_lengths[:, None]
            return original(query, key, value, mask=keep_BxS[:, None, None, :])
        return original(query, key, value, *args, implementation=implementation,
                        key_value_seq_lengths=key_value_seq_lengths, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", via_xla)
    ids_BxS, mask_BxS = _right_padded_batch()
    xla = init_model(EncoderConfig(**CONFIG), head="mlm")
    cudnn_config = EncoderConfig(**CONFIG, attention="cudnn")
    cudnn_module = xla.module.clone(config=cudnn_config)
    logits_xla = xla.module.apply({"params": xla.params}, ids_BxS, mask_BxS)
    logits_cudnn = cudnn_module.apply({"params": xla.params}, ids_BxS, mask_BxS)
    cudnn_calls = [call for call in seen if call["implementation"] == "cudnn"]
    assert cudnn_calls and not [call for call in seen if call["implementation"] != "cudnn"][1:]
    np.testing.assert_array_equal(np.asarray(cudnn_calls[0]["lengths"]), mask_BxS.sum(-1))
    valid = mask_BxS.astype(bool)
    np.testing.assert_allclose(np.asarray(logits_cudnn)[valid], np.asarray(logits_xla)[valid],
                               atol=1e-5)


def test_cudnn_attention_refuses_to_train_with_attention_dropout():
    ids_BxS, mask_BxS = _right_padded_batch()
    lm = init_model(EncoderConfig(**CONFIG), head="mlm")
    module = lm.module.clone(config=EncoderConfig(**CONFIG, attention="cudnn"))
    with pytest.raises(ValueError, match="attention_probs_dropout_prob"):
        module.apply({"params": lm.params}, ids_BxS, mask_BxS, deterministic=False,
                     rngs={"dropout": jax.random.key(0)})


def test_unknown_attention_kernel_is_refused():
    with pytest.raises(ValueError, match="attention must be 'xla' or 'cudnn'"):
        EncoderConfig(**CONFIG, attention="flash")
