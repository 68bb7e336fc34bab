"""Applying the config's `model` section to a loaded model: remat and the attention kernel."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxpet.config import Config, ConfigError
from jaxpet.models.config import EncoderConfig
from jaxpet.models.pretrained import LoadedModel
from jaxpet.models.t5_config import T5Config


def with_model_options(config: Config, lm: LoadedModel) -> LoadedModel:
    """`lm` with the model section's remat and attention settings."""
    if config.model.remat:
        lm = with_remat(config, lm)
    return with_attention(config, lm)


def with_remat(config: Config, lm: LoadedModel) -> LoadedModel:
    """`lm` whose layers recompute their activations in the backward pass (model.remat)."""
    if lm.head == "seq2seq":
        # T5 blocks only know full remat (jaxpet.models.t5.Stack)
        if config.model.remat_policy != "full":
            print(f"model.remat_policy={config.model.remat_policy!r} does not apply to T5: "
                  "its blocks are rematerialised in full")
        remat_config = dataclasses.replace(lm.config, remat=True)
    else:
        remat_config = lm.config.replace(remat=True, remat_policy=config.model.remat_policy)
    return with_model_config(lm, remat_config)


def with_attention(config: Config, lm: LoadedModel) -> LoadedModel:
    """`lm` with the model section's attention kernel and attention dropout."""
    settings = config.model
    if settings.attention == "xla" and settings.attention_dropout is None:
        return lm
    if lm.head == "seq2seq":
        raise ConfigError("model.attention and model.attention_dropout apply to encoder models "
                          "(BERT, RoBERTa, XLM-R, ALBERT), not to T5")
    changes: dict[str, Any] = {"attention": settings.attention}
    if settings.attention_dropout is not None:
        changes["attention_probs_dropout_prob"] = float(settings.attention_dropout)
    return with_model_config(lm, lm.config.replace(**changes))


def with_model_config(lm: LoadedModel, model_config: EncoderConfig | T5Config) -> LoadedModel:
    """`lm` whose module (and config) are rebuilt with `model_config`; the params stay."""
    return dataclasses.replace(lm, module=lm.module.clone(config=model_config),
                               config=model_config)
