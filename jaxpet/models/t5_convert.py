"""HF T5 state dict <-> jaxpet Flax T5 params, and loading/saving HF checkpoint folders."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from huggingface_hub import snapshot_download
from safetensors.numpy import load_file, save_file

from jaxpet.models.t5 import T5
from jaxpet.models.t5_config import T5Config

# Tied aliases of `shared` and an unused parameter transformers itself ignores on load.
_IGNORED_HF_KEYS = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
)


def _attention_rows(flax_name: str, hf_prefix: str) -> list[tuple[str, str, str]]:
    return [(f"{flax_name}/{p}/kernel", f"{hf_prefix}.{p}.weight", "out" if p == "o" else "in")
            for p in "qkvo"]


def _block_map(config: T5Config, is_decoder: bool) -> list[tuple[str, str, str]]:
    """(flax path under `block`, HF key under `block.{i}`, conversion kind) for one stack."""
    ff_layer = 2 if is_decoder else 1
    rows = [
        ("self_attention_norm/weight", "layer.0.layer_norm.weight", "norm"),
        *_attention_rows("self_attention", "layer.0.SelfAttention"),
        ("mlp_norm/weight", f"layer.{ff_layer}.layer_norm.weight", "norm"),
    ]
    if is_decoder:
        rows += [("cross_attention_norm/weight", "layer.1.layer_norm.weight", "norm")]
        rows += _attention_rows("cross_attention", "layer.1.EncDecAttention")
    mlp = ("wi_0", "wi_1", "wo") if config.is_gated_act else ("wi", "wo")
    rows += [(f"mlp/{p}/kernel", f"layer.{ff_layer}.DenseReluDense.{p}.weight", "dense")
             for p in mlp]
    return rows


def _to_flax(hf_W: np.ndarray, kind: str, config: T5Config) -> np.ndarray:
    h, e = config.num_heads, config.d_kv
    if kind == "in":  # torch (H*E, D) -> DenseGeneral (D, H, E)
        return hf_W.T.reshape(hf_W.shape[1], h, e)
    if kind == "out":  # torch (D, H*E) -> (H, E, D)
        return hf_W.T.reshape(h, e, hf_W.shape[0])
    if kind == "dense":
        return hf_W.T
    return hf_W


def _to_hf(flax_W: np.ndarray, kind: str) -> np.ndarray:
    if kind == "in":
        return np.ascontiguousarray(flax_W.reshape(flax_W.shape[0], -1).T)
    if kind == "out":
        return np.ascontiguousarray(flax_W.reshape(-1, flax_W.shape[-1]).T)
    if kind == "dense":
        return np.ascontiguousarray(flax_W.T)
    return flax_W


def _set(tree: dict, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: dict, path: str) -> np.ndarray:
    for p in path.split("/"):
        tree = tree[p]
    return np.asarray(tree, dtype=np.float32)


def hf_to_flax(state: dict[str, np.ndarray], config: T5Config, source: str = "state dict") -> dict:
    """Flax params (float32 numpy) from an HF T5 state dict; every key must be used or known."""
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise KeyError(f"{source}: missing T5 weight {key!r}")
        used.add(key)
        return np.asarray(state[key], dtype=np.float32)

    params: dict = {}
    _set(params, "shared/embedding", take("shared.weight"))
    for stack, is_dec in (("encoder", False), ("decoder", True)):
        n = config.num_decoder_layers if is_dec else config.num_layers
        _set(params, f"{stack}/relative_attention_bias/embedding",
             take(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))
        _set(params, f"{stack}/final_layer_norm/weight", take(f"{stack}.final_layer_norm.weight"))
        for flax_path, hf_key, kind in _block_map(config, is_dec):
            layers = [_to_flax(take(f"{stack}.block.{i}.{hf_key}"), kind, config) for i in range(n)]
            _set(params, f"{stack}/block/{flax_path}", np.stack(layers))
    if config.tie_word_embeddings:
        used.add("lm_head.weight")
    else:
        _set(params, "lm_head/kernel", take("lm_head.weight").T)
    unknown = sorted(k for k in state if k not in used and k not in _IGNORED_HF_KEYS)
    if unknown:
        raise ValueError(f"{source}: unexpected T5 weights {unknown[:5]} (of {len(unknown)})")
    return params


def flax_to_hf(params: Any, config: T5Config) -> dict[str, np.ndarray]:
    """HF T5ForConditionalGeneration state dict (float32 numpy, without tied aliases)."""
    state = {"shared.weight": _get(params, "shared/embedding")}
    for stack, is_dec in (("encoder", False), ("decoder", True)):
        n = config.num_decoder_layers if is_dec else config.num_layers
        state[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = _get(
            params, f"{stack}/relative_attention_bias/embedding")
        state[f"{stack}.final_layer_norm.weight"] = _get(params, f"{stack}/final_layer_norm/weight")
        for flax_path, hf_key, kind in _block_map(config, is_dec):
            stacked = _get(params, f"{stack}/block/{flax_path}")
            for i in range(n):
                state[f"{stack}.block.{i}.{hf_key}"] = _to_hf(stacked[i], kind)
    if not config.tie_word_embeddings:
        state["lm_head.weight"] = np.ascontiguousarray(_get(params, "lm_head/kernel").T)
    return state


def _resolve_folder(path_or_name: str) -> str:
    if os.path.isdir(path_or_name):
        return path_or_name
    try:
        return snapshot_download(path_or_name, allow_patterns=["*.json", "*.safetensors", "*.bin",
                                                               "*.model", "*.txt"])
    except Exception as err:  # offline, unknown name, ...
        raise FileNotFoundError(
            f"{path_or_name}: not a local checkpoint folder and not downloadable ({err})"
        ) from None


def read_state_dict(folder: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a checkpoint folder as float32 numpy, and the file name they came from."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        return _as_f32(load_file(single)), single
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(load_file(os.path.join(folder, shard)))
        return _as_f32(state), index
    bin_path = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(bin_path):
        import torch  # optional: only legacy .bin checkpoints need torch

        raw = torch.load(bin_path, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in raw.items()}, bin_path
    raise FileNotFoundError(f"{folder}: no model.safetensors, index or pytorch_model.bin")


def _as_f32(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}


def load_t5(path_or_name: str, dtype: Any = jnp.float32) -> tuple[T5, dict, T5Config]:
    """(module, params, config) from an HF T5/mT5 checkpoint folder; params stay float32 and
    `dtype` is the compute dtype.  Whether the LM head is tied is read from the weights: a
    stored `lm_head.weight` that differs from `shared.weight` is a separate head (as
    transformers 5 does, since it always writes `tie_word_embeddings: true`)."""
    folder = _resolve_folder(path_or_name)
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path}: missing")
    with open(config_path) as f:
        config = T5Config.from_hf_dict(json.load(f), source=config_path)
    state, source = read_state_dict(folder)
    head = state.get("lm_head.weight")
    tied = head is None or np.array_equal(head, state["shared.weight"])
    if not tied and config.tie_word_embeddings or tied and not config.tie_word_embeddings:
        if head is None:
            raise ValueError(f"{source}: config says the LM head is untied but lm_head.weight is "
                             "missing")
        config = dataclasses.replace(config, tie_word_embeddings=tied)
    params = hf_to_flax(state, config, source)
    return T5(config, dtype), params, config


def save_t5(module_or_lm: Any, params: Any = None, config: T5Config | None = None,
            out_dir: str | None = None) -> str:
    """Write config.json, generation_config.json and model.safetensors that transformers loads.

    Call as save_t5(module, params, config, out_dir) or save_t5(lm, out_dir)."""
    if out_dir is None and config is None and isinstance(params, (str, os.PathLike)):
        lm, out_dir = module_or_lm, str(params)
        params, config = lm.params, lm.config
    if out_dir is None or config is None or params is None:
        raise TypeError("save_t5 needs (module, params, config, out_dir) or (lm, out_dir)")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(), f, indent=2, sort_keys=True)
    generation = {"decoder_start_token_id": config.decoder_start_token_id,
                  "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
    save_file(flax_to_hf(params, config), os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt"})
    return out_dir
