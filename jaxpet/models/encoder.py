"""Transformer encoder (embeddings + post-LN layers) shared by BERT, RoBERTa, XLM-R and ALBERT."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpet.models.config import EncoderConfig
from jaxpet.models.pallas_attention import pallas_attention

Dtype = Any


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_python": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def dense_init(config: EncoderConfig, axes: tuple[str | None, ...]) -> Callable:
    """Normal(initializer_range) kernels as in HF, tagged with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def zeros_init(axes: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def layer_norm(config: EncoderConfig, dtype: Dtype, name: str, axis_name: str | None = "embed"):
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis_name,)),
        bias_init=zeros_init((axis_name,)),
        name=name,
    )


def dense(
    config: EncoderConfig,
    features: int,
    dtype: Dtype,
    name: str,
    axes: tuple[str | None, str | None],
) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=dense_init(config, axes),
        bias_init=zeros_init((axes[1],)),
        name=name,
    )


def position_ids(config: EncoderConfig, input_ids_BxS: jax.Array) -> jax.Array:
    """Absolute position ids: 0..S-1, or RoBERTa's pad-aware numbering from pad_token_id + 1."""
    if config.cumsum_positions:
        not_pad_BxS = (input_ids_BxS != config.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(not_pad_BxS, axis=1) * not_pad_BxS + config.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids_BxS.shape[1]), input_ids_BxS.shape)


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (width embedding_size)."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        # ALBERT's E differs from H; give it no logical name so 'embed' stays unique per array.
        e_axis = None if cfg.is_albert else "embed"
        init = nn.initializers.normal(cfg.initializer_range)

        def embed(num: int, axes: tuple[str | None, ...], name: str) -> nn.Embed:
            return nn.Embed(
                num,
                cfg.embedding_size,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                embedding_init=nn.with_logical_partitioning(init, axes),
                name=name,
            )

        self.word_embeddings = embed(cfg.vocab_size, ("vocab", e_axis), "word_embeddings")
        self.position_embeddings = embed(
            cfg.max_position_embeddings, (None, e_axis), "position_embeddings"
        )
        if cfg.type_vocab_size > 0:
            self.token_type_embeddings = embed(
                cfg.type_vocab_size, (None, e_axis), "token_type_embeddings"
            )
        self.LayerNorm = layer_norm(cfg, self.dtype, "LayerNorm", e_axis)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def __call__(
        self, input_ids_BxS: jax.Array, token_type_ids_BxS: jax.Array | None, deterministic: bool
    ) -> jax.Array:
        cfg = self.config
        if input_ids_BxS.shape[1] + cfg.position_offset > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids_BxS.shape[1]} exceeds the model's "
                f"{cfg.max_position_embeddings - cfg.position_offset} positions"
            )
        h_BxSxE = self.word_embeddings(input_ids_BxS)
        h_BxSxE = h_BxSxE + self.position_embeddings(position_ids(self.config, input_ids_BxS))
        if self.config.type_vocab_size > 0:
            if token_type_ids_BxS is None:
                token_type_ids_BxS = jnp.zeros_like(input_ids_BxS)
            h_BxSxE = h_BxSxE + self.token_type_embeddings(token_type_ids_BxS)
        h_BxSxE = self.LayerNorm(h_BxSxE)
        return self.dropout(h_BxSxE, deterministic=deterministic)

    def attend(self, h_BxPxE: jax.Array) -> jax.Array:
        """Logits against the (tied) word embeddings: h @ W_emb.T."""
        return self.word_embeddings.attend(h_BxPxE)


