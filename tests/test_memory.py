"""The memory estimate against hand counts, transformers' parameter counts and XLA's own numbers.

Run as a script (`python tests/test_memory.py`) on an accelerator to print measured against
estimated bytes for BERT-base, RoBERTa-large and T5-base training steps (docs/scale.md
quotes them).
"""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest

from jaxpet.engine.backbone_shapes import (
    KNOWN_BACKBONES,
    BackboneShape,
    backbone_from_config,
    count_parameters,
    get_backbone,
    parameter_shapes,
)
from jaxpet.engine.memory import GIB, DoesNotFit, check_fits, estimate_memory
from jaxpet.engine.slices import SLICES, best_fit, fits_table

# The estimate's activation model is calibrated on XLA for GPU (docs/scale.md: measured
# within 0.97-1.04 for encoders without remat). On CPU, XLA fuses less and keeps more
# intermediates: 1.33x the estimated scratch for the model below. The test allows a factor
# of 1.5 either way.
CPU_TEMP_FACTOR = 1.5


def _hf_counts() -> dict[str, tuple[object, int]]:
    """transformers configs of the known backbones and their PyTorch parameter counts."""
    import torch
    import transformers as tf

    configs = {
        "bert-base-uncased": tf.BertConfig(),
        "roberta-large": tf.RobertaConfig(
            vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
            intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1),
        "albert-xxlarge-v2": tf.AlbertConfig(
            vocab_size=30000, embedding_size=128, hidden_size=4096, num_attention_heads=64,
            intermediate_size=16384, num_hidden_layers=12),
        "t5-3b": tf.T5Config(d_model=1024, d_ff=16384, d_kv=128, num_heads=32, num_layers=24),
        "t5-11b": tf.T5Config(d_model=1024, d_ff=65536, d_kv=128, num_heads=128, num_layers=24),
        "t5-v1_1-tiny": tf.T5Config(d_model=64, d_ff=96, d_kv=16, num_heads=4, num_layers=2,
                                    num_decoder_layers=3, vocab_size=300,
                                    feed_forward_proj="gated-gelu"),
    }
    counts = {}
    for name, config in configs.items():
        with torch.device("meta"):  # shapes only: no memory is allocated
            if isinstance(config, tf.T5Config):
                model = tf.T5ForConditionalGeneration(config)
            else:
                model = tf.AutoModelForMaskedLM.from_config(config)
        counts[name] = (config, sum(p.numel() for p in model.parameters()))
    return counts


def test_parameter_counts_match_transformers():
    for name, (config, expected) in _hf_counts().items():
        shape = backbone_from_config(config, name=name)
        assert count_parameters(shape) == expected, name
        if name in KNOWN_BACKBONES:
            assert count_parameters(name) == expected, name
            assert get_backbone(name) == dataclasses.replace(shape, name=name)


TINY = BackboneShape("hand", "encoder", num_layers=2, hidden_size=8, intermediate_size=16,
                     num_heads=2, head_dim=4, vocab_size=10, max_positions=6, type_vocab_size=2)


def test_hand_computed_encoder():
    # Embeddings: word 10x8 + position 6x8 + type 2x8 + LayerNorm 2x8 = 160.
    # Layer: q/k/v/out 4x(8x8+8) + FFN 8x16+16 + 16x8+8 + two LayerNorms 2x2x8 = 600.
    # MLM head: transform 8x8+8, LayerNorm 2x8, output bias 10 = 98 (decoder tied).
    n = 160 + 2 * 600 + 98
    assert count_parameters(TINY) == n
    est = estimate_memory(TINY, batch_size=4, seq_len=5, remat="none", compute_dtype="float32",
                          head_positions=2, dropout=False)
    assert (est.params_bytes, est.gradients_bytes, est.optimizer_bytes) == (4 * n, 4 * n, 8 * n)
    # Saved per layer and example (S=5, fp32), as calibrated on XLA: per sub-block 4 tensors
    # of 5x8 (residual sum, centred, normalised, output); q, k, v, context 4x5x8; three
    # FFN-width tensors 3x5x16; three score-sized tensors 3x(2 heads x 5 x 5).
    per_layer = 2 * 4 * 5 * 8 + 4 * 5 * 8 + 3 * 5 * 16 + 3 * 2 * 5 * 5
    # Outside the layers: embedding sum and its projection (2x5x8); fp32 logits and
    # log-probabilities at the 2 head positions (2x2x10).
    per_example = 4 * (2 * per_layer + 2 * 5 * 8) + 4 * 2 * 2 * 10
    assert est.activations_bytes == 4 * per_example
    assert est.transient_bytes == 0  # fp32 compute on one device: no converted weight copy
    assert est.inputs_bytes == 4 * 5 * 4 * 3
    assert est.total_bytes == sum(v for k, v in est.breakdown().items() if k != "total")


