"""Flax Linen T5 (v1.0, v1.1, mT5): encoder-decoder with relative position bias and a KV cache."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpet.models.t5_config import T5Config

Dtype = Any
Cache = dict[str, Any]

_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
}


def _normal(std: float, axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def relative_position_bucket(
    relative_position: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucketing of (key - query) offsets: exact near zero, logarithmic up to max_distance."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # float32 arithmetic in the same order as the reference so bucket edges agree exactly.
    ratio = jnp.maximum(distance, 1).astype(jnp.float32) / jnp.float32(max_exact)
    scaled = jnp.log(ratio) / jnp.float32(math.log(max_distance / max_exact))
    large = max_exact + (scaled * jnp.float32(num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, distance, large)


class RMSNorm(nn.Module):
    """T5 layer norm: scale by 1/RMS in float32, no mean subtraction, no bias."""

    epsilon: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxSxD: jax.Array) -> jax.Array:
        weight_D = self.param(
            "weight",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
            (x_BxSxD.shape[-1],),
            jnp.float32,
        )
        x32 = x_BxSxD.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        return (weight_D * (x32 * jax.lax.rsqrt(variance + self.epsilon))).astype(self.dtype)


class Attention(nn.Module):
    """Multi-head attention without biases or 1/sqrt(d) scaling (T5 folds it into the init)."""

    config: T5Config
    dtype: Dtype = jnp.float32
    deterministic: bool = True

    def setup(self) -> None:
        cfg = self.config
        hk = (cfg.num_heads, cfg.d_kv)
        f = cfg.initializer_factor

        def proj(name: str, std: float) -> nn.DenseGeneral:
            return nn.DenseGeneral(
                hk, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=_normal(std, ("embed", "heads", "kv")), name=name,
            )

        self.q = proj("q", f * (cfg.d_model * cfg.d_kv) ** -0.5)
        self.k = proj("k", f * cfg.d_model**-0.5)
        self.v = proj("v", f * cfg.d_model**-0.5)
        self.o = nn.DenseGeneral(
            cfg.d_model, axis=(-2, -1), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=_normal(f * cfg.inner_dim**-0.5, ("heads", "kv", "embed")), name="o",
        )
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def project_kv(self, x_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.k(x_BxSxD), self.v(x_BxSxD)

    def __call__(
        self,
        x_BxQxD: jax.Array,
        k_BxKxHxE: jax.Array,
        v_BxKxHxE: jax.Array,
        bias_1xHxQxK: jax.Array | None,
        keep_Bx1xQxK: jax.Array,
    ) -> jax.Array:
        q_BxQxHxE = self.q(x_BxQxD)
        scores_BxHxQxK = jnp.einsum("bqhe,bkhe->bhqk", q_BxQxHxE, k_BxKxHxE).astype(jnp.float32)
        if bias_1xHxQxK is not None:
            scores_BxHxQxK = scores_BxHxQxK + bias_1xHxQxK
        scores_BxHxQxK = jnp.where(keep_Bx1xQxK, scores_BxHxQxK, jnp.finfo(jnp.float32).min)
        probs_BxHxQxK = jax.nn.softmax(scores_BxHxQxK, axis=-1)
        probs_BxHxQxK = self.dropout(probs_BxHxQxK, deterministic=self.deterministic)
        out_BxQxHxE = jnp.einsum("bhqk,bkhe->bqhe", probs_BxHxQxK.astype(self.dtype), v_BxKxHxE)
        return self.o(out_BxQxHxE)


class FeedForward(nn.Module):
    """ReLU MLP (v1.0) or gated-GELU MLP (v1.1, mT5)."""

    config: T5Config
    dtype: Dtype = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxSxD: jax.Array) -> jax.Array:
        cfg = self.config
        f = cfg.initializer_factor

        def dense(name: str, features: int, std: float, axes: tuple[str, str]) -> nn.Dense:
            return nn.Dense(features, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                            kernel_init=_normal(std, axes), name=name)

        act = _ACTIVATIONS[cfg.dense_act_fn]
        if cfg.is_gated_act:
            gate_BxSxF = act(
                dense("wi_0", cfg.d_ff, f * cfg.d_model**-0.5, ("embed", "mlp"))(x_BxSxD))
            h_BxSxF = gate_BxSxF * dense("wi_1", cfg.d_ff, f * cfg.d_model**-0.5,
                                         ("embed", "mlp"))(x_BxSxD)
        else:
            h_BxSxF = act(dense("wi", cfg.d_ff, f * cfg.d_model**-0.5, ("embed", "mlp"))(x_BxSxD))
        h_BxSxF = nn.Dropout(cfg.dropout_rate)(h_BxSxF, deterministic=self.deterministic)
        return dense("wo", cfg.d_model, f * cfg.d_ff**-0.5, ("mlp", "embed"))(h_BxSxF)


class Block(nn.Module):
    """One pre-norm T5 block; scanned over layers.  `mode` picks what the call computes:
    "full" (whole sequence), "step" (a few new decoder tokens against the KV cache) or
    "cross_kv" (only this layer's cross-attention keys/values of the encoder output)."""

    config: T5Config
    is_decoder: bool
    mode: str = "full"
    dtype: Dtype = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        h_BxQxD: jax.Array,
        layer_cache: Cache | None,
        self_bias_1xHxQxK: jax.Array,
        self_keep_Bx1xQxK: jax.Array,
        enc_BxSxD: jax.Array | None,
        enc_keep_Bx1x1xS: jax.Array | None,
        cache_index: jax.Array | None,
    ) -> tuple[jax.Array, Cache | None]:
        cfg = self.config
        args = dict(config=cfg, dtype=self.dtype, deterministic=self.deterministic)
        drop = nn.Dropout(cfg.dropout_rate)
        if self.mode == "cross_kv":
            k, v = Attention(**args, name="cross_attention").project_kv(enc_BxSxD)
            return h_BxQxD, {"cross_k": k, "cross_v": v}

        x_BxQxD = RMSNorm(cfg.layer_norm_epsilon, self.dtype, name="self_attention_norm")(h_BxQxD)
        self_attn = Attention(**args, name="self_attention")
        k_new, v_new = self_attn.project_kv(x_BxQxD)
        new_cache = None
        if self.mode == "step":
            start = (0, cache_index, 0, 0)
            k_all = jax.lax.dynamic_update_slice(layer_cache["self_k"], k_new.astype(
                layer_cache["self_k"].dtype), start)
            v_all = jax.lax.dynamic_update_slice(layer_cache["self_v"], v_new.astype(
                layer_cache["self_v"].dtype), start)
            new_cache = dict(layer_cache, self_k=k_all, self_v=v_all)
        else:
            k_all, v_all = k_new, v_new
        attn_BxQxD = self_attn(x_BxQxD, k_all, v_all, self_bias_1xHxQxK, self_keep_Bx1xQxK)
        h_BxQxD = h_BxQxD + drop(attn_BxQxD, deterministic=self.deterministic)

        if self.is_decoder:
            x_BxQxD = RMSNorm(cfg.layer_norm_epsilon, self.dtype, name="cross_attention_norm")(
                h_BxQxD)
            cross = Attention(**args, name="cross_attention")
            if self.mode == "step":
                k_enc, v_enc = layer_cache["cross_k"], layer_cache["cross_v"]
            else:
                k_enc, v_enc = cross.project_kv(enc_BxSxD)
            attn_BxQxD = cross(x_BxQxD, k_enc, v_enc, None, enc_keep_Bx1x1xS)
            h_BxQxD = h_BxQxD + drop(attn_BxQxD, deterministic=self.deterministic)

        x_BxQxD = RMSNorm(cfg.layer_norm_epsilon, self.dtype, name="mlp_norm")(h_BxQxD)
        ff_BxQxD = FeedForward(**args, name="mlp")(x_BxQxD)
        h_BxQxD = h_BxQxD + drop(ff_BxQxD, deterministic=self.deterministic)
        return h_BxQxD, new_cache