class SelfAttention(nn.Module):
    """Multi-head self-attention over a key padding mask, HF post-LN layout."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h_BxSxD: jax.Array, mask_BxS: jax.Array) -> jax.Array:
        cfg = self.config
        n_heads, head_dim = cfg.num_attention_heads, cfg.head_dim

        def project(name: str) -> jax.Array:
            return nn.DenseGeneral(
                (n_heads, head_dim),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=dense_init(cfg, ("embed", "heads", "kv")),
                bias_init=zeros_init(("heads", "kv")),
                name=name,
            )(h_BxSxD)

        q_BxSxNxK, k_BxSxNxK, v_BxSxNxK = project("query"), project("key"), project("value")
        keep_Bx1x1xS = mask_BxS.astype(bool)[:, None, None, :]
        rate = cfg.attention_probs_dropout_prob
        if cfg.attention == "cudnn":
            if not self.deterministic and rate > 0.0:
                raise ValueError(
                    "attention='cudnn' has no attention-probability dropout: set "
                    "attention_probs_dropout_prob to 0 to train with it, or use attention='xla'"
                )
            # cuDNN's flash kernel takes key padding as lengths: inputs are right-padded.
            ctx_BxSxNxK = jax.nn.dot_product_attention(
                q_BxSxNxK, k_BxSxNxK, v_BxSxNxK,
                key_value_seq_lengths=mask_BxS.astype(jnp.int32).sum(axis=-1),
                implementation="cudnn",
            )
        elif cfg.attention == "pallas":
            if self.deterministic or rate == 0.0:
                ctx_BxSxNxK = pallas_attention(q_BxSxNxK, k_BxSxNxK, v_BxSxNxK, mask_BxS)
            else:
                # The hash's seed comes from the layer's dropout rng, which the step already
                # folds in, so the mask is the same on resume at the same step.
                seed = jax.random.bits(self.make_rng("dropout"), (), jnp.uint32)
                ctx_BxSxNxK = pallas_attention(q_BxSxNxK, k_BxSxNxK, v_BxSxNxK, mask_BxS,
                                               dropout_rate=rate, seed=seed)
        elif self.deterministic or rate == 0.0:
            ctx_BxSxNxK = jax.nn.dot_product_attention(
                q_BxSxNxK, k_BxSxNxK, v_BxSxNxK, mask=keep_Bx1x1xS
            )
        else:
            # The fused kernel has no attention-probability dropout; spell it out for training.
            scores_BxNxSxS = jnp.einsum("bqnk,bsnk->bnqs", q_BxSxNxK, k_BxSxNxK) / jnp.sqrt(
                jnp.asarray(head_dim, self.dtype)
            )
            scores_BxNxSxS = jnp.where(keep_Bx1x1xS, scores_BxNxSxS, jnp.finfo(self.dtype).min)
            probs_BxNxSxS = jax.nn.softmax(scores_BxNxSxS.astype(jnp.float32), axis=-1)
            probs_BxNxSxS = nn.Dropout(rate)(probs_BxNxSxS, deterministic=False)
            ctx_BxSxNxK = jnp.einsum(
                "bnqs,bsnk->bqnk", probs_BxNxSxS.astype(self.dtype), v_BxSxNxK
            )
        return nn.DenseGeneral(
            cfg.hidden_size,
            axis=(-2, -1),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=dense_init(cfg, ("heads", "kv", "embed")),
            bias_init=zeros_init(("embed",)),
            name="output",
        )(ctx_BxSxNxK)


class Layer(nn.Module):
    """One post-LN block: LN(x + attn(x)), then LN(h + W2 act(W1 h)); scan-compatible."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h_BxSxD: jax.Array, mask_BxS: jax.Array) -> tuple[jax.Array, None]:
        cfg = self.config
        drop = nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)
        attn_BxSxD = SelfAttention(cfg, self.dtype, self.deterministic, name="attention")(
            h_BxSxD, mask_BxS
        )
        h_BxSxD = layer_norm(cfg, self.dtype, "attention_norm")(h_BxSxD + drop(attn_BxSxD))
        ff_BxSxF = dense(cfg, cfg.intermediate_size, self.dtype, "intermediate", ("embed", "mlp"))(
            h_BxSxD
        )
        ff_BxSxD = dense(cfg, cfg.hidden_size, self.dtype, "output", ("mlp", "embed"))(
            activation(cfg.hidden_act)(ff_BxSxF)
        )
        h_BxSxD = layer_norm(cfg, self.dtype, "output_norm")(h_BxSxD + drop(ff_BxSxD))
        return h_BxSxD, None


# "dots" keeps the weight matmuls' outputs (no batch dims), as jaxpet.engine.memory assumes.
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def remat_policy(name: str) -> Callable | None:
    """The jax.checkpoint policy of a remat policy name ("full" or "dots")."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; use one of {', '.join(REMAT_POLICIES)}")
    return REMAT_POLICIES[name]


def layer_class(config: EncoderConfig) -> type[nn.Module]:
    """Layer, rematerialised in the backward pass when config.remat is set."""
    if not config.remat:
        return Layer
    return nn.remat(Layer, prevent_cse=False, policy=remat_policy(config.remat_policy))


class LayerStack(nn.Module):
    """num_hidden_layers independent layers under nn.scan (params get a leading 'layers' axis)."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxSxD: jax.Array, mask_BxS: jax.Array, deterministic: bool) -> jax.Array:
        scanned = nn.scan(
            layer_class(self.config),
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,),
            length=self.config.num_hidden_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        h_BxSxD, _ = scanned(self.config, self.dtype, deterministic, name="layer")(
            h_BxSxD, mask_BxS
        )
        return h_BxSxD


class Encoder(nn.Module):
    """Embeddings and layers -> last hidden states [B, S, H]; `attend` gives tied MLM logits."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        from jaxpet.models.albert import AlbertLayerGroups  # a cycle: albert imports this module

        cfg = self.config
        self.embeddings = Embeddings(cfg, self.dtype)
        if cfg.is_albert:
            self.embedding_hidden_mapping_in = dense(
                cfg, cfg.hidden_size, self.dtype, "embedding_hidden_mapping_in", (None, "embed")
            )
            self.layers = AlbertLayerGroups(cfg, self.dtype)
        else:
            self.layers = LayerStack(cfg, self.dtype)

    def __call__(
        self,
        input_ids_BxS: jax.Array,
        attention_mask_BxS: jax.Array | None = None,
        token_type_ids_BxS: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        if attention_mask_BxS is None:
            attention_mask_BxS = jnp.ones_like(input_ids_BxS)
        h_BxSxD = self.embeddings(input_ids_BxS, token_type_ids_BxS, deterministic)
        if self.config.is_albert:
            h_BxSxD = self.embedding_hidden_mapping_in(h_BxSxD)
        return self.layers(h_BxSxD, attention_mask_BxS, deterministic)

    def attend(self, h_BxPxE: jax.Array) -> jax.Array:
        return self.embeddings.attend(h_BxPxE)