def test_dtypes_remat_and_mesh_scale_as_documented():
    base = estimate_memory("roberta-large", batch_size=64, seq_len=256)
    n = count_parameters("roberta-large")
    assert base.params_bytes == 4 * n and base.optimizer_bytes == 8 * n
    bf16 = base.replace(param_dtype="bfloat16")
    # 16-bit parameters: fp32 master copy joins the two fp32 moments in the optimizer state.
    assert bf16.params_bytes == 2 * n and bf16.optimizer_bytes == 12 * n
    assert bf16.gradients_bytes == 2 * n

    none, dots, full = (base.replace(remat=r) for r in ("none", "dots", "full"))
    fused = base.replace(fused_attention=True)
    heads, seq = 16, 256  # dropout: bf16 scores + fp32 probs + mask + fp32 dropped + bf16 cast
    assert base.activations_bytes - fused.activations_bytes == 64 * 24 * heads * seq**2 * 13
    assert none.activations_bytes > dots.activations_bytes > full.activations_bytes
    assert none.transient_bytes < full.transient_bytes  # one layer is rebuilt in the backward
    assert full.total_bytes < none.total_bytes

    # Doubling the data axis halves the per-device batch; the state is replicated over it.
    wider = base.replace(data=2)
    assert wider.state_bytes == base.state_bytes
    assert abs(wider.activations_bytes - base.activations_bytes / 2) <= 1

    # FSDP splits every kernel; only vectors (biases, norms) stay whole.
    fsdp = base.replace(fsdp=8)
    vectors = sum(math.prod(s) for s in parameter_shapes(get_backbone("roberta-large"))
                  if len(s) == 1)
    # one byte of float rounding in the division by 8; a kernel left whole adds megabytes
    assert fsdp.params_bytes == pytest.approx(4 * ((n - vectors) / 8 + vectors), abs=1)
    assert fsdp.activations_bytes == wider.replace(data=8).activations_bytes

    tensor = base.replace(tensor=4)
    assert tensor.activations_bytes < base.activations_bytes
    assert tensor.params_bytes < base.params_bytes / 3

    with pytest.raises(ValueError, match="mesh.data \\* mesh.fsdp"):
        base.replace(batch_size=63, data=2)
    with pytest.raises(ValueError, match="remat='some'"):
        base.replace(remat="some")
    with pytest.raises(KeyError, match="unknown backbone 'gpt-2'"):
        get_backbone("gpt-2")


def test_t5_estimate_counts_decoder_and_cross_attention():
    est = estimate_memory("t5-3b", batch_size=8, seq_len=512, target_len=128, fsdp=8)
    longer = est.replace(target_len=256)
    assert longer.activations_bytes > est.activations_bytes
    assert est.state_bytes == pytest.approx(
        12 * count_parameters("t5-3b") / 8, rel=0.01)  # vectors are < 1% of T5's parameters


def test_check_fits_names_what_to_change():
    est = estimate_memory("roberta-large", batch_size=64, seq_len=256, data=4)
    assert check_fits(est, 80 * GIB) is est
    with pytest.raises(DoesNotFit, match="GiB per device") as error:
        check_fits(est, 16 * GIB)
    message = str(error.value)
    assert "roberta-large" in message and "GiB per device" in message
    assert "mesh.fsdp=" in message and "remat=" in message
    assert "train_batch_size" in message
    # Every suggested setup must fit by the estimate's own account.
    assert "nothing tried" not in message

    t5 = estimate_memory("t5-11b", batch_size=4, seq_len=512, data=4)
    with pytest.raises(DoesNotFit, match="nothing tried on 4 devices fits"):
        check_fits(t5, SLICES["v4-8"].device_memory_bytes)


def test_fits_table_lists_every_backbone_and_slice():
    table = fits_table(slices=["v4-8", "v5p-8", "H100-80GB"])
    lines = table.splitlines()
    assert lines[0] == "| backbone | params | v4-8 | v5p-8 | H100-80GB |"
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[2:] for line in lines[2:]}
    assert set(rows) == {"bert-base-uncased", "roberta-large", "albert-xxlarge-v2", "t5-3b",
                         "t5-11b"}
    assert all(cell.startswith("yes") for cell in rows["bert-base-uncased"])
    assert rows["t5-11b"][2].strip(" |") == "no"  # 11B params x 16 bytes > one 80 GB GPU
    fit = best_fit("t5-3b", "v4-8")
    assert fit is not None and fit.total_bytes <= 0.9 * SLICES["v4-8"].device_memory_bytes
    assert f"fsdp={fit.fsdp}" in rows["t5-3b"][0]


