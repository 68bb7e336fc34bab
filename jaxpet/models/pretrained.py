"""Load and save HF checkpoints as jaxpet Flax models (load_pretrained, save_pretrained)."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from huggingface_hub import snapshot_download
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxpet.atomic import atomic_folder
from jaxpet.models import convert, t5_convert
from jaxpet.models.config import SUPPORTED_MODEL_TYPES, EncoderConfig
from jaxpet.models.heads import EncoderForMaskedLM, EncoderForSequenceClassification
from jaxpet.models.t5_config import T5Config

# transformers is imported where a tokenizer or a config is read: it takes seconds to load
# (torch with it, when installed), and the model code and `import jaxpet.models` need neither.


ENCODER_HEADS = ("mlm", "classifier")
_T5_TYPES = ("t5", "mt5")
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
    "sentencepiece.bpe.model",
)

_HF_CLASS_PREFIX = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta",
                    "albert": "Albert"}
_HUB_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*",
                 "vocab*", "merges.txt", "*.model", "special_tokens_map.json",
                 "added_tokens.json"]


@dataclasses.dataclass
class LoadedModel:
    """A Flax module, its parameter pytree, its config and (when known) its tokenizer."""

    module: nn.Module
    params: Any
    config: EncoderConfig | T5Config
    tokenizer: Any = None

    @property
    def head(self) -> str:
        if isinstance(self.module, EncoderForSequenceClassification):
            return "classifier"
        if isinstance(self.module, EncoderForMaskedLM):
            return "mlm"
        return "seq2seq"


def build_module(
    config: EncoderConfig, head: str, num_labels: int | None = None, dtype: Any = jnp.float32
) -> nn.Module:
    """The Flax module for `head`; params are always float32, `dtype` is the compute dtype."""
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                                jnp.dtype(jnp.float16)):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if head == "mlm":
        return EncoderForMaskedLM(config, dtype=dtype)
    if head == "classifier":
        if not num_labels or num_labels < 1:
            raise ValueError("head='classifier' needs num_labels >= 1")
        return EncoderForSequenceClassification(config, num_labels=num_labels, dtype=dtype)
    raise ValueError(f"unknown head {head!r}; encoder models support {', '.join(ENCODER_HEADS)}")


def _dummy_inputs(config: EncoderConfig) -> tuple[jax.Array, jax.Array]:
    seq = min(8, config.max_position_embeddings - config.position_offset)
    ids_1xS = jnp.full((1, seq), config.pad_token_id + 1, jnp.int32)
    return ids_1xS, jnp.ones_like(ids_1xS)


def abstract_variables(module: nn.Module) -> Any:
    """Boxed (LogicallyPartitioned) ShapeDtypeStructs of module.init, without computing."""
    return jax.eval_shape(lambda key: module.init(key, *_dummy_inputs(module.config)),
                          jax.random.key(0))


def logical_partition_specs(lm: LoadedModel) -> Any:
    """PartitionSpecs of logical axis names ('embed', 'mlp', 'heads', 'kv', 'vocab', 'layers')."""
    return nn.get_partition_spec(abstract_variables(lm.module))["params"]


def init_params(module: nn.Module, seed: int = 0) -> Any:
    init = jax.jit(lambda key: module.init(key, *_dummy_inputs(module.config)))
    return nn.unbox(init(jax.random.key(seed)))["params"]


def init_model(
    config: EncoderConfig,
    head: str = "mlm",
    num_labels: int | None = None,
    seed: int = 0,
    dtype: Any = jnp.float32,
) -> LoadedModel:
    """A randomly initialised model from a config (no tokenizer)."""
    module = build_module(config, head, num_labels, dtype)
    return LoadedModel(module, init_params(module, seed), config, None)


def resolve_folder(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise FileNotFoundError(f"{name} is a file; load_pretrained needs a checkpoint folder")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"no checkpoint folder at {name}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(name, allow_patterns=_HUB_PATTERNS,
                                      local_files_only=offline))
    except Exception as err:  # any hub failure means the same thing to the user
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub is unreachable ({err})"
        raise FileNotFoundError(
            f"{name!r} is not a local folder and could not be fetched from the Hugging Face "
            f"hub: {why}, and it is not in the local cache. Download it where a network "
            f"exists (e.g. huggingface-cli download {name} --local-dir DIR) and pass the "
            f"folder: load_pretrained('DIR')"
        ) from err


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (TypeError, ValueError):
        # NumPy has no bfloat16; read through JAX and widen, as HF's converter did.
        with safe_open(str(path), framework="flax") as f:
            return {k: np.asarray(f.get_tensor(k), dtype=np.float32) for k in f.keys()}


def read_state_dict(folder: Path) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a checkpoint folder, and the file name they came from."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.exists():
        return _read_safetensors(single), str(single)
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(_read_safetensors(folder / shard))
        return state, str(index)
    binary = folder / "pytorch_model.bin"
    if binary.exists():
        try:
            import torch  # optional: only a legacy pytorch_model.bin needs it
        except ImportError as err:
            raise FileNotFoundError(
                f"{binary} needs torch to read; install torch or convert it to model.safetensors"
            ) from err
        tensors = torch.load(binary, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in tensors.items()}, str(binary)
    raise FileNotFoundError(
        f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json "
        "or pytorch_model.bin"
    )


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json; is it a Hugging Face checkpoint?")
    raw = json.loads(path.read_text())
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES + _T5_TYPES:
        raise ValueError(
            f"{path}: unsupported model_type {model_type!r}; jaxpet supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES + _T5_TYPES)}"
        )
    return raw


def load_tokenizer(folder: Path) -> Any:
    if not any((folder / name).exists() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer  # deferred: seconds to load (see the top)

    return AutoTokenizer.from_pretrained(str(folder))


def _num_labels_from(state: dict[str, np.ndarray], config: EncoderConfig,
                     raw: dict[str, Any]) -> int:
    key = "classifier.out_proj.weight" if config.cumsum_positions else "classifier.weight"
    if key in state:
        return int(state[key].shape[0])
    if "id2label" in raw:
        return len(raw["id2label"])
    raise ValueError("the checkpoint has no classifier; pass num_labels to load_pretrained")


def _fresh_leaf(path: tuple[str, ...], shape: tuple[int, ...], config: EncoderConfig,
                rng: np.random.Generator) -> np.ndarray:
    """HF's initialisation for one head leaf: normal(initializer_range) kernels, LN ones, zeros."""
    if path[-1] == "kernel":
        return (rng.standard_normal(shape) * config.initializer_range).astype(np.float32)
    if path[-1] == "scale":
        return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)


