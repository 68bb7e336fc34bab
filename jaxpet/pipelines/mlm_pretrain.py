"""Masked-LM warm-up on a task's unlabeled text: trains the MLM head, optionally the encoder too.

Use it to adapt a model to a domain before PET, or to give an encoder that ships without an
MLM head (e.g. all-MiniLM-L6-v2) a working head. The stage has its own steps, learning rate
and folder (`OUT/mlm_pretrain` by default) holding metrics.jsonl, results.json, checkpoints and
the trained model in Hugging Face layout (`model/`), which any later run can load with
`model.name=OUT/mlm_pretrain/model`. A finished stage found in its folder is reused, not rerun.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxpet.config import Config
from jaxpet.data.batching import Batcher
from jaxpet.data.example import Example
from jaxpet.engine.optim import decay_mask, make_learning_rate_fn, make_optimizer, make_schedule
from jaxpet.models import LoadedModel, load_pretrained, save_pretrained
from jaxpet.prompts import get_pvp
from jaxpet.prompts.encoding import batch_encode, cut_counts, special_layout
from jaxpet.runs.outputs import read_json, write_json
from jaxpet.runs.train_stage import Schedule, train_stage
from jaxpet.scoring.cloze_step import make_mlm_loss

# Top-level parameter subtree of the encoder in jaxpet's masked-LM module; everything else
# (transform, transform_norm, bias) is the MLM head.
ENCODER_KEY = "encoder"


def special_tokens_mask(input_ids_NxS: np.ndarray, tokenizer: Any) -> np.ndarray:
    """1 where a token is special (CLS, SEP, PAD, MASK, ...): never an MLM target."""
    return np.isin(input_ids_NxS, np.asarray(tokenizer.all_special_ids)).astype(np.int32)


def encode_texts(
    examples: Sequence[Example], tokenizer: Any, max_seq_length: int
) -> tuple[dict[str, np.ndarray], int]:
    """Plain-text encoding (text_a [, text_b]) padded to max_seq_length.

    Returns input_ids/attention_mask/token_type_ids/special_tokens_mask [N,S] and the number
    of examples that were truncated: tokens are cut from the end of the longer segment until
    both are equal, then from both in turn, second segment first, as the original PET does.
    Each segment is tokenized once on its own, so time and memory grow linearly with the text
    (a tokenizer's own pair truncation grows quadratically with a very long pair).
    """
    if not examples:
        raise ValueError("no examples to encode")
    ids_a = batch_encode(tokenizer, [e.text_a for e in examples])
    paired = [i for i, e in enumerate(examples) if e.text_b is not None]
    ids_b: list[list[int] | None] = [None] * len(examples)
    for i, ids in zip(paired, batch_encode(tokenizer, [examples[i].text_b for i in paired]),
                      strict=True):
        ids_b[i] = ids
    layouts = {pair: special_layout(tokenizer, pair) for pair in (False, True)}
    input_ids_NxS = np.full((len(examples), max_seq_length), tokenizer.pad_token_id, np.int32)
    token_type_ids_NxS = np.zeros_like(input_ids_NxS)
    attention_mask_NxS = np.zeros_like(input_ids_NxS)
    truncated = 0
    for i, (a, b) in enumerate(zip(ids_a, ids_b, strict=True)):
        layout = layouts[b is not None]
        excess = len(a) + len(b or ()) + layout.num_special - max_seq_length
        truncated += excess > 0
        cut_a, cut_b = cut_counts(len(a), len(b or ()), excess)
        ids, types = layout.build(a[:len(a) - cut_a], None if b is None else b[:len(b) - cut_b])
        input_ids_NxS[i, :len(ids)] = ids
        token_type_ids_NxS[i, :len(ids)] = types
        attention_mask_NxS[i, :len(ids)] = 1
    out = {"input_ids": input_ids_NxS, "attention_mask": attention_mask_NxS,
           "token_type_ids": token_type_ids_NxS}
    out["special_tokens_mask"] = special_tokens_mask(input_ids_NxS, tokenizer)
    return out, truncated


def encode_for_mlm(config: Config, examples: Sequence[Example], tokenizer: Any) -> dict:
    """The warm-up inputs: plain text, or the text inside every configured PET pattern."""
    settings = config.mlm_pretrain
    if settings.inputs == "text":
        arrays, truncated = encode_texts(examples, tokenizer, settings.max_seq_length)
        if truncated:
            print(f"mlm_pretrain: {truncated} of {len(examples)} texts truncated to "
                  f"{settings.max_seq_length} tokens")
        return arrays

    parts = []
    for pattern_id in config.pet.pattern_ids:
        enc = get_pvp(config.task.name, pattern_id).encode(
            examples, tokenizer, settings.max_seq_length)
        part = {k: np.asarray(enc[k], np.int32)
                for k in ("input_ids", "attention_mask", "token_type_ids")}
        part["special_tokens_mask"] = special_tokens_mask(part["input_ids"], tokenizer)
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def make_warmup_loss(lm: LoadedModel, *, probability: float, max_targets: int, train_encoder: bool):
    """The masked-LM loss_fn(params, batch, rng) of the stage (head run only at the targets).

    With train_encoder=False no gradient flows into the encoder (pair it with
    `head_only_optimizer`), so the backward pass stops at the head.
    """

    tokenizer = lm.tokenizer
    mlm_loss_fn = make_mlm_loss(
        lm.module.apply, mask_token_id=tokenizer.mask_token_id, vocab_size=lm.config.vocab_size,
        max_mlm_targets=max_targets, pad_id=tokenizer.pad_token_id,
        special_token_ids=tokenizer.all_special_ids, mlm_probability=probability)
    if train_encoder:
        return mlm_loss_fn

    def head_only_loss_fn(params, batch, rng):
        frozen = {**params, ENCODER_KEY: jax.lax.stop_gradient(params[ENCODER_KEY])}
        return mlm_loss_fn(frozen, batch, rng)

    return head_only_loss_fn


def head_only_optimizer(learning_rate: float, num_steps: int, warmup_steps: int,
                        weight_decay: float) -> optax.GradientTransformation:
    """AdamW (PET's clipping and schedule) whose weight decay skips the encoder.

    With the encoder's gradient stopped, Adam's update of every encoder weight is exactly 0,
    so the frozen encoder stays bit-identical.
    """

    def mask(params):
        decays = decay_mask(params)
        return {k: (jax.tree.map(lambda _: False, v) if k == ENCODER_KEY else v)
                for k, v in decays.items()}

    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(make_schedule(learning_rate, num_steps, warmup_steps),
                    weight_decay=weight_decay, mask=mask))


def default_max_targets(probability: float, seq_length: int) -> int:
    """Target slots per sequence: enough for `probability` of the tokens plus some slack."""
    return max(1, math.ceil(probability * seq_length * 1.25))


def _replace_params(lm: LoadedModel, params: Any) -> Any:
    return dataclasses.replace(lm, params=params)


def run(config: Config, lm: LoadedModel, examples: Sequence[Example], mesh: Mesh,
        output_dir: str | Path) -> tuple[Any, dict]:
    """Trains `lm` (an MLM-head LoadedModel) on `examples`; returns (params, results dict)."""

    settings = config.mlm_pretrain
    folder = Path(settings.checkpoint_dir or Path(output_dir) / "mlm_pretrain")
    model_dir = folder / "model"
    if (folder / "results.json").exists() and model_dir.is_dir():
        print(f"mlm_pretrain: reusing the finished stage in {folder}")
        reloaded = load_pretrained(model_dir, head="mlm", dtype=jnp.dtype(config.model.dtype))
        return reloaded.params, read_json(folder / "results.json")
    if not examples:
        raise ValueError("mlm_pretrain needs unlabeled examples (task.unlabeled_examples is 0)")
    tokenizer = lm.tokenizer
    arrays = encode_for_mlm(config, examples, tokenizer)
    max_targets = settings.max_mlm_targets or default_max_targets(
        settings.mlm_probability, settings.max_seq_length)
    loss_fn = make_warmup_loss(lm, probability=settings.mlm_probability,
                               max_targets=max_targets, train_encoder=settings.train_encoder)
    if settings.train_encoder:
        optimizer = make_optimizer(settings.learning_rate, settings.steps,
                                   settings.warmup_steps, settings.weight_decay)
    else:
        optimizer = head_only_optimizer(settings.learning_rate, settings.steps,
                                        settings.warmup_steps, settings.weight_decay)
    schedule = Schedule(optimizer, make_learning_rate_fn(settings.learning_rate, settings.steps,
                                                         settings.warmup_steps), settings.steps)
    batcher = Batcher(arrays, settings.batch_size, seed=config.seed, mesh=mesh)
    what = "MLM head and encoder" if settings.train_encoder else "MLM head"
    print(f"mlm_pretrain: {settings.steps} steps on {len(arrays['input_ids'])} sequences "
          f"({what})")
    params, seconds = train_stage(config, loss_fn, schedule, lm.params, batcher, mesh, folder,
                                  config.seed)
    params = jax.device_get(params)
    save_pretrained(_replace_params(lm, params), model_dir)
    results = {"steps": settings.steps, "sequences": int(len(arrays["input_ids"])),
               "train_encoder": settings.train_encoder, "train_time_s": seconds,
               "model_dir": str(model_dir)}
    write_json(folder / "results.json", results)
    return params, results
