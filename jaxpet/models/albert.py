"""ALBERT's shared layer groups: each group's params are reused by consecutive layers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpet.models.config import EncoderConfig
from jaxpet.models.encoder import Dtype, layer_class


def group_repeats(config: EncoderConfig) -> list[int]:
    """How many consecutive layers use each group, as HF assigns int(i / (L / G))."""
    n_layers, n_groups = config.num_hidden_layers, config.num_hidden_groups
    counts = [0] * n_groups
    for i in range(n_layers):
        counts[int(i / (n_layers / n_groups))] += 1
    return counts


class AlbertLayerGroup(nn.Module):
    """inner_group_num distinct layers applied in sequence (one ALBERT layer group)."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, h_BxSxD: jax.Array, mask_BxS: jax.Array) -> tuple[jax.Array, None]:
        for j in range(self.config.inner_group_num):
            h_BxSxD, _ = layer_class(self.config)(
                self.config, self.dtype, self.deterministic, name=f"layer_{j}"
            )(h_BxSxD, mask_BxS)
        return h_BxSxD, None


class AlbertLayerGroups(nn.Module):
    """All groups in order; a group used r times is a length-r scan with broadcast params."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h_BxSxD: jax.Array, mask_BxS: jax.Array, deterministic: bool) -> jax.Array:
        for g, repeats in enumerate(group_repeats(self.config)):
            shared = nn.scan(
                AlbertLayerGroup,
                variable_broadcast="params",
                split_rngs={"params": False, "dropout": True},
                in_axes=(nn.broadcast,),
                length=repeats,
            )
            h_BxSxD, _ = shared(self.config, self.dtype, deterministic, name=f"group_{g}")(
                h_BxSxD, mask_BxS
            )
        return h_BxSxD
