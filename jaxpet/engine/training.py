"""Train state, the compiled (sharded, donated) train step, the fit loop and batched prediction.

Determinism: the step's rng is `fold_in(rng, state.step)` computed inside the compiled step
(`rng` is the run's base key, `jax.random.key(seed)`), and `batch_fn(step)` must be a pure
function of (seed, step); so restoring (step, params, opt_state) from a checkpoint resumes a
run exactly. Mixed precision: params and optimizer state stay float32; with
`compute_dtype=jnp.bfloat16` the loss sees a bfloat16 copy of the floating params (its gradient
flows back to the float32 masters). A model built with dtype=bfloat16 does the same by itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpet.engine.sharding import (
    batch_divisor,
    batch_sharding,
    global_batch,
    param_shardings,
    place,
    process_batch_slice,
    replicated,
)

# XLA options that halve CPU compile times (slower code): for tests and quick CPU runs.
FAST_CPU_COMPILE: dict[str, Any] = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}

LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _global_norm(tree: Any) -> jax.Array:
    return optax.tree.norm(jax.tree.map(lambda g: g.astype(jnp.float32), tree))


def _cast_floating(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


class Trainer:
    """Holds the loss, optimizer and layout; `train_step` is jitted once per batch shape.

    loss_fn(params, batch, rng) -> (loss, aux dict of scalars). learning_rate_fn(step) (see
    jaxpet.engine.optim.make_learning_rate_fn) adds the learning rate to the metrics.
    compiler_options
    go to jax.jit (e.g. FAST_CPU_COMPILE for quick CPU tests).
    Metrics per step: loss, grad_norm (before clipping), learning_rate, and every aux entry.
    """

    def __init__(
        self,
        loss_fn: LossFn,
        optimizer: optax.GradientTransformation,
        mesh: Mesh,
        param_sharding: Any = None,
        compute_dtype: Any = jnp.float32,
        learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
        compiler_options: dict[str, Any] | None = None,
    ) -> None:
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.mesh = mesh
        self.param_sharding = param_sharding
        self.compute_dtype = compute_dtype
        self.learning_rate_fn = learning_rate_fn
        self.compiler_options = compiler_options
        self.state_sharding: TrainState | None = None
        self._train_step: Callable | None = None

    def state_shardings(self, params: Any) -> TrainState:
        """Shardings of a TrainState for these (possibly boxed) params."""
        p_shard = self.param_sharding
        if p_shard is None:
            p_shard = param_shardings(params, self.mesh)
        abstract = jax.eval_shape(self.optimizer.init, nn.unbox(params))
        opt_shard = optax.tree_map_params(
            self.optimizer,
            lambda _, s: s,
            abstract,
            p_shard,
            transform_non_params=lambda _: replicated(self.mesh),
        )
        return TrainState(step=replicated(self.mesh), params=p_shard, opt_state=opt_shard)

    def init(self, params: Any) -> TrainState:
        """A fresh TrainState at step 0, params placed with their shardings (copied, not moved)."""
        shardings = self.state_shardings(params)
        self.state_sharding = shardings
        params = place(params, shardings.params)
        opt_state = jax.jit(self.optimizer.init, out_shardings=shardings.opt_state)(params)
        step = jax.device_put(np.zeros((), np.int32), shardings.step)
        return TrainState(step=step, params=params, opt_state=opt_state)

    def _step(self, state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)

        def loss_of(params: Any) -> tuple[jax.Array, dict]:
            if self.compute_dtype != jnp.float32:
                params = _cast_floating(params, self.compute_dtype)
            loss, aux = self.loss_fn(params, batch, step_rng)
            return loss.astype(jnp.float32), aux

        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": _global_norm(grads)}
        if self.learning_rate_fn is not None:
            metrics["learning_rate"] = jnp.asarray(self.learning_rate_fn(state.step), jnp.float32)
        metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in aux.items()})
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def train_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One update on a global (batch-sharded) batch; `state` is donated."""
        if self._train_step is None:
            if self.state_sharding is None:
                raise RuntimeError("call Trainer.init (or fit) before train_step")
            rep = replicated(self.mesh)
            self._train_step = jax.jit(
                self._step,
                in_shardings=(self.state_sharding, batch_sharding(self.mesh), rep),
                out_shardings=(self.state_sharding, rep),
                donate_argnums=0,
                compiler_options=self.compiler_options,
            )
        return self._train_step(state, batch, rng)

    def compiled_text(self, state: TrainState, batch: Mapping[str, jax.Array],
                      rng: jax.Array) -> str:
        """The optimized HLO of train_step for these arguments (for profiles; state is kept)."""
        if self._train_step is None:
            raise RuntimeError("call train_step once before asking for its compiled text")
        return self._train_step.lower(state, batch, rng).compile().as_text()

    def compiled_programs(self) -> int:
        """How many programs train_step has compiled so far (one per batch shape)."""
        return 0 if self._train_step is None else self._train_step._cache_size()


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


