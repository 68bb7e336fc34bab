"""Backbone shapes: the sizes that decide memory, known backbones by name, parameter tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneShape:
    """The sizes that decide memory. For T5, `num_layers` is the encoder depth."""

    name: str
    family: str  # "encoder" (BERT / RoBERTa / XLM-R / ALBERT) or "t5"
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int = 512
    type_vocab_size: int = 2
    embedding_size: int | None = None  # ALBERT's factorised embedding; None = hidden_size
    shared_layers: bool = False  # ALBERT: one set of layer weights reused by every layer
    num_decoder_layers: int = 0
    gated_ffn: bool = False  # T5 v1.1 / mT5 gated-GELU
    tied_lm_head: bool = True
    relative_buckets: int = 32

    @property
    def attention_width(self) -> int:
        return self.num_heads * self.head_dim


def _encoder(name, layers, hidden, heads, ffn, vocab, **kw) -> BackboneShape:
    return BackboneShape(name, "encoder", layers, hidden, ffn, heads, hidden // heads, vocab, **kw)


def _t5(name, layers, d_model, heads, d_kv, d_ff, vocab=32128, **kw) -> BackboneShape:
    return BackboneShape(name, "t5", layers, d_model, d_ff, heads, d_kv, vocab,
                         type_vocab_size=0, num_decoder_layers=layers, **kw)


# Shapes from each checkpoint's config.json on the Hugging Face hub. The bench sizes
# tiny/small/base/large are BERT-shaped encoders with a 30522-token vocabulary.
KNOWN_BACKBONES: dict[str, BackboneShape] = {
    shape.name: shape
    for shape in (
        _encoder("tiny", 2, 128, 2, 512, 30522),
        _encoder("small", 4, 512, 8, 2048, 30522),
        _encoder("base", 12, 768, 12, 3072, 30522),
        _encoder("large", 24, 1024, 16, 4096, 30522),
        _encoder("bert-base-uncased", 12, 768, 12, 3072, 30522),
        _encoder("roberta-large", 24, 1024, 16, 4096, 50265, max_positions=514,
                 type_vocab_size=1),
        _encoder("albert-xxlarge-v2", 12, 4096, 64, 16384, 30000, embedding_size=128,
                 shared_layers=True),
        _t5("t5-3b", 24, 1024, 32, 128, 16384),
        _t5("t5-11b", 24, 1024, 128, 128, 65536),
    )
}


def get_backbone(name: str | BackboneShape) -> BackboneShape:
    """A known backbone by name (see `KNOWN_BACKBONES`), or the shape itself."""
    if isinstance(name, BackboneShape):
        return name
    key = name.lower()
    for org in ("google-t5/", "google/", "facebookai/", "google-bert/", "albert/"):
        key = key.removeprefix(org)
    aliases = {"bert-base": "bert-base-uncased", "albert-xxlarge": "albert-xxlarge-v2"}
    key = aliases.get(key, key)
    if key not in KNOWN_BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(KNOWN_BACKBONES)}")
    return KNOWN_BACKBONES[key]


def backbone_from_config(config, name: str | None = None) -> BackboneShape:
    """Shape from a Hugging Face-style config (transformers config or jaxpet EncoderConfig)."""
    get = lambda *keys, default=None: next(
        (getattr(config, k) for k in keys if getattr(config, k, None) not in (None, "")), default)
    name = name or str(get("name_or_path", "_name_or_path", "model_type", default="custom"))
    model_type = str(get("model_type", "family", default="")).lower()
    if model_type in ("t5", "mt5", "umt5") or get("d_model") is not None:
        layers = int(get("num_layers"))
        return BackboneShape(
            name, "t5", layers, int(get("d_model")), int(get("d_ff")), int(get("num_heads")),
            int(get("d_kv")), int(get("vocab_size")), type_vocab_size=0,
            num_decoder_layers=int(get("num_decoder_layers", default=layers)),
            gated_ffn=bool(get("is_gated_act", default=False))
            or str(get("feed_forward_proj", default="")).startswith("gated"),
            tied_lm_head=bool(get("tie_word_embeddings", default=True)),
            relative_buckets=int(get("relative_attention_num_buckets", default=32)))
    hidden = int(get("hidden_size"))
    heads = int(get("num_attention_heads"))
    embedding = get("embedding_size")
    return BackboneShape(
        name, "encoder", int(get("num_hidden_layers")), hidden, int(get("intermediate_size")),
        heads, hidden // heads, int(get("vocab_size")),
        max_positions=int(get("max_position_embeddings", default=512)),
        type_vocab_size=int(get("type_vocab_size", default=2)),
        embedding_size=None if embedding in (None, hidden) else int(embedding),
        shared_layers=model_type == "albert" or bool(get("shared_layers", default=False)))


def parameter_shapes(shape: BackboneShape) -> list[tuple[int, ...]]:
    """Every parameter tensor's shape, counting shared (ALBERT) and tied weights once."""
    H, A, V = shape.hidden_size, shape.attention_width, shape.vocab_size
    I = shape.intermediate_size  # noqa: E741 - the usual name for the FFN width
    if shape.family == "t5":
        attention = [(H, A)] * 3 + [(A, H), (H,)]
        ffn = [(H, I)] * (2 if shape.gated_ffn else 1) + [(I, H), (H,)]
        bias = [(shape.relative_buckets, shape.num_heads)]
        encoder = bias + (attention + ffn) * shape.num_layers + [(H,)]
        decoder = bias + (attention * 2 + ffn) * shape.num_decoder_layers + [(H,)]
        head = [] if shape.tied_lm_head else [(V, H)]
        return [(V, H)] + encoder + decoder + head
    E = shape.embedding_size or H
    embeddings = [(V, E), (shape.max_positions, E)] + [(E,), (E,)]
    if shape.type_vocab_size:
        embeddings.append((shape.type_vocab_size, E))
    if E != H:
        embeddings += [(E, H), (H,)]
    layer = [(H, A), (A,)] * 3 + [(A, H), (H,), (H,), (H,), (H, I), (I,), (I, H), (H,), (H,), (H,)]
    layers = 1 if shape.shared_layers else shape.num_layers
    mlm_head = [(H, E), (E,), (E,), (E,), (V,)]  # transform, LayerNorm, output bias; tied decoder
    return embeddings + layer * layers + mlm_head


def count_parameters(shape: BackboneShape | str) -> int:
    return sum(math.prod(s) for s in parameter_shapes(get_backbone(shape)))

