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
from jax.sharding import Mesh

from jaxpet.config import Config
from jaxpet.data.batching import Batcher
from jaxpet.engine.checkpoint import Checkpointer
from jaxpet.engine.ensemble_training import Member, train_members
from jaxpet.engine.optim import make_learning_rate_fn, make_optimizer, num_updates
from jaxpet.models import LoadedModel
from jaxpet.pipelines.member import training_groups
from jaxpet.runs import outputs
from jaxpet.scoring.scorer import pad_member_constants


def _jobs(config: Config, patterns: Sequence[Any], out: Path,
          train_sets: Mapping[str, Mapping[str, np.ndarray]] | None) -> list[tuple]:
    """(member folder, pattern, training arrays, seed) of every member that needs training."""
    jobs = []
    for pattern in patterns:
        if not pattern.scorer.supports_parallel_members:
            continue
        for repetition in range(config.pet.repetitions):
            folder = outputs.member_dir(out, pattern.pattern_id, repetition)
            train_set = pattern.train if train_sets is None else train_sets[folder.name]
            if (folder / "results.json").exists() or len(train_set["labels"]) == 0:
                continue
            jobs.append((folder, pattern, train_set, config.seed + repetition))
    return jobs


def member_constants(patterns: Sequence[Any], lm: LoadedModel) -> list[dict[str, np.ndarray]]:
    """Each member's scorer constants (verbalizer ids, T5 label targets), padded to the most
    words and tokens of any member (stacked members share shapes)."""

    return pad_member_constants([p.constants for p in patterns], patterns[0].constant_pad)


def member_loss(pattern: Any) -> Any:
    """The members' shared loss (of their common scorer), reading each member's constants
    from its batch."""
    return pattern.scorer.member_loss_fn()


def train_in_parallel(config: Config, lm: LoadedModel, params: Any, patterns: Sequence[Any],
                      mesh: Mesh, out: Path,
                      train_sets: Mapping[str, Mapping[str, np.ndarray]] | None = None
                      ) -> dict[str, tuple[Any, float]]:
    """Trains the eligible members together; returns {member name: (params, seconds)}."""
    settings = config.pet
    jobs = _jobs(config, patterns, out, train_sets)
    updates = {num_updates(settings, len(train_set["labels"]), settings.train_batch_size)
               for _, _, train_set, _ in jobs}
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
            members, member_loss(jobs[0][1]), optimizer, mesh,
            steps * settings.accumulation_steps, parallel="auto",
            learning_rate_fn=lr_fn, pad_id=lm.tokenizer.pad_token_id,
            checkpointer_for=checkpointer_for, metrics_writers=writers,
            log_every=config.logging.every, progress=config.logging.progress)
    seconds = (time.perf_counter() - start) / len(jobs)
    return {name: (member_params, seconds)
            for name, member_params in zip(names, trained, strict=True)}
