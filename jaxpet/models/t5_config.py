"""T5Config: sizes and flags of a T5 v1.0 / v1.1 / mT5 model, to and from HF config.json."""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_T5_TYPES = ("t5", "mt5")

_ACT_ALIASES = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}

# HF keys that T5Config maps onto its own fields; the rest is kept in hf_extra for a round trip.
_HF_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "layer_norm_epsilon",
    "dropout_rate",
    "initializer_factor",
    "feed_forward_proj",
    "pad_token_id",
    "eos_token_id",
    "decoder_start_token_id",
    "tie_word_embeddings",
    "scale_decoder_outputs",
    "dense_act_fn",
    "is_gated_act",
    "model_type",
)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """One T5 encoder-decoder; field names follow the HF T5 config.

    `tie_word_embeddings` here means what it says: the LM head reuses `shared` (no `lm_head`
    param). `scale_decoder_outputs` multiplies the decoder output by d_model**-0.5 before the
    head, as original T5 does; transformers 5 writes that flag explicitly and always saves
    `tie_word_embeddings: true`, so the real tying is decided from the weights (see t5_convert).
    """

    model_type: str = "t5"
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dropout_rate: float = 0.1
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    remat: bool = False  # rematerialise each block in the backward pass
    hf_extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_T5_TYPES:
            raise ValueError(
                f"model_type {self.model_type!r} is not T5; known: {SUPPORTED_T5_TYPES}")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or (
            self.dense_act_fn not in _ACT_ALIASES
        ):
            raise ValueError(
                f"feed_forward_proj {self.feed_forward_proj!r} is not supported; use 'relu', "
                "'gated-gelu', 'gelu', 'gated-silu' or the like"
            )

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        # HF maps "gated-gelu" to the tanh approximation ("gelu_new"), plain "gelu" stays exact.
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> T5Config:
        """Build from an HF config dict; `source` names the file in error messages."""
        model_type = hf.get("model_type", "t5")
        if model_type not in SUPPORTED_T5_TYPES:
            raise ValueError(f"{source}: model_type {model_type!r} is not a T5 model")
        tie = hf.get("tie_word_embeddings", True)
        if "scale_decoder_outputs" in hf:
            scale = bool(hf["scale_decoder_outputs"])
        elif model_type == "mt5":
            scale = False  # transformers' mT5 never rescales (real mT5 is untied)
        else:
            scale = tie is not False
        eos = hf.get("eos_token_id", 1)
        if isinstance(eos, list):
            eos = eos[0]
        try:
            num_layers = int(hf["num_layers"])
            pad = hf.get("pad_token_id", 0)
            pad = 0 if pad is None else int(pad)
            start = hf.get("decoder_start_token_id")
            return cls(
                model_type=model_type,
                vocab_size=int(hf["vocab_size"]),
                d_model=int(hf["d_model"]),
                d_kv=int(hf["d_kv"]),
                d_ff=int(hf["d_ff"]),
                num_layers=num_layers,
                num_decoder_layers=int(hf.get("num_decoder_layers") or num_layers),
                num_heads=int(hf["num_heads"]),
                relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
                relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
                layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
                dropout_rate=float(hf.get("dropout_rate", 0.1)),
                initializer_factor=float(hf.get("initializer_factor", 1.0)),
                feed_forward_proj=hf.get("feed_forward_proj", "relu"),
                tie_word_embeddings=tie is not False,
                scale_decoder_outputs=scale,
                pad_token_id=pad,
                eos_token_id=1 if eos is None else int(eos),
                decoder_start_token_id=pad if start is None else int(start),
                hf_extra={k: v for k, v in hf.items() if k not in _HF_FIELDS},
            )
        except KeyError as err:
            raise ValueError(f"{source}: missing T5 config key {err.args[0]!r}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that transformers 5 reads back into the same model."""
        out = dict(self.hf_extra)
        out.setdefault("architectures", ["MT5ForConditionalGeneration" if self.model_type == "mt5"
                                         else "T5ForConditionalGeneration"])
        out.update(
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            d_kv=self.d_kv,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers,
            num_heads=self.num_heads,
            relative_attention_num_buckets=self.relative_attention_num_buckets,
            relative_attention_max_distance=self.relative_attention_max_distance,
            layer_norm_epsilon=self.layer_norm_epsilon,
            dropout_rate=self.dropout_rate,
            initializer_factor=self.initializer_factor,
            feed_forward_proj=self.feed_forward_proj,
            dense_act_fn=self.dense_act_fn,
            is_gated_act=self.is_gated_act,
            tie_word_embeddings=self.tie_word_embeddings,
            scale_decoder_outputs=self.scale_decoder_outputs,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
            is_encoder_decoder=True,
        )
        return out
