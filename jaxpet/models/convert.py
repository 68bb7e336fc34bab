"""Hugging Face PyTorch state dicts <-> jaxpet Flax param trees, both directions, per family."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxpet.models.config import EncoderConfig

# How one HF tensor becomes one Flax leaf: torch Linear weights are (out, in), Flax kernels
# (in, out); attention projections are split into (heads, head_dim).
KINDS = ("copy", "linear", "qkv", "qkv_bias", "attn_out")

# Per-layer tensors: Flax sub-path -> (BERT/RoBERTa key suffix, ALBERT key suffix, kind).
_LAYER_TABLE: tuple[tuple[str, str, str, str], ...] = tuple(
    (flax, bert, albert, kind)
    for name in ("query", "key", "value")
    for flax, bert, albert, kind in (
        (f"attention/{name}/kernel", f"attention.self.{name}.weight",
         f"attention.{name}.weight", "qkv"),
        (f"attention/{name}/bias", f"attention.self.{name}.bias",
         f"attention.{name}.bias", "qkv_bias"),
    )
) + (
    ("attention/output/kernel", "attention.output.dense.weight", "attention.dense.weight",
     "attn_out"),
    ("attention/output/bias", "attention.output.dense.bias", "attention.dense.bias", "copy"),
    ("attention_norm/scale", "attention.output.LayerNorm.weight", "attention.LayerNorm.weight",
     "copy"),
    ("attention_norm/bias", "attention.output.LayerNorm.bias", "attention.LayerNorm.bias", "copy"),
    ("intermediate/kernel", "intermediate.dense.weight", "ffn.weight", "linear"),
    ("intermediate/bias", "intermediate.dense.bias", "ffn.bias", "copy"),
    ("output/kernel", "output.dense.weight", "ffn_output.weight", "linear"),
    ("output/bias", "output.dense.bias", "ffn_output.bias", "copy"),
    ("output_norm/scale", "output.LayerNorm.weight", "full_layer_layer_norm.weight", "copy"),
    ("output_norm/bias", "output.LayerNorm.bias", "full_layer_layer_norm.bias", "copy"),
)

# Keys that carry nothing jaxpet needs: buffers, pre-training heads, tied decoder aliases.
_IGNORED_KEY_PATTERNS = (
    r"(^|\.)position_ids$",
    r"(^|\.)token_type_ids$",
    r"^cls\.seq_relationship\.",
    r"^sop_classifier\.",
    r"^(cls\.predictions|lm_head|predictions)\.decoder\.(weight|bias)$",
)

_HEAD_KEY_STARTS = ("cls.", "lm_head.", "predictions.", "classifier.", "sop_classifier.")
_BODY_KEY_STARTS = ("embeddings.", "encoder.", "pooler.")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One Flax leaf and the HF key(s) it comes from (one key per layer when stacked)."""

    flax_path: tuple[str, ...]
    hf_keys: tuple[str, ...]
    kind: str
    stacked: bool = False
    is_head: bool = False  # randomly initialised with a warning when absent from a checkpoint


def _path(text: str) -> tuple[str, ...]:
    return tuple(text.split("/"))


def entries(config: EncoderConfig, head: str) -> list[Entry]:
    """The full conversion table for one family and head ('mlm' or 'classifier')."""
    p = config.base_model_prefix
    out = [
        Entry(_path(f"encoder/embeddings/{name}/embedding"), (f"{p}.embeddings.{name}.weight",),
              "copy")
        for name in ("word_embeddings", "position_embeddings")
        + (("token_type_embeddings",) if config.type_vocab_size > 0 else ())
    ]
    out += [
        Entry(_path(f"encoder/embeddings/LayerNorm/{flax}"), (f"{p}.embeddings.LayerNorm.{hf}",),
              "copy")
        for flax, hf in (("scale", "weight"), ("bias", "bias"))
    ]
    if config.is_albert:
        out += [
            Entry(_path("encoder/embedding_hidden_mapping_in/kernel"),
                  (f"{p}.encoder.embedding_hidden_mapping_in.weight",), "linear"),
            Entry(_path("encoder/embedding_hidden_mapping_in/bias"),
                  (f"{p}.encoder.embedding_hidden_mapping_in.bias",), "copy"),
        ]
        for g in range(config.num_hidden_groups):
            for j in range(config.inner_group_num):
                hf_layer = f"{p}.encoder.albert_layer_groups.{g}.albert_layers.{j}"
                out += [
                    Entry(_path(f"encoder/layers/group_{g}/layer_{j}/{flax}"),
                          (f"{hf_layer}.{albert}",), kind)
                    for flax, _, albert, kind in _LAYER_TABLE
                ]
    else:
        out += [
            Entry(_path(f"encoder/layers/layer/{flax}"),
                  tuple(f"{p}.encoder.layer.{i}.{bert}" for i in range(config.num_hidden_layers)),
                  kind, stacked=True)
            for flax, bert, _, kind in _LAYER_TABLE
        ]
    out += _head_entries(config, head)
    return out


