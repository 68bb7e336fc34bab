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
    assert seen and all(call["implementation"] is None for call in seen)
    seen.clear()
    logits_cudnn = cudnn_module.apply({"params": xla.params}, ids_BxS, mask_BxS)
    assert seen and all(call["implementation"] == "cudnn" for call in seen)
    np.testing.assert_array_equal(np.asarray(seen[0]["lengths"]), mask_BxS.sum(-1))
    valid = mask_BxS.astype(bool)
    # two fp32 attention kernels round differently (~1e-6); a lost key mask is > 1e-2
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
    with pytest.raises(ValueError, match="attention must be 'xla', 'cudnn' or 'pallas'"):
        EncoderConfig(**CONFIG, attention="flash")


def _config_with(tmp_path, *overrides: str):
    from jaxpet.config import load_config

    path = tmp_path / "exp.yaml"
    path.write_text("output_dir: out\ntask:\n  name: agnews\n  data_dir: d\nmodel:\n  name: m\n"
                    "mesh:\n  data: 1\n")
    return load_config(path, list(overrides))


def test_config_asks_for_attention_dropout_0_with_cudnn(tmp_path):
    from jaxpet.config import ConfigError

    with pytest.raises(ConfigError, match="model.attention_dropout: 0"):
        _config_with(tmp_path, "model.attention=cudnn")
    with pytest.raises(ConfigError, match="'model.attention'"):
        _config_with(tmp_path, "model.attention=flash")
    config = _config_with(tmp_path, "model.attention=cudnn", "model.attention_dropout=0")
    assert (config.model.attention, config.model.attention_dropout) == ("cudnn", 0.0)


def test_loaded_model_takes_the_attention_settings(tmp_path, tmp_path_factory):
    from tiny_models import build_tiny_checkpoint, shared_root

    from jaxpet.pipelines.setup import load_model

    folder = build_tiny_checkpoint("bert", "mlm", shared_root(tmp_path_factory))
    config = _config_with(tmp_path, f"model.name={folder}", "model.attention=cudnn",
                          "model.attention_dropout=0", "model.remat=true",
                          "model.remat_policy=dots")
    lm = load_model(config, "mlm")
    assert lm.config.attention == "cudnn" and lm.config.attention_probs_dropout_prob == 0.0
    assert lm.config.remat and lm.config.remat_policy == "dots"  # both settings kept
    assert lm.module.config is lm.config
    default = load_model(_config_with(tmp_path, f"model.name={folder}"), "mlm")
    assert default.config.attention == "xla"
    assert default.config.attention_probs_dropout_prob == 0.1  # the checkpoint's own value
