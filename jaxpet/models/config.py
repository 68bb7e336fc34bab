"""EncoderConfig: one config for the BERT, RoBERTa, XLM-R and ALBERT encoders, to/from HF."""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "albert")

# HF families whose positions are numbered from pad_token_id + 1 over the non-pad tokens.
_CUMSUM_POSITION_TYPES = ("roberta", "xlm-roberta")

# HF config keys that EncoderConfig maps to its own fields (everything else is kept in hf_extra).
_HF_FIELD_NAMES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "hidden_act",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Sizes and behaviour of one encoder; field names follow the HF configs."""

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    embedding_size: int = 768  # ALBERT factorises embeddings E -> H; equal to H elsewhere
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    num_hidden_groups: int = 1  # ALBERT only
    inner_group_num: int = 1  # ALBERT only
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None  # None: hidden_dropout_prob (ALBERT: 0.1 in HF)
    initializer_range: float = 0.02
    remat: bool = False  # rematerialise each layer in the backward pass (saves activations)
    # what remat keeps from the forward pass: "full" keeps only layer inputs, "dots" also
    # keeps the matmul outputs (more memory, less recomputation)
    remat_policy: str = "full"
    # "xla": attention as XLA ops (any backend); "cudnn": cuDNN's fused flash attention (NVIDIA
    # GPUs; key padding as lengths, so inputs must be right-padded, as jaxpet encodes them; no
    # attention-probability dropout, so attention_probs_dropout_prob must be 0 to train);
    # "pallas": jaxpet's fused flash kernel with hashed attention dropout
    # (jaxpet.models.pallas_attention; Triton on GPUs, interpreted on CPUs, not for TPUs)
    attention: str = "xla"
    # Everything else from the HF config (id2label, architectures, ...) for a faithful round trip.
    hf_extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attention not in ("xla", "cudnn", "pallas"):
            raise ValueError(
                f"attention must be 'xla', 'cudnn' or 'pallas', got {self.attention!r}"
            )
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; jaxpet encoders support "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (and T5 via head='seq2seq')"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.model_type != "albert" and self.embedding_size != self.hidden_size:
            raise ValueError(
                f"embedding_size ({self.embedding_size}) differs from hidden_size "
                f"({self.hidden_size}); only ALBERT factorises its embeddings"
            )
        if not 1 <= self.num_hidden_groups <= self.num_hidden_layers:
            raise ValueError(
                f"num_hidden_groups must be in [1, num_hidden_layers={self.num_hidden_layers}], "
                f"got {self.num_hidden_groups}"
            )

    @property
    def is_albert(self) -> bool:
        return self.model_type == "albert"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def cumsum_positions(self) -> bool:
        """True when positions count non-pad tokens from pad_token_id + 1 (RoBERTa, XLM-R)."""
        return self.model_type in _CUMSUM_POSITION_TYPES

    @property
    def position_offset(self) -> int:
        return self.pad_token_id + 1 if self.cumsum_positions else 0

    @property
    def base_model_prefix(self) -> str:
        """The HF state-dict prefix of the encoder inside head models."""
        return {"bert": "bert", "albert": "albert"}.get(self.model_type, "roberta")

    @property
    def classifier_dropout_rate(self) -> float:
        if self.classifier_dropout is not None:
            return self.classifier_dropout
        return 0.1 if self.is_albert else self.hidden_dropout_prob

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides: Any) -> EncoderConfig:
        """Builds a config from a transformers PretrainedConfig or a config.json dict."""
        raw = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; jaxpet encoders support "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        pos_type = raw.get("position_embedding_type", "absolute")
        if pos_type not in (None, "absolute"):
            raise ValueError(
                f"position_embedding_type {pos_type!r} is not supported; only 'absolute'"
            )
        kwargs: dict[str, Any] = {"model_type": model_type}
        kwargs.update({k: raw[k] for k in _HF_FIELD_NAMES if raw.get(k) is not None})
        kwargs["embedding_size"] = raw.get("embedding_size") or raw["hidden_size"]
        if model_type == "albert":
            kwargs["num_hidden_groups"] = raw.get("num_hidden_groups", 1)
            kwargs["inner_group_num"] = raw.get("inner_group_num", 1)
            kwargs["classifier_dropout"] = raw.get("classifier_dropout_prob")
        else:
            kwargs["classifier_dropout"] = raw.get("classifier_dropout")
        if not isinstance(kwargs.get("hidden_act", "gelu"), str):
            raise ValueError(f"hidden_act must be a name, got {kwargs['hidden_act']!r}")
        used = set(kwargs) | {
            "model_type", "embedding_size", "num_hidden_groups", "inner_group_num",
            "classifier_dropout", "classifier_dropout_prob", "position_embedding_type",
        }
        kwargs["hf_extra"] = {k: v for k, v in raw.items() if k not in used}
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json content (without architectures, which depend on the head)."""
        out = dict(self.hf_extra)
        for name in _HF_FIELD_NAMES:
            out[name] = getattr(self, name)
        out["model_type"] = self.model_type
        if self.is_albert:
            out["embedding_size"] = self.embedding_size
            out["num_hidden_groups"] = self.num_hidden_groups
            out["inner_group_num"] = self.inner_group_num
            out["classifier_dropout_prob"] = self.classifier_dropout_rate
        else:
            out["classifier_dropout"] = self.classifier_dropout
            out["position_embedding_type"] = "absolute"
        return out

    def to_hf(self) -> Any:
        """A transformers PretrainedConfig of the matching family (needs no torch)."""
        from transformers import AutoConfig  # deferred: ~4 s to load, most callers never ask

        raw = self.to_hf_dict()
        model_type = raw.pop("model_type")
        for key in ("transformers_version", "_name_or_path"):
            raw.pop(key, None)
        return AutoConfig.for_model(model_type, **raw)