class Stack(nn.Module):
    """Encoder or decoder: shared relative position bias (computed once) and scanned blocks."""

    config: T5Config
    is_decoder: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        h_BxQxD: jax.Array,
        keep_BxQ: jax.Array | None,
        enc_BxSxD: jax.Array | None = None,
        enc_keep_BxS: jax.Array | None = None,
        layers_cache: Cache | None = None,
        cache_index: jax.Array | None = None,
        mode: str = "full",
        deterministic: bool = True,
    ) -> tuple[jax.Array, Cache | None]:
        cfg = self.config
        num_layers = cfg.num_decoder_layers if self.is_decoder else cfg.num_layers
        block_cls = nn.remat(Block, prevent_cse=False) if cfg.remat else Block
        scanned = nn.scan(
            block_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        blocks = scanned(cfg, self.is_decoder, mode, self.dtype, deterministic, name="block")
        enc_keep = None if enc_keep_BxS is None else enc_keep_BxS[:, None, None, :].astype(bool)
        if mode == "cross_kv":
            _, kv = blocks(h_BxQxD, None, None, None, enc_BxSxD, enc_keep, None)
            return h_BxQxD, kv

        q_len = h_BxQxD.shape[1]
        if mode == "step":
            k_len = layers_cache["self_k"].shape[2]
            q_pos_Q = cache_index + jnp.arange(q_len)
        else:
            k_len = q_len
            q_pos_Q = jnp.arange(q_len)
        k_pos_K = jnp.arange(k_len)
        buckets_QxK = relative_position_bucket(
            k_pos_K[None, :] - q_pos_Q[:, None],
            bidirectional=not self.is_decoder,
            num_buckets=cfg.relative_attention_num_buckets,
            max_distance=cfg.relative_attention_max_distance,
        )
        rel = nn.Embed(
            cfg.relative_attention_num_buckets, cfg.num_heads, dtype=jnp.float32,
            param_dtype=jnp.float32,
            embedding_init=_normal(cfg.initializer_factor * cfg.d_model**-0.5, (None, "heads")),
            name="relative_attention_bias",
        )
        bias_1xHxQxK = jnp.transpose(rel(buckets_QxK), (2, 0, 1))[None]
        keep_1x1xQxK = jnp.ones((1, 1, q_len, k_len), bool)
        if self.is_decoder:
            keep_1x1xQxK = keep_1x1xQxK & (k_pos_K[None, :] <= q_pos_Q[:, None])[None, None]
        keep_Bx1xQxK = keep_1x1xQxK
        if keep_BxQ is not None:  # key padding (in step mode the cache's own causality suffices)
            keep_Bx1xQxK = keep_Bx1xQxK & keep_BxQ[:, None, None, :].astype(bool)

        h_BxQxD = nn.Dropout(cfg.dropout_rate)(h_BxQxD, deterministic=deterministic)
        h_BxQxD, new_cache = blocks(
            h_BxQxD, layers_cache, bias_1xHxQxK, keep_Bx1xQxK, enc_BxSxD, enc_keep, cache_index
        )
        h_BxQxD = RMSNorm(cfg.layer_norm_epsilon, self.dtype, name="final_layer_norm")(h_BxQxD)
        h_BxQxD = nn.Dropout(cfg.dropout_rate)(h_BxQxD, deterministic=deterministic)
        return h_BxQxD, new_cache


class T5(nn.Module):
    """T5ForConditionalGeneration in Flax: `apply(params, input_ids, attention_mask,
    decoder_input_ids=..., decoder_attention_mask=...)` -> logits [B, T, V] (float32).

    Decoding entry points (use with `method=`): `encode`, `decode`, `init_cache`, `decode_step`.
    """

    config: T5Config
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        self.shared = nn.Embed(
            cfg.vocab_size, cfg.d_model, dtype=self.dtype, param_dtype=jnp.float32,
            embedding_init=_normal(cfg.initializer_factor, ("vocab", "embed")), name="shared",
        )
        self.encoder = Stack(cfg, is_decoder=False, dtype=self.dtype, name="encoder")
        self.decoder = Stack(cfg, is_decoder=True, dtype=self.dtype, name="decoder")
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=_normal(cfg.initializer_factor, ("embed", "vocab")), name="lm_head",
            )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        decoder_input_ids: jax.Array | None = None,
        decoder_attention_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        if decoder_input_ids is None:
            raise ValueError("T5 needs decoder_input_ids (the shifted-right targets)")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        enc_BxSxD = self.encode(input_ids, attention_mask, deterministic)
        return self.decode(decoder_input_ids, enc_BxSxD, attention_mask, decoder_attention_mask,
                           deterministic)

    def encode(
        self, input_ids_BxS: jax.Array, attention_mask_BxS: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        h_BxSxD = self.shared(input_ids_BxS)
        out_BxSxD, _ = self.encoder(h_BxSxD, attention_mask_BxS, deterministic=deterministic)
        return out_BxSxD

    def logits(self, h_BxTxD: jax.Array) -> jax.Array:
        if self.config.scale_decoder_outputs:
            h_BxTxD = h_BxTxD * (self.config.d_model**-0.5)
        if self.config.tie_word_embeddings:
            logits_BxTxV = self.shared.attend(h_BxTxD)
        else:
            logits_BxTxV = self.lm_head(h_BxTxD)
        return logits_BxTxV.astype(jnp.float32)

    def decode(
        self,
        decoder_input_ids_BxT: jax.Array,
        encoded_BxSxD: jax.Array,
        attention_mask_BxS: jax.Array,
        decoder_attention_mask_BxT: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        h_BxTxD = self.shared(decoder_input_ids_BxT)
        out_BxTxD, _ = self.decoder(
            h_BxTxD, decoder_attention_mask_BxT, encoded_BxSxD, attention_mask_BxS,
            deterministic=deterministic,
        )
        return self.logits(out_BxTxD)

    def init_cache(
        self, encoded_BxSxD: jax.Array, attention_mask_BxS: jax.Array, max_length: int
    ) -> Cache:
        """Empty self-attention cache of `max_length` steps plus the encoder's cross K/V."""
        cfg = self.config
        _, cross = self.decoder(encoded_BxSxD, None, encoded_BxSxD, attention_mask_BxS,
                                mode="cross_kv")
        batch = encoded_BxSxD.shape[0]
        shape = (cfg.num_decoder_layers, batch, max_length, cfg.num_heads, cfg.d_kv)
        zeros = jnp.zeros(shape, self.dtype)
        layers = dict(cross, self_k=zeros, self_v=zeros)
        return {"layers": layers, "index": jnp.zeros((), jnp.int32)}

    def decode_step(
        self, decoder_input_ids_BxT: jax.Array, cache: Cache, attention_mask_BxS: jax.Array
    ) -> tuple[jax.Array, Cache]:
        """Logits [B, T, V] for T new tokens at positions cache.index..; returns the new cache."""
        h_BxTxD = self.shared(decoder_input_ids_BxT)
        out_BxTxD, layers = self.decoder(
            h_BxTxD, None, None, attention_mask_BxS, layers_cache=cache["layers"],
            cache_index=cache["index"], mode="step",
        )
        new_cache = {"layers": layers, "index": cache["index"] + decoder_input_ids_BxT.shape[1]}
        return self.logits(out_BxTxD), new_cache


def init_t5_params(config: T5Config, rng: jax.Array, dtype: Dtype = jnp.float32) -> Any:
    """Random parameters (plain arrays, logical-axis boxes removed)."""
    module = T5(config, dtype)
    ids = jnp.zeros((1, 2), jnp.int32)
    init = jax.jit(lambda key: module.init(key, ids, jnp.ones_like(ids), decoder_input_ids=ids))
    return nn.meta.unbox(init(rng)["params"])


def t5_logical_axes(config: T5Config) -> Any:
    """PartitionSpecs of logical axis names for every parameter (for sharding rules)."""
    module = T5(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(
        lambda: module.init(jax.random.key(0), ids, jnp.ones_like(ids), decoder_input_ids=ids)
    )
    return nn.get_partition_spec(abstract)["params"]
