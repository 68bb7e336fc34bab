"""Ensemble-parallel PET training (config `pet.parallel_members`): the unfinished single-token
members of an ensemble train together in one compiled step (jaxpet.engine.ensemble_training), then
each is evaluated and saved in its own folder as a sequentially trained member is.

A T5 backbone's members (jaxpet.scoring.seq2seq) train together the same way, each with its own
label
targets. Members that cannot share a step fall back to sequential training: multi-token
patterns, zero-shot members, and runs whose members need different numbers of updates (epochs
over training sets of different sizes). Their group's checkpoints live in
`OUT/parallel-checkpoints/<member names>/`, so a killed group resumes as a whole.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxpet.config import Config
from jaxpet.runs import outputs


def _jobs(config: Config, patterns: Sequence[Any], out: Path,
          train_sets: Mapping[str, Mapping[str, np.ndarray]] | None) -> list[tuple]:
    """(member folder, pattern, training arrays, seed) of every member that needs training."""
    jobs = []
    for pattern in patterns:
        if getattr(pattern, "multi_token", False):
            continue
        for repetition in range(config.pet.repetitions):
            folder = outputs.member_dir(out, pattern.pattern_id, repetition)
            train_set = pattern.train if train_sets is None else train_sets[folder.name]
            if (folder / "results.json").exists() or len(train_set["labels"]) == 0:
                continue
            jobs.append((folder, pattern, train_set, config.seed + repetition))
    return jobs


def member_constants(patterns: Sequence[Any], lm: Any) -> list[dict[str, np.ndarray]]:
    """Each member's per-pattern constants: verbalizer ids (masked LM), or T5 label targets
    padded to the most words and tokens of any member (stacked members share shapes)."""
    if patterns[0].label_targets is None:
        return [{"verbalizer_ids": np.asarray(p.verbalizer_ids_LxW)} for p in patterns]
    from jaxpet.scoring.seq2seq import T5_CONSTANT_KEYS, pad_label_targets

    words = max(p.label_targets[0].shape[1] for p in patterns)
    length = max(p.label_targets[0].shape[2] for p in patterns)
    return [dict(zip(T5_CONSTANT_KEYS, pad_label_targets(
        *p.label_targets, words, length, pad_id=lm.config.pad_token_id), strict=True))
        for p in patterns]


def member_loss(config: Config, lm: Any) -> Any:
    """The members' shared loss, reading each member's constants from its batch."""
    if lm.head == "seq2seq":
        from jaxpet.pipelines.pet import t5_special_ids
        from jaxpet.scoring.seq2seq import make_member_t5_pet_loss

        return make_member_t5_pet_loss(lm.module.apply, **t5_special_ids(lm),
                                       dropout=lm.config.dropout_rate > 0.0)
    from jaxpet.pipelines.pet import pet_loss_kwargs
    from jaxpet.scoring.cloze_step import make_member_pet_loss

    return make_member_pet_loss(lm.module.apply, **pet_loss_kwargs(config, lm))


def train_in_parallel(config: Config, lm: Any, params: Any, patterns: Sequence[Any], mesh: Any,
                      out: Path, train_sets: Mapping[str, Mapping[str, np.ndarray]] | None = None
                      ) -> dict[str, tuple[Any, float]]:
    """Trains the eligible members together; returns {member name: (params, seconds)}."""
    from jaxpet.data.batching import Batcher
    from jaxpet.engine.checkpoint import Checkpointer
    from jaxpet.engine.ensemble_training import Member, train_members
    from jaxpet.engine.optim import make_learning_rate_fn, make_optimizer
    from jaxpet.pipelines.pet import num_updates, training_groups

    settings = config.pet
    jobs = _jobs(config, patterns, out, train_sets)
    updates = {num_updates(settings, len(train_set["labels"])) for _, _, train_set, _ in jobs}
    if settings.max_steps == 0 or len(jobs) < 2 or len(updates) != 1:
        return {}
    steps = updates.pop()
    names = [folder.name for folder, _, _, _ in jobs]
    print(f"training {len(jobs)} members together: {', '.join(names)}")
    constants = member_constants([pattern for _, pattern, _, _ in jobs], lm)
    members = [Member(params, Batcher(groups=training_groups(config, pattern, train_set, seed),
                                      mesh=mesh).global_batch, seed, member_constant)
               for (_, pattern, train_set, seed), member_constant in zip(jobs, constants,
                                                                         strict=True)]
    optimizer = make_optimizer(settings.learning_rate, steps, settings.warmup_steps,
                               settings.weight_decay, settings.adam_epsilon,
                               settings.max_grad_norm, settings.accumulation_steps)
    lr_fn = make_learning_rate_fn(settings.learning_rate, steps, settings.warmup_steps,
                                  settings.accumulation_steps)
    group_root = out / "parallel-checkpoints"

    def checkpointer_for(indices: tuple[int, ...]) -> Any:
        if not config.checkpoint.every:
            return None
        return Checkpointer(group_root / "+".join(names[i] for i in indices) / "checkpoints",
                            config.checkpoint.keep, config.checkpoint.every)

    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(outputs.MetricsWriter(
            folder, tensorboard=config.logging.tensorboard)) for folder, _, _, _ in jobs]
        trained = train_members(
            members, member_loss(config, lm), optimizer, mesh,
            steps * settings.accumulation_steps, parallel="auto",
            learning_rate_fn=lr_fn, pad_id=lm.tokenizer.pad_token_id,
            checkpointer_for=checkpointer_for, metrics_writers=writers,
            log_every=config.logging.every, progress=config.logging.progress)
    seconds = (time.perf_counter() - start) / len(jobs)
    return {name: (member_params, seconds)
            for name, member_params in zip(names, trained, strict=True)}