def _train_step_memory(config, batch: int, seq: int, positions: int, dtype="float32",
                       dropout: bool = False):
    """XLA's memory analysis of a compiled AdamW train step of a jaxpet MLM encoder."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn

    from jaxpet.models.pretrained import abstract_variables, build_module

    module = build_module(config, "mlm", dtype=getattr(jnp, dtype))
    params = nn.unbox(abstract_variables(module)["params"])
    tx = optax.adamw(1e-4)

    def step(params, opt_state, ids_BxS, mask_BxS, positions_BxP, targets_BxP):
        def loss(p):
            logits_BxPxV = module.apply({"params": p}, ids_BxS, mask_BxS,
                                        positions=positions_BxP, deterministic=not dropout,
                                        rngs={"dropout": jax.random.key(0)})
            return optax.softmax_cross_entropy_with_integer_labels(logits_BxPxV,
                                                                   targets_BxP).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    pos = jax.ShapeDtypeStruct((batch, positions), jnp.int32)
    opt_state = jax.eval_shape(tx.init, params)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, ids, ids, pos,
                                                          pos).compile()
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    return compiled.memory_analysis(), n


def _t5_train_step_memory(config, batch: int, seq: int, target: int, dtype: str,
                          dropout: bool):
    """XLA's memory analysis of a compiled AdamW train step of jaxpet's T5."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn

    from jaxpet.models.t5 import T5

    module = T5(config, getattr(jnp, dtype))
    ids = jnp.zeros((1, 2), jnp.int32)
    params = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), ids, ids,
                                                         decoder_input_ids=ids))["params"])
    tx = optax.adamw(1e-4)

    def step(params, opt_state, ids_BxS, mask_BxS, targets_BxT):
        def loss(p):
            logits_BxTxV = module.apply({"params": p}, ids_BxS, mask_BxS,
                                        decoder_input_ids=targets_BxT,
                                        deterministic=not dropout,
                                        rngs={"dropout": jax.random.key(0)})
            return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV,
                                                                   targets_BxT).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    inputs = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    targets = jax.ShapeDtypeStruct((batch, target), jnp.int32)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
        params, jax.eval_shape(tx.init, params), inputs, inputs, targets).compile()
    return compiled.memory_analysis(), params


def test_jaxpet_t5_parameter_count_matches():
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from jaxpet.models.t5 import T5
    from jaxpet.models.t5_config import T5Config

    ids = jnp.zeros((1, 2), jnp.int32)
    for gated in ("relu", "gated-gelu"):
        config = T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=3,
                          num_heads=4, vocab_size=300, feed_forward_proj=gated,
                          tie_word_embeddings=gated == "relu")
        params = jax.eval_shape(lambda c=config: nn.unbox(T5(c).init(
            jax.random.key(0), ids, ids, decoder_input_ids=ids))["params"])
        n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
        assert count_parameters(backbone_from_config(config)) == n, gated


def test_estimate_against_compiled_train_step():
    from jaxpet.models.config import EncoderConfig

    config = EncoderConfig(model_type="bert", vocab_size=500, hidden_size=64, embedding_size=64,
                           num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                           max_position_embeddings=64)
    batch, seq, positions = 16, 64, 10
    stats, n = _train_step_memory(config, batch, seq, positions)
    shape = backbone_from_config(config)
    est = estimate_memory(shape, batch_size=batch, seq_len=seq, compute_dtype="float32",
                          head_positions=positions, dropout=False)
    assert est.num_parameters == n
    # Arguments are the parameters, AdamW's moments (+ its int32 step count) and the batch.
    batch_bytes = 4 * batch * (2 * seq + 2 * positions)
    # XLA's per-argument padding (< 64 bytes); a missing moment or batch array is kilobytes
    assert stats.argument_size_in_bytes == pytest.approx(est.state_bytes + 4 + batch_bytes,
                                                         abs=64)
    scratch = est.activations_bytes + est.gradients_bytes + est.transient_bytes
    assert scratch / CPU_TEMP_FACTOR <= stats.temp_size_in_bytes <= CPU_TEMP_FACTOR * scratch


