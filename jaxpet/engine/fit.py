"""The one fit loop: resume, metrics, checkpoints, finite-loss guard, coordinated stop.

`fit_loop` drives any trainer that follows `FitTrainer`: the single-model
`jaxpet.engine.training.Trainer` (through `training.fit`) and the member-stacked
`jaxpet.engine.ensemble_training.EnsembleTrainer` (through `fit_ensemble`). The trainer says
how a step's host batch becomes a global batch, how its metrics split into members and how a
non-finite member is named; everything else (resume, lagged metrics, progress, checkpoints,
the non-finite guard, the SIGTERM stop agreed by every process) is written once, here.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpet.engine.sharding import replicated

MetricsWriter = Callable[[int, dict[str, float]], None]
BatchFn = Callable[[int], Mapping[str, np.ndarray]]


class SigtermFlag:
    """Turns SIGTERM and a first SIGINT (Ctrl-C) into a flag that the loop checks between
    steps (main thread only); a second Ctrl-C interrupts at once, as Python's default does."""

    def __init__(self) -> None:
        self.raised = False
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> SigtermFlag:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True
        self.signum = self.signum or signum
        if signum == signal.SIGINT:
            previous = self.previous.get(signal.SIGINT) or signal.default_int_handler
            signal.signal(signal.SIGINT, previous)

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self.previous.items():
            if previous is not None:  # None: a handler not installed from Python
                signal.signal(signum, previous)


class StopVote:
    """All processes agree, at the same step, whether any one of them was asked to stop.

    A SIGTERM reaches one host (or some hosts) of a multi-host run; stopping only there would
    leave the others hanging in the next collective. So every `every` steps each process
    contributes its local flag to a tiny max-reduction over all devices, dispatched
    asynchronously and read one step later (by then it has run after the previous train step),
    which keeps the host from waiting on the device. Every process reads the same reduced
    value at the same step and so stops at the same step. A single process decides alone.
    """

    def __init__(self, mesh: Mesh, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"stop_check_every must be >= 1, got {every}")
        self.every = int(every)
        self.multi = jax.process_count() > 1
        self._pending: jax.Array | None = None
        if self.multi:
            devices = mesh.devices.reshape(-1)
            vote_mesh = Mesh(devices, ("all",))
            self._sharding = NamedSharding(vote_mesh, P("all"))
            self._shape = (devices.size,)
            me = jax.process_index()
            self._local = [d for d in devices if d.process_index == me]
            self._reduce = jax.jit(jnp.max, out_shardings=NamedSharding(vote_mesh, P()))

    def _cast(self, flag: bool) -> None:
        value = np.full((1,), int(flag), np.int32)
        shards = [jax.device_put(value, device) for device in self._local]
        votes = jax.make_array_from_single_device_arrays(self._shape, self._sharding, shards)
        self._pending = self._reduce(votes)

    def should_stop(self, done: int, local_flag: bool) -> bool:
        """Called by every process after dispatching the step that makes `done` steps."""
        if not self.multi:
            return local_flag
        agreed = False
        if self._pending is not None:
            agreed = bool(np.asarray(self._pending))
            self._pending = None
        if not agreed and done % self.every == 0:
            self._cast(local_flag)
        return agreed


class NonFiniteLossError(ValueError):
    """Training produced a NaN or infinite loss or gradient norm; the run stops there."""


def non_finite_error(bad: int, stage: str, checkpointer: Any, good: int | None) -> Exception:
    if checkpointer is None:
        last = "no checkpoint was saved (checkpoint.every is 0)"
    elif good is None:
        last = f"no good checkpoint in {checkpointer.directory}"
    else:
        last = f"last good checkpoint: step {good} in {checkpointer.directory}"
    return NonFiniteLossError(
        f"{stage}: non-finite loss or gradient at step {bad}; training stopped ({last}). "
        "Lower the learning rate, check the data, or a temperature/scale set to 0")


def stage_name(checkpointer: Any) -> str:
    directory = getattr(checkpointer, "directory", None)
    if directory:  # <stage folder>/checkpoints
        return os.path.basename(os.path.dirname(os.path.normpath(directory)))
    return "training"


