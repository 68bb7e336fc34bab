"""MLM and sequence-classification models on the shared encoder, laid out as each HF family."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpet.models.config import EncoderConfig
from jaxpet.models.encoder import ACTIVATIONS, Dtype, Encoder, activation, dense, layer_norm


def gather_positions(h_BxSxD: jax.Array, positions_BxP: jax.Array) -> jax.Array:
    """Rows of h at the given positions; out-of-range positions are clamped into [0, S)."""
    positions_BxP = jnp.clip(positions_BxP, 0, h_BxSxD.shape[1] - 1)
    return jnp.take_along_axis(h_BxSxD, positions_BxP[:, :, None], axis=1)


class EncoderForMaskedLM(nn.Module):
    """Encoder + MLM head (dense, act, LayerNorm, decoder tied to the word embeddings, bias)."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        e_axis = None if cfg.is_albert else "embed"
        self.encoder = Encoder(cfg, self.dtype)
        # ALBERT maps H -> E here so the decoder can reuse the E-wide embeddings.
        self.transform = dense(cfg, cfg.embedding_size, self.dtype, "transform", ("embed", None))
        self.transform_norm = layer_norm(cfg, self.dtype, "transform_norm", e_axis)
        self.bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
            (cfg.vocab_size,),
            jnp.float32,
        )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Logits [B, S, V] in float32, or [B, P, V] at `positions` [B, P] only.

        The arguments are named as in transformers (input_ids [B, S], attention_mask [B, S],
        token_type_ids [B, S]) so that keyword calls written for its models work here.
        """
        h_BxSxD = self.encoder(input_ids, attention_mask, token_type_ids, deterministic)
        # Gathering before the head skips the D x V projection at every unused position.
        h_BxPxD = h_BxSxD if positions is None else gather_positions(h_BxSxD, positions)
        # RoBERTa's LM head always uses exact GELU, whatever hidden_act says.
        act_name = "gelu" if self.config.cumsum_positions else self.config.hidden_act
        x_BxPxE = self.transform_norm(activation(act_name)(self.transform(h_BxPxD)))
        logits_BxPxV = self.encoder.attend(x_BxPxE).astype(jnp.float32)
        return logits_BxPxV + self.bias


class EncoderForSequenceClassification(nn.Module):
    """Encoder + the family's classification head on the first token -> [B, num_labels]."""

    config: EncoderConfig
    num_labels: int = 2
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        self.encoder = Encoder(cfg, self.dtype)
        # BERT/ALBERT: pooler (dense + tanh) then classifier; RoBERTa/XLM-R: dense, tanh, out_proj.
        self.pre_classifier = dense(cfg, cfg.hidden_size, self.dtype, "pooler", ("embed", None))
        self.classifier = dense(cfg, self.num_labels, self.dtype, "classifier", (None, None))
        self.dropout = nn.Dropout(cfg.classifier_dropout_rate)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Logits [B, num_labels] in float32; `positions` is ignored (the head reads token 0)."""
        del positions
        h_BxSxD = self.encoder(input_ids, attention_mask, token_type_ids, deterministic)
        first_BxD = h_BxSxD[:, 0]
        if self.config.cumsum_positions:
            first_BxD = self.dropout(first_BxD, deterministic=deterministic)
        pooled_BxD = jnp.tanh(self.pre_classifier(first_BxD))
        pooled_BxD = self.dropout(pooled_BxD, deterministic=deterministic)
        return self.classifier(pooled_BxD).astype(jnp.float32)


__all__ = ["ACTIVATIONS", "EncoderForMaskedLM", "EncoderForSequenceClassification"]