def test_per_device_state_matches_jaxpet_sharding():
    import jax
    from flax import linen as nn

    from jaxpet.engine import sharding
    from jaxpet.models.config import EncoderConfig
    from jaxpet.models.pretrained import abstract_variables, build_module

    config = EncoderConfig(model_type="bert", vocab_size=2048, hidden_size=256, embedding_size=256,
                           num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                           max_position_embeddings=64)
    boxed = abstract_variables(build_module(config, "mlm"))["params"]
    shape = backbone_from_config(config)
    for fsdp, tensor in ((8, 1), (4, 2)):
        mesh = sharding.make_mesh(data=1, fsdp=fsdp, tensor=tensor)
        shardings = sharding.param_shardings(boxed, mesh)
        local = jax.tree.map(lambda x, s: math.prod(s.shard_shape(x.shape)),
                             nn.unbox(boxed), shardings)
        measured = 4 * sum(jax.tree.leaves(local))
        est = estimate_memory(shape, batch_size=8, seq_len=32, fsdp=fsdp, tensor=tensor)
        # jaxpet also splits LayerNorm vectors over fsdp; the estimate keeps vectors whole.
        assert est.params_bytes == pytest.approx(measured, rel=0.03), (fsdp, tensor)


def main() -> None:
    """Print measured (XLA memory analysis) against estimated bytes on the default device."""
    import jax

    from jaxpet.models.config import EncoderConfig

    sizes = {"bert-base-uncased": dict(hidden_size=768, num_hidden_layers=12,
                                       num_attention_heads=12, intermediate_size=3072),
             "roberta-large": dict(hidden_size=1024, num_hidden_layers=24,
                                   num_attention_heads=16, intermediate_size=4096)}
    print(f"device: {jax.devices()[0].device_kind}")
    print("| backbone | batch | seq | dtype | remat | dropout | measured GiB | estimated GiB | "
          "measured / estimated | XLA temp GiB | estimated scratch GiB |")
    print("|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|")
    setups = (("float32", False, False), ("bfloat16", False, False),
              ("bfloat16", False, True), ("bfloat16", True, True))
    for name, kw in sizes.items():
        for dtype, remat, dropout in setups:
            batch, seq = 32, 256
            config = EncoderConfig(model_type="bert", vocab_size=30522,
                                   embedding_size=kw["hidden_size"], remat=remat, **kw)
            stats, _ = _train_step_memory(config, batch, seq, math.ceil(0.15 * seq), dtype,
                                          dropout)
            measured = (stats.argument_size_in_bytes + stats.temp_size_in_bytes
                        + stats.output_size_in_bytes - stats.alias_size_in_bytes)
            shape = BackboneShape(name, "encoder", kw["num_hidden_layers"], kw["hidden_size"],
                                  kw["intermediate_size"], kw["num_attention_heads"],
                                  kw["hidden_size"] // kw["num_attention_heads"], 30522)
            est = estimate_memory(shape, batch_size=batch, seq_len=seq, compute_dtype=dtype,
                                  remat="full" if remat else "none", dropout=dropout)
            scratch = est.activations_bytes + est.gradients_bytes + est.transient_bytes
            print(f"| {name} | {batch} | {seq} | {dtype} | {'full' if remat else 'none'} | "
                  f"{'yes' if dropout else 'no'} | {measured / GIB:.2f} | "
                  f"{est.total_bytes / GIB:.2f} | {measured / est.total_bytes:.2f} | "
                  f"{stats.temp_size_in_bytes / GIB:.2f} | {scratch / GIB:.2f} |", flush=True)
    from jaxpet.models.t5_config import T5Config

    t5_base = T5Config(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12,
                       num_heads=12)
    for dtype, remat, dropout in setups:
        batch, seq, target = 16, 512, 128
        config = dataclasses.replace(t5_base, remat=remat)
        stats, _ = _t5_train_step_memory(config, batch, seq, target, dtype, dropout)
        measured = (stats.argument_size_in_bytes + stats.temp_size_in_bytes
                    + stats.output_size_in_bytes - stats.alias_size_in_bytes)
        est = estimate_memory(backbone_from_config(config, "t5-base"), batch_size=batch,
                              seq_len=seq, target_len=target, compute_dtype=dtype,
                              remat="full" if remat else "none", dropout=dropout)
        scratch = est.activations_bytes + est.gradients_bytes + est.transient_bytes
        print(f"| t5-base (in {seq}, out {target}) | {batch} | {seq} | {dtype} | "
              f"{'full' if remat else 'none'} | {'yes' if dropout else 'no'} | "
              f"{measured / GIB:.2f} | {est.total_bytes / GIB:.2f} | "
              f"{measured / est.total_bytes:.2f} | {stats.temp_size_in_bytes / GIB:.2f} | "
              f"{scratch / GIB:.2f} |", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