def load_pretrained(
    name_or_path: str | os.PathLike,
    head: str = "mlm",
    num_labels: int | None = None,
    dtype: Any = jnp.float32,
    seed: int = 0,
) -> LoadedModel:
    """Loads a local HF folder (or a cached/downloadable hub name) as a jaxpet model.

    Head weights absent from the file are initialised from `seed` with a warning; absent
    encoder weights, wrong shapes and unknown families raise.
    """
    folder = resolve_folder(name_or_path)
    raw = read_config(folder)
    is_t5 = raw["model_type"] in _T5_TYPES
    if is_t5 != (head == "seq2seq"):
        expected = "head='seq2seq'" if is_t5 else "head='mlm' or head='classifier'"
        raise ValueError(
            f"{folder / 'config.json'}: a {raw['model_type']} checkpoint supports "
            f"{expected}, not head={head!r}"
        )
    if is_t5:
        module, params, t5_config = t5_convert.load_t5(str(folder), dtype=dtype)
        return LoadedModel(module, params, t5_config, load_tokenizer(folder))
    from transformers import AutoConfig  # deferred: seconds to load (see the top)

    config = EncoderConfig.from_hf(AutoConfig.from_pretrained(str(folder)))
    if head == "mlm" and raw.get("tie_word_embeddings") is False:
        raise ValueError(
            f"{folder / 'config.json'}: tie_word_embeddings is false, but jaxpet's MLM head "
            "always ties its decoder to the word embeddings"
        )
    state, source = read_state_dict(folder)
    if head == "classifier" and num_labels is None:
        num_labels = _num_labels_from(convert.normalize_keys(state, config), config, raw)
    module = build_module(config, head, num_labels, dtype)
    shapes = {path: leaf.shape for path, leaf in
              convert.flatten(nn.unbox(abstract_variables(module))["params"]).items()}
    result = convert.hf_to_flax(state, config, head, shapes, source=source)
    backbone_missing = [e for e in result.missing if not e.is_head]
    if backbone_missing:
        keys = [k for e in backbone_missing for k in e.hf_keys]
        raise ValueError(
            f"{source}: {len(keys)} encoder weights are missing, e.g. {', '.join(keys[:5])}"
        )
    leaves = dict(result.leaves)
    if result.missing:
        rng = np.random.default_rng(seed)
        for entry in result.missing:
            leaves[entry.flax_path] = _fresh_leaf(entry.flax_path, shapes[entry.flax_path],
                                                  config, rng)
        names = sorted({k for e in result.missing for k in e.hf_keys})
        warnings.warn(
            f"{source}: no {head} head weights ({', '.join(names)}); initialised them randomly "
            f"with seed {seed}. Train the model before trusting its {head} outputs.",
            stacklevel=2,
        )
    if result.unused_keys:
        warnings.warn(
            f"{source}: {len(result.unused_keys)} weights are not used by the {head} model: "
            f"{', '.join(result.unused_keys[:10])}",
            stacklevel=2,
        )
    params = jax.tree_util.tree_map(jnp.asarray, convert.unflatten(leaves))
    return LoadedModel(module, params, config, load_tokenizer(folder))


def save_pretrained(lm: LoadedModel, out_dir: str | os.PathLike) -> Path:
    """Writes config.json + model.safetensors (+ tokenizer) that transformers loads back.

    The folder is filled under a temporary name and renamed when complete (jaxpet.atomic), so
    it never holds a config without its weights; an existing folder of that name is replaced.
    """
    with atomic_folder(out_dir) as partial:
        write_model_files(lm, partial)
    return Path(out_dir)


def write_model_files(lm: LoadedModel, out: Path) -> None:
    """The files of save_pretrained, written into the existing folder `out`."""

    if lm.head == "seq2seq":
        t5_convert.save_t5(lm, str(out))
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(str(out))
        return
    config: EncoderConfig = lm.config
    hf_config = config.to_hf()
    family = _HF_CLASS_PREFIX[config.model_type]
    if lm.head == "classifier":
        hf_config.architectures = [f"{family}ForSequenceClassification"]
        num_labels = lm.module.num_labels
        if len(hf_config.id2label) != num_labels:
            hf_config.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            hf_config.label2id = {v: k for k, v in hf_config.id2label.items()}
    else:
        hf_config.architectures = [f"{family}ForMaskedLM"]
    hf_config.save_pretrained(str(out))
    state = convert.flax_to_hf(lm.params, config, lm.head)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(str(out))