MetricsWriter = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(ValueError):
    """Training produced a NaN or infinite loss or gradient norm; the run stops there."""


@jax.jit
def _first_bad_step(bad: jax.Array, done: jax.Array, loss: jax.Array,
                    grad_norm: jax.Array) -> jax.Array:
    # the first step (1-based, as metrics.jsonl counts) whose loss or gradient is not finite;
    # -1 while all are. Dispatched after every step and read only with the delayed metrics
    # or before a checkpoint, so it never makes the host wait for the device.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return jnp.where((bad < 0) & ~finite, done, bad)


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


def fit(
    trainer: Trainer,
    state: TrainState,
    batch_fn: Callable[[int], Mapping[str, np.ndarray]],
    num_steps: int,
    *,
    seed: int,
    checkpointer: Any = None,
    save_every: int = 0,
    log_every: int = 50,
    metrics_writer: MetricsWriter | None = None,
    progress: bool = True,
    stop_check_every: int = 1,
    stage: str | None = None,
) -> TrainState:
    """Runs train steps state.step .. num_steps-1 and returns the final state.

    batch_fn(step) gives this process's rows of the global batch for `step` (a pure function
    of (seed, step), e.g. a jaxpet.data.batching.Batcher). With a checkpointer, the run first
    resumes from its latest checkpoint, saves every `save_every` steps (0: use the
    checkpointer's own `save_every`) and at the end, all asynchronously. On SIGTERM (to any
    one process of a multi-host run) all processes agree on a step (see StopVote; checked every
    `stop_check_every` steps), save it, wait for the write, print "interrupted, checkpoint at
    step N" and raise SystemExit(143); a first Ctrl-C does the same with status 130. Running
    the same command again resumes there. A NaN or infinite loss or gradient norm raises
    NonFiniteLossError naming the first such step, `stage` (default: the checkpoint folder's
    parent) and the last good checkpoint; no checkpoint is saved after it. It is noticed with
    the delayed metrics, at a checkpoint or at the end. metrics_writer(step, metrics)
    receives the metrics of every `log_every`-th step (and the last), one step late so that
    logging never stalls the device. Metrics are host floats; `examples_per_s` is added.
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
    rng = jax.random.key(seed)
    show = progress and jax.process_index() == 0 and start < num_steps
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=start, desc="train", dynamic_ncols=True)
    stage = stage or stage_name(checkpointer)
    latest_good = None if checkpointer is None else checkpointer.latest_step()
    bad = jax.device_put(np.full((), -1, np.int32), replicated(trainer.mesh))

    def check_finite(bad_then: jax.Array) -> None:
        first = int(np.asarray(bad_then.addressable_data(0)))  # replicated: any shard
        if first >= 0:
            flush()  # the log shows the delayed metrics up to the non-finite step
            if bar is not None:
                bar.close()
            if checkpointer is not None:
                checkpointer.wait()  # the last good checkpoint is complete on disk
            raise non_finite_error(first, stage, checkpointer, latest_good)

    def save(done: int, force: bool = False) -> None:
        nonlocal latest_good
        check_finite(bad)  # never save a state that a non-finite step produced
        if checkpointer.save(done, state, force=force):
            latest_good = done

    pending: tuple[int, dict, int, jax.Array] | None = None
    seen = 0  # examples dispatched so far in this call
    last_time, last_seen = time.perf_counter(), 0

    def flush() -> None:
        nonlocal pending, last_time, last_seen
        if pending is None:
            return
        step, metrics, seen_then, bad_then = pending
        pending = None
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        values["examples_per_s"] = (seen_then - last_seen) / max(now - last_time, 1e-9)
        last_time, last_seen = now, seen_then
        if metrics_writer is not None:
            metrics_writer(step, values)
        if bar is not None:
            bar.set_postfix(loss=f"{values['loss']:.4f}", ex_s=f"{values['examples_per_s']:.1f}")
        check_finite(bad_then)

    with SigtermFlag() as sigterm:
        for step in range(start, num_steps):
            local = batch_fn(step)
            batch = global_batch(local, trainer.mesh)
            state, metrics = trainer.train_step(state, batch, rng)
            seen += next(iter(batch.values())).shape[0]
            done = step + 1
            bad = _first_bad_step(bad, np.int32(done), metrics["loss"], metrics["grad_norm"])
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
                    save(done, force=True)
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
        save(int(state.step), force=True)
        checkpointer.wait()
    return state


# One jitted program per (function, mesh): repeated evaluation never re-traces.
_PREDICT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _jitted_predict(apply_fn: Callable, mesh: Mesh) -> Callable:
    per_mesh = _PREDICT_CACHE.setdefault(apply_fn, {})
    if mesh not in per_mesh:
        # Several processes: replicate the outputs inside the program, so that every process
        # can read the whole batch without another collective.
        out = batch_sharding(mesh) if jax.process_count() == 1 else replicated(mesh)
        per_mesh[mesh] = jax.jit(apply_fn, out_shardings=out)
    return per_mesh[mesh]


def predict(
    apply_fn: Callable[[Any, Mapping[str, jax.Array]], jax.Array],
    params: Any,
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    mesh: Mesh,
) -> np.ndarray:
    """apply_fn(params, batch) -> [B, ...] over all N rows of `arrays` -> numpy [N, ...].

    Every process passes all N rows (it keeps only its part of each batch) and gets all N
    outputs, each example exactly once, identical on every process. The last partial
    batch is filled up with copies of the last row, whose outputs are then dropped, so nothing
    is lost and one program serves every batch. batch_size is rounded up to a multiple of the
    mesh's batch shards. Arrays keep their length: trim them (jaxpet.data.batching) beforehand.
    """
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    num_rows = {len(v) for v in arrays.values()}
    if len(num_rows) != 1:
        raise ValueError(f"predict: arrays have different numbers of rows: {num_rows}")
    n = num_rows.pop()
    divisor = batch_divisor(mesh)
    batch_size = -(-max(1, min(batch_size, n)) // divisor) * divisor
    fn = _jitted_predict(apply_fn, mesh)
    local = process_batch_slice(mesh, batch_size)
    outputs = []
    for start in range(0, n, batch_size):
        idx = np.minimum(np.arange(start, start + batch_size), n - 1)
        batch = global_batch({k: v[idx][local] for k, v in arrays.items()}, mesh)
        outputs.append((fn(params, batch), min(batch_size, n - start)))
    results = [np.asarray(out)[:valid] for out, valid in outputs]
    if not results:
        return np.zeros((0,), np.float32)
    return np.concatenate(results, axis=0)


def prediction_sharding(mesh: Mesh) -> NamedSharding:
    """Where predict's per-batch outputs live (split over the batch axes; replicated when
    several processes share the mesh)."""
    return batch_sharding(mesh) if jax.process_count() == 1 else replicated(mesh)