def _head_entries(config: EncoderConfig, head: str) -> list[Entry]:
    p = config.base_model_prefix
    if head == "mlm":
        hf = {
            "bert": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                     "cls.predictions.bias"),
            "albert": ("predictions.dense", "predictions.LayerNorm", "predictions.bias"),
        }.get(config.model_type, ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"))
        transform, norm, bias = hf
        table = [
            ("transform/kernel", f"{transform}.weight", "linear"),
            ("transform/bias", f"{transform}.bias", "copy"),
            ("transform_norm/scale", f"{norm}.weight", "copy"),
            ("transform_norm/bias", f"{norm}.bias", "copy"),
            ("bias", bias, "copy"),
        ]
    elif head == "classifier":
        pooler, classifier = {
            "bert": (f"{p}.pooler.dense", "classifier"),
            "albert": (f"{p}.pooler", "classifier"),
        }.get(config.model_type, ("classifier.dense", "classifier.out_proj"))
        table = [
            ("pooler/kernel", f"{pooler}.weight", "linear"),
            ("pooler/bias", f"{pooler}.bias", "copy"),
            ("classifier/kernel", f"{classifier}.weight", "linear"),
            ("classifier/bias", f"{classifier}.bias", "copy"),
        ]
    else:
        raise ValueError(f"unknown head {head!r}; encoder heads are 'mlm' and 'classifier'")
    return [Entry(_path(flax), (key,), kind, is_head=True) for flax, key, kind in table]


def hf_shape(kind: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape that converts to a Flax leaf of `flax_shape` (one layer)."""
    if kind == "linear":
        return tuple(reversed(flax_shape))
    if kind == "qkv":  # (H, N, K) <- (N*K, H)
        return (flax_shape[1] * flax_shape[2], flax_shape[0])
    if kind == "qkv_bias":
        return (flax_shape[0] * flax_shape[1],)
    if kind == "attn_out":  # (N, K, H) <- (H, N*K)
        return (flax_shape[2], flax_shape[0] * flax_shape[1])
    return tuple(flax_shape)


def to_flax(kind: str, tensor: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
    if kind in ("linear", "qkv", "attn_out"):
        tensor = tensor.T
    return np.ascontiguousarray(tensor.reshape(flax_shape))


def to_hf(kind: str, leaf: np.ndarray) -> np.ndarray:
    if kind == "qkv":
        leaf = leaf.reshape(leaf.shape[0], -1)
    elif kind == "attn_out":
        leaf = leaf.reshape(-1, leaf.shape[-1])
    elif kind == "qkv_bias":
        leaf = leaf.reshape(-1)
    if kind in ("linear", "qkv", "attn_out"):
        leaf = leaf.T
    return np.ascontiguousarray(leaf)


def normalize_keys(state: Mapping[str, np.ndarray], config: EncoderConfig) -> dict[str, Any]:
    """Adds the base-model prefix where absent (bare encoder files) and renames gamma/beta."""
    prefix = config.base_model_prefix + "."
    out: dict[str, Any] = {}
    for key, value in state.items():
        key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
        if key.startswith(_BODY_KEY_STARTS) and not key.startswith(_HEAD_KEY_STARTS):
            key = prefix + key
        out[key] = value
    # Some older files store the MLM output bias only as the decoder's bias.
    for head in ("cls.predictions", "lm_head", "predictions"):
        if f"{head}.decoder.bias" in out and f"{head}.bias" not in out:
            out[f"{head}.bias"] = out[f"{head}.decoder.bias"]
    return out


@dataclasses.dataclass
class ConversionResult:
    """Flat {flax_path: array} of what was found, and what was missing or left over."""

    leaves: dict[tuple[str, ...], np.ndarray]
    missing: list[Entry]
    unused_keys: list[str]


def _is_ignored(key: str, head: str, config: EncoderConfig) -> bool:
    if any(re.search(pattern, key) for pattern in _IGNORED_KEY_PATTERNS):
        return True
    # The pooler feeds only the BERT/ALBERT classifier; other models drop it as HF's do.
    uses_pooler = head == "classifier" and not config.cumsum_positions
    return not uses_pooler and key.startswith(f"{config.base_model_prefix}.pooler.")


def hf_to_flax(
    state: Mapping[str, np.ndarray],
    config: EncoderConfig,
    head: str,
    flax_shapes: Mapping[tuple[str, ...], tuple[int, ...]],
    source: str = "checkpoint",
) -> ConversionResult:
    """Converts what the table finds in `state`; raises on any shape that disagrees."""
    state = normalize_keys(state, config)
    leaves: dict[tuple[str, ...], np.ndarray] = {}
    missing: list[Entry] = []
    used: set[str] = set()
    for entry in entries(config, head):
        if not all(key in state for key in entry.hf_keys):
            missing.append(entry)
            continue
        shape = tuple(flax_shapes[entry.flax_path])
        layer_shape = shape[1:] if entry.stacked else shape
        want = hf_shape(entry.kind, layer_shape)
        tensors = []
        for key in entry.hf_keys:
            tensor = np.asarray(state[key], dtype=np.float32)
            if tuple(tensor.shape) != want:
                raise ValueError(
                    f"{source}: weight {key!r} has shape {tuple(tensor.shape)} but the config "
                    f"expects {want}"
                )
            tensors.append(to_flax(entry.kind, tensor, layer_shape))
            used.add(key)
        leaves[entry.flax_path] = np.stack(tensors) if entry.stacked else tensors[0]
    unused = sorted(k for k in state if k not in used and not _is_ignored(k, head, config))
    return ConversionResult(leaves, missing, unused)


def flax_to_hf(params: Mapping[str, Any], config: EncoderConfig, head: str) -> dict[str, Any]:
    """The HF state dict of the matching *ForMaskedLM / *ForSequenceClassification model."""
    out: dict[str, np.ndarray] = {}
    for entry in entries(config, head):
        leaf: Any = params
        for name in entry.flax_path:
            leaf = leaf[name]
        leaf = np.asarray(leaf, dtype=np.float32)
        layers = list(leaf) if entry.stacked else [leaf]
        for key, layer in zip(entry.hf_keys, layers, strict=True):
            out[key] = to_hf(entry.kind, layer)
    return out


def unflatten(leaves: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in leaves.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix + (name,)))
        else:
            out[prefix + (name,)] = value
    return out
