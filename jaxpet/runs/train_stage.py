"""One training stage in its run folder: Trainer, checkpoints, metrics.jsonl and the fit loop."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import optax
from jax.sharding import Mesh

from jaxpet.config import Config, TrainingConfig
from jaxpet.data.batching import Batcher
from jaxpet.engine.checkpoint import Checkpointer
from jaxpet.engine.optim import make_learning_rate_fn, make_optimizer
from jaxpet.engine.training import Trainer, fit
from jaxpet.runs import outputs


@dataclasses.dataclass(frozen=True)
class Schedule:
    """What a stage steps through: its optimizer, the learning rate it logs at each micro-step
    and its number of micro-steps (optimizer updates x accumulation steps)."""

    optimizer: optax.GradientTransformation
    learning_rate_fn: Callable[[jax.Array], jax.Array]
    num_steps: int


def settings_schedule(settings: TrainingConfig, updates: int) -> Schedule:
    """AdamW with PET's warm-up and linear decay over `updates` optimizer updates, as a
    training section (pet, classifier, text2text) sets it, gradient accumulation included."""
    optimizer = make_optimizer(settings.learning_rate, updates, settings.warmup_steps,
                               settings.weight_decay, settings.adam_epsilon,
                               settings.max_grad_norm, settings.accumulation_steps)
    learning_rate_fn = make_learning_rate_fn(settings.learning_rate, updates,
                                             settings.warmup_steps, settings.accumulation_steps)
    return Schedule(optimizer, learning_rate_fn, updates * settings.accumulation_steps)


def train_stage(config: Config, loss_fn: Any, schedule: Schedule, params: Any, batcher: Batcher,
                mesh: Mesh, folder: Path, seed: int, *, stage: str | None = None,
                compiler_options: dict[str, Any] | None = None) -> tuple[Any, float]:
    """Fits `params` with `loss_fn` on `batcher`'s batches for `schedule.num_steps` micro-steps;
    returns (params, seconds of training).

    `folder` holds the stage's metrics.jsonl (and TensorBoard events with
    `logging.tensorboard`) and, with `checkpoint.every` > 0, its checkpoints/, from which a
    rerun resumes. `stage` names the stage in the fit loop's messages; compiler_options go to
    the train step's jax.jit.
    """
    trainer = Trainer(loss_fn, schedule.optimizer, mesh,
                      learning_rate_fn=schedule.learning_rate_fn,
                      compiler_options=compiler_options)
    state = trainer.init(params)
    checkpointer = None
    if config.checkpoint.every:
        checkpointer = Checkpointer(folder / "checkpoints", config.checkpoint.keep,
                                    config.checkpoint.every)
    start = time.perf_counter()
    with outputs.MetricsWriter(folder, tensorboard=config.logging.tensorboard) as writer:
        log = outputs.ThroughputLog(batcher, writer)
        state = fit(trainer, state, log.batch, schedule.num_steps, seed=seed,
                    checkpointer=checkpointer, log_every=config.logging.every,
                    metrics_writer=log.write, progress=config.logging.progress, stage=stage)
    if checkpointer is not None:
        checkpointer.close()
    return state.params, time.perf_counter() - start
