"""Train state, the compiled (sharded, donated) train step, `fit` of one model, batched prediction.

Determinism: the step's rng is `fold_in(rng, state.step)` computed inside the compiled step
(`rng` is the run's base key, `jax.random.key(seed)`), and `batch_fn(step)` must be a pure
function of (seed, step); so restoring (step, params, opt_state) from a checkpoint resumes a
run exactly. Mixed precision: params and optimizer state stay float32; with
`compute_dtype=jnp.bfloat16` the loss sees a bfloat16 copy of the floating params (its gradient
flows back to the float32 masters). A model built with dtype=bfloat16 does the same by itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

# The loop's stop and guard parts are imported from here too (their home is engine.fit).
from jaxpet.engine.fit import MetricsWriter, fit_loop
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

    # What jaxpet.engine.fit.fit_loop asks of a trainer (FitTrainer), for one model:
    def fit_batch(self, host: Mapping[str, np.ndarray]) -> tuple[dict[str, jax.Array], int]:
        """This process's rows -> the global batch, and its number of examples."""
        batch = global_batch(host, self.mesh)
        return batch, next(iter(batch.values())).shape[0]

    def fit_metrics(self, host: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
        return [{k: float(v) for k, v in host.items()}]

    def fit_where(self, stage: str, bad_steps: np.ndarray, first: int) -> str:
        return stage

    def fit_label(self) -> str:
        return "train"


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
    """Runs train steps state.step .. num_steps-1 and returns the final state (`fit_loop`).

    batch_fn(step) gives this process's rows of the global batch for `step` (a pure function
    of (seed, step), e.g. a jaxpet.data.batching.Batcher); the step's rng derives from
    jax.random.key(seed). Resume, checkpoints (every `save_every` steps, 0: the checkpointer's
    own), the SIGTERM / first Ctrl-C stop agreed by every process (SystemExit 143 / 130), the
    NonFiniteLossError guard naming `stage`, and the lagged metrics_writer(step, metrics) of
    every `log_every`-th step are jaxpet.engine.fit.fit_loop's.
    """
    return fit_loop(trainer, state, batch_fn, num_steps, rng=jax.random.key(seed),
                    checkpointer=checkpointer, save_every=save_every, log_every=log_every,
                    metrics_writers=[metrics_writer], progress=progress,
                    stop_check_every=stop_check_every, stage=stage)


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