def _first_bad_steps(bad: jax.Array, done: jax.Array, loss: jax.Array,
                     grad_norm: jax.Array) -> jax.Array:
    # per model (one, or [M] members), the first step (1-based, as metrics.jsonl counts) whose
    # loss or gradient norm is not finite; -1 while all are. Dispatched after every step and
    # read only with the delayed metrics or before a checkpoint, so it never makes the host
    # wait for the device.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return jnp.where((bad < 0) & ~finite, done, bad)


@functools.cache
def _first_bad_steps_on(mesh: Mesh) -> Callable[..., jax.Array]:
    # replicated, so that every process reads every member's step from its own devices
    return jax.jit(_first_bad_steps, out_shardings=replicated(mesh))


class FitTrainer(Protocol):
    """What `fit_loop` needs of a trainer; the loop itself is the same for every trainer."""

    mesh: Mesh
    state_sharding: Any

    def train_step(self, state: Any, batch: Mapping[str, jax.Array],
                   rng: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        """One update (state donated); metrics hold at least "loss" and "grad_norm"."""
        ...

    def fit_batch(self, host: Mapping[str, np.ndarray]) -> tuple[dict[str, jax.Array], int]:
        """The global batch of one step from batch_fn's host arrays, and its examples (of one
        member)."""
        ...

    def fit_metrics(self, host: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
        """A step's metrics fetched to the host, one dict of floats per model it trains."""
        ...

    def fit_where(self, stage: str, bad_steps: np.ndarray, first: int) -> str:
        """Where a non-finite step happened, for the error: the stage, the member(s) if any."""
        ...

    def fit_label(self) -> str:
        """The progress bar's description."""
        ...


def fit_loop(
    trainer: FitTrainer,
    state: Any,
    batch_fn: BatchFn,
    num_steps: int,
    *,
    rng: jax.Array,
    checkpointer: Any = None,
    save_every: int = 0,
    log_every: int = 50,
    metrics_writers: Sequence[MetricsWriter | None] = (),
    progress: bool = True,
    stop_check_every: int = 1,
    stage: str | None = None,
) -> Any:
    """Runs train steps state.step .. num_steps-1 of `trainer` and returns the final state.

    batch_fn(step) gives the host arrays that trainer.fit_batch turns into the step's global
    batch (a pure function of (seed, step)); rng is the run's base key (or [M] keys), folded
    with the step inside the compiled step. With a checkpointer, the run first resumes from its
    latest checkpoint, saves every `save_every` steps (0: the checkpointer's own `save_every`)
    and at the end, all asynchronously. On SIGTERM (to any one process of a multi-host run)
    all processes agree on a step (StopVote; checked every `stop_check_every` steps), save it,
    wait for the write, print "interrupted, checkpoint at step N" and raise SystemExit(143); a
    first Ctrl-C does the same with status 130. Running the same command again resumes there.
    A NaN or infinite loss or gradient norm raises NonFiniteLossError naming the first such
    step, trainer.fit_where(`stage` (default: the checkpoint folder's parent), ...) and the
    last good checkpoint; no checkpoint is saved after it. It is noticed with the delayed
    metrics, at a checkpoint or at the end. metrics_writers[m](step, metrics) receives model
    m's metrics of every `log_every`-th step (and the last), one step late so that logging
    never stalls the device. Metrics are host floats; `examples_per_s` (of one model) is added.
    """
    if trainer.state_sharding is None:
        trainer.state_sharding = jax.tree.map(lambda x: x.sharding, state)
    if checkpointer is not None:
        latest = checkpointer.latest_step()
        if latest is not None and latest > num_steps:
            # restoring it would report a longer-trained model as this run's result
            raise ValueError(
                f"{checkpointer.directory} holds a checkpoint at step {latest}, beyond this "
                f"run's {num_steps} steps: it belongs to a different run (use a new output_dir "
                "or --overwrite)")
        if latest is not None and latest > int(state.step):
            state = checkpointer.restore_latest(state)[1]
    start = int(state.step)
    if jax.process_count() > 1:
        # Hosts that disagree on the step range would hang in a collective; fail instead.
        multihost_utils.assert_equal(
            np.array([start, num_steps]), "fit: processes disagree on (start step, num_steps)"
        )
    vote = StopVote(trainer.mesh, stop_check_every)
    save_every = save_every or getattr(checkpointer, "save_every", 0) or 0
    bar = None
    if progress and jax.process_index() == 0 and start < num_steps:
        from tqdm.auto import tqdm  # only when a bar is shown

        bar = tqdm(total=num_steps, initial=start, desc=trainer.fit_label(), dynamic_ncols=True)
    stage = stage or stage_name(checkpointer)
    latest_good = None if checkpointer is None else checkpointer.latest_step()
    first_bad_steps = _first_bad_steps_on(trainer.mesh)
    bad: jax.Array | None = None  # shaped like the loss (one, or [M]) at the first step
    pending: tuple[int, dict, int, jax.Array | None] | None = None
    seen = 0  # examples (of one model) dispatched so far in this call
    last_time, last_seen = time.perf_counter(), 0

    def check_finite(bad_then: jax.Array | None) -> None:
        if bad_then is None:
            return
        steps = np.asarray(bad_then.addressable_data(0))  # replicated: any shard
        if (steps >= 0).any():
            first = int(steps[steps >= 0].min())
            flush()  # the log shows the delayed metrics up to the non-finite step
            if bar is not None:
                bar.close()
            if checkpointer is not None:
                checkpointer.wait()  # the last good checkpoint is complete on disk
            raise non_finite_error(first, trainer.fit_where(stage, steps, first), checkpointer,
                                   latest_good)

    def flush() -> None:
        nonlocal pending, last_time, last_seen
        if pending is None:
            return
        (step, metrics, seen_then, bad_then), pending = pending, None
        models = trainer.fit_metrics({k: np.asarray(v)
                                      for k, v in jax.device_get(metrics).items()})
        now = time.perf_counter()
        rate = (seen_then - last_seen) / max(now - last_time, 1e-9)
        last_time, last_seen = now, seen_then
        # strict=False: writers may be fewer than the models (None or missing: not logged)
        for writer, values in zip(metrics_writers, models, strict=False):
            if writer is not None:
                writer(step, {**values, "examples_per_s": rate})
        if bar is not None:
            loss = float(np.mean([values["loss"] for values in models]))
            bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{rate * len(models):.1f}")
        check_finite(bad_then)

    def save(done: int) -> None:
        nonlocal latest_good
        check_finite(bad)  # never save a state that a non-finite step produced
        if checkpointer.save(done, state, force=True):
            latest_good = done

    with SigtermFlag() as sigterm:
        for step in range(start, num_steps):
            batch, rows = trainer.fit_batch(batch_fn(step))
            state, metrics = trainer.train_step(state, batch, rng)
            seen += rows
            done = step + 1
            if bad is None:
                bad = jax.device_put(np.full(metrics["loss"].shape, -1, np.int32),
                                     replicated(trainer.mesh))
            bad = first_bad_steps(bad, np.int32(done), metrics["loss"], metrics["grad_norm"])
            flush()  # the previous step's metrics: ready by now without blocking this one
            if log_every and (done % log_every == 0 or done == num_steps):
                pending = (done, metrics, seen, bad)
            if bar is not None:
                bar.update(1)
            if checkpointer is not None and save_every and done % save_every == 0:
                save(done)
            if vote.should_stop(done, sigterm.raised):
                flush()
                if checkpointer is not None:
                    save(done)
                    checkpointer.wait()
                if bar is not None:
                    bar.close()
                if jax.process_index() == 0:
                    # one line, not the tracebacks of every thread a KeyboardInterrupt would hit
                    where = (f"checkpoint at step {checkpointer.latest_step()}"
                             if checkpointer is not None else
                             f"at step {done}, no checkpoint (checkpoint.every is 0)")
                    print(f"interrupted, {where}", file=sys.stderr, flush=True)
                raise SystemExit(130 if sigterm.signum == signal.SIGINT else 143)
        flush()
        check_finite(bad)
    if bar is not None:
        bar.close()
    if checkpointer is not None and int(state.step) > start:
        save(int(state.step))
        checkpointer.wait()
    return state
