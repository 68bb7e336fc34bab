"""Ensemble-parallel training: M same-shaped members (pattern x seed) in one compiled step.

Parameters and optimizer state carry a leading member axis [M, ...]; the step is `jax.vmap` of
`jaxpet.engine.training.Trainer`'s own single-member step, jitted with explicit shardings and a
donated
state. The member axis is split over the mesh's "member" axis (M a multiple of its size), the
usual data/fsdp/tensor layout applies inside each member; with a member axis of size 1 the
members are vmapped on the same devices. Member m has its own base key jax.random.key(seed_m)
(folded with the step, as in `fit`), its own global batch batch_fn_m(step) and its own
constants (verbalizer ids) which travel in the batch, stacked [M, ...] (`constant_keys`).
Batches must share shapes: sequence arrays are padded to the longest member's length at each
step (attention mask 0). That leaves the loss as it is but changes the random MLM/dropout draws
against the unpadded batch, so `train_members` pads the same way in every mode. Vmapped matrix
products may round differently, so results equal sequential training to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpet.engine.batch_keys import is_sequence_key
from jaxpet.engine.fit import MetricsWriter, fit_loop
from jaxpet.engine.sharding import BATCH_AXES, process_batch_slice, replicated
from jaxpet.engine.training import LossFn, Trainer, TrainState, fit

MEMBER_AXIS = "member"
DEFAULT_CONSTANT_KEYS: tuple[str, ...] = ("verbalizer_ids",)
LearningRateFn = Callable[[jax.Array], jax.Array]
BatchFn = Callable[[int], Mapping[str, np.ndarray]]
# Padding of sequence arrays by key suffix; input_ids (and anything unknown) use pad_id.
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}
# Padded with -1 (an unused mask slot, a padding verbalizer word) to the widest member.
_PAD_WIDTH = ("mask_positions", "verbalizer_ids")


def _member_sharding(sharding: NamedSharding) -> NamedSharding:  # [M, ...] over "member"
    return NamedSharding(sharding.mesh, P(MEMBER_AXIS, *sharding.spec))


def stack_trees(trees: Sequence[Any]) -> Any:
    """Host numpy pytree with a leading member axis from M same-shaped (boxed) pytrees."""
    return jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(nn.unbox(list(trees))))


def member_keys(seeds: Sequence[int]) -> jax.Array:
    """[M] base keys, member m's being jax.random.key(seeds[m]) as `fit` uses it."""
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


def stack_member_batches(
    batches: Sequence[Mapping[str, np.ndarray]], pad_id: int = 0,
    constant_keys: Sequence[str] = DEFAULT_CONSTANT_KEYS,
) -> dict[str, np.ndarray]:
    """[M, ...] arrays from M member batches; sequence arrays padded to the longest length,
    mask_positions and verbalizer_ids to the widest with -1."""
    keys = set(batches[0])
    for m, batch in enumerate(batches):
        if set(batch) != keys:
            raise ValueError(f"member {m}'s batch has keys {sorted(batch)}, member 0's "
                             f"{sorted(keys)}; members must provide the same arrays")
    out = {}
    for key in sorted(keys):
        arrays = [np.asarray(b[key]) for b in batches]
        value = -1 if key in _PAD_WIDTH else None
        if is_sequence_key(key) and key not in constant_keys:
            value = next((v for end, v in _PAD_VALUES.items() if key.endswith(end)), pad_id)
        # Pads axes 1.. to the largest size; rows (axis 0) and ranks must agree.
        if value is not None and len({(a.ndim, a.shape[:1]) for a in arrays}) == 1:
            widths = np.max([a.shape for a in arrays], axis=0)
            arrays = [np.pad(a, [(0, w - d) for w, d in zip(widths, a.shape, strict=True)],
                             constant_values=value) for a in arrays]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"batch array {key!r} has different shapes across members "
                             f"({[a.shape for a in arrays]}); ensemble members must share shapes")
        out[key] = np.stack(arrays)
    return out


def constants_from_batch(build: Callable[..., LossFn], keys: Sequence[str]) -> LossFn:
    """loss_fn that builds the member's loss inside the trace as build(*batch[keys]) and gives
    it the batch without those keys (so per-member constants need no closure)."""

    def loss_fn(params: Any, batch: Mapping[str, jax.Array], rng: jax.Array):
        if missing := [k for k in keys if k not in batch]:
            raise KeyError(f"the batch lacks the per-member constants {missing}")
        loss = build(*(batch[k] for k in keys))
        return loss(params, {k: v for k, v in batch.items() if k not in keys}, rng)

    return loss_fn


def with_constants(loss_fn: LossFn, constants: Mapping[str, Any]) -> LossFn:
    """loss_fn with fixed constants merged into every batch (for the plain Trainer)."""
    fixed = {k: jnp.asarray(v) for k, v in constants.items()}
    return lambda params, batch, rng: loss_fn(params, {**batch, **fixed}, rng)


class EnsembleTrainer:
    """Trains `num_members` members in one jitted, vmapped step; state leaves are [M, ...].

    loss_fn, optimizer, param_sharding (one member's), compute_dtype, learning_rate_fn and
    compiler_options mean what they mean for jaxpet.engine.training.Trainer; the vmapped step
    compiles
    with the member Trainer's compiler_options, so that it computes what the member's own step
    computes (other XLA options round differently). Metrics come back as [M] arrays, on every
    device (so every process of a multi-host run reads them all).
    """

    def __init__(self, loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh,
                 num_members: int, param_sharding: Any = None, compute_dtype: Any = jnp.float32,
                 learning_rate_fn: LearningRateFn | None = None,
                 constant_keys: Sequence[str] = DEFAULT_CONSTANT_KEYS,
                 compiler_options: dict[str, Any] | None = None) -> None:
        shards = mesh.shape.get(MEMBER_AXIS, 1)
        if num_members < 1 or num_members % shards:
            raise ValueError(f"num_members={num_members} must be a positive multiple of the "
                             f"mesh's member axis size {shards}")
        self.member = Trainer(loss_fn, optimizer, mesh, param_sharding, compute_dtype,
                              learning_rate_fn, compiler_options=compiler_options)
        self.mesh, self.num_members = mesh, num_members
        self.constant_keys = tuple(constant_keys)
        self.member_sharding = NamedSharding(mesh, P(MEMBER_AXIS))  # [M] keys
        self.state_sharding: TrainState | None = None
        self._steps: dict[tuple[str, ...], Callable] = {}
        self._unstack: Callable | None = None

    def state_shardings(self, params: Any) -> TrainState:
        """Shardings of the stacked state for one member's (possibly boxed) params."""
        single = self.member.state_shardings(params)
        self.member.state_sharding = single
        stacked = jax.tree.map(_member_sharding, (single.params, single.opt_state))
        return TrainState(step=replicated(self.mesh), params=stacked[0], opt_state=stacked[1])

    def init(self, member_params: Sequence[Any]) -> TrainState:
        """Step-0 state from M per-member param trees (e.g. [lm.params] * M), placed sharded."""
        if len(member_params) != self.num_members:
            raise ValueError(f"init: {len(member_params)} param trees, {self.num_members} members")
        self.state_sharding = shardings = self.state_shardings(member_params[0])
        params = jax.tree.map(jax.device_put, stack_trees(member_params), shardings.params)
        opt_state = jax.jit(jax.vmap(self.member.optimizer.init),
                            out_shardings=shardings.opt_state)(params)
        step = jax.device_put(np.zeros((), np.int32), shardings.step)
        return TrainState(step, params, opt_state)

    def _step(self, state: TrainState, batch: Mapping[str, jax.Array], rng_M: jax.Array):
        def one(params: Any, opt_state: Any, batch_m: Any, rng_m: jax.Array):
            new, metrics = self.member._step(TrainState(state.step, params, opt_state),
                                             batch_m, rng_m)
            return new.params, new.opt_state, metrics

        # spmd_axis_name keeps the members split over "member" inside sharding constraints.
        params, opt_state, metrics = jax.vmap(one, spmd_axis_name=MEMBER_AXIS)(
            state.params, state.opt_state, batch, rng_M)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def batch_sharding(self, key: str) -> NamedSharding:
        """[M, B, ...] split over member and batch axes; constants [M, ...] over member only."""
        if key in self.constant_keys:
            return self.member_sharding
        return NamedSharding(self.mesh, P(MEMBER_AXIS, BATCH_AXES))

    def global_batch(self, stacked: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global jax.Arrays from the full [M, ...] host arrays (each process keeps its part)."""
        out = {}
        for key, value in ((k, np.asarray(v)) for k, v in stacked.items()):
            if value.shape[0] != self.num_members:
                raise ValueError(f"batch array {key!r} has {value.shape[0]} members, "
                                 f"expected {self.num_members}")
            out[key] = jax.make_array_from_callback(
                value.shape, self.batch_sharding(key), lambda idx, v=value: v[idx])
        return out

    def train_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], rng_M: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One update of every member; `state` is donated, rng_M from `member_keys`."""
        if self.state_sharding is None:
            raise RuntimeError("call EnsembleTrainer.init (or fit_ensemble) before train_step")
        names = tuple(sorted(batch))
        if names not in self._steps:
            member, batch_shardings = self.member_sharding, {k: self.batch_sharding(k)
                                                             for k in names}
            # [M] metrics replicated, as Trainer's: every process reads every member's
            self._steps[names] = jax.jit(
                self._step, in_shardings=(self.state_sharding, batch_shardings, member),
                out_shardings=(self.state_sharding, replicated(self.mesh)), donate_argnums=0,
                compiler_options=self.member.compiler_options)
        return self._steps[names](state, dict(batch), rng_M)

    def compiled_programs(self) -> int:
        """Programs train_step has compiled so far (one per batch shape)."""
        return sum(f._cache_size() for f in self._steps.values())

    # What jaxpet.engine.fit.fit_loop asks of a trainer (FitTrainer), for M stacked members:
    def fit_batch(self, host: Mapping[str, np.ndarray]) -> tuple[dict[str, jax.Array], int]:
        """The full stacked [M, ...] host batch -> global arrays, and one member's examples."""
        rows = next(v.shape[1] for k, v in host.items() if k not in self.constant_keys)
        return self.global_batch(host), rows

    def fit_metrics(self, host: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
        return [{k: float(v[m]) for k, v in host.items()} for m in range(self.num_members)]

    def fit_where(self, stage: str, bad_steps: np.ndarray, first: int) -> str:
        members = ", ".join(str(m) for m in np.flatnonzero(bad_steps == first))
        return f"{stage} (member {members})"

    def fit_label(self) -> str:
        return f"train x{self.num_members}"

    def unstack(self, state: TrainState, m: int) -> TrainState:
        """Member m's state, laid out as the plain Trainer lays out one member (one program)."""
        if not 0 <= m < self.num_members:
            raise IndexError(f"member {m} out of range for {self.num_members} members")
        if self._unstack is None:
            single = self.member.state_sharding
            self._unstack = jax.jit(
                lambda s, i: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(
                    x, i, keepdims=False), (s.params, s.opt_state)),
                out_shardings=(single.params, single.opt_state))
        params, opt_state = self._unstack(state, jnp.asarray(m, jnp.int32))
        return TrainState(step=state.step, params=params, opt_state=opt_state)


def unstack(state: TrainState, m: int) -> Any:
    """Member m's params as host numpy arrays (single-process convenience)."""
    return jax.tree.map(lambda x: np.asarray(x[m]), jax.device_get(state.params))


def aligned_batch_fn(
    batch_fns: Sequence[BatchFn], constants: Sequence[Mapping[str, Any]] | None = None,
    pad_id: int = 0, constant_keys: Sequence[str] = DEFAULT_CONSTANT_KEYS,
) -> BatchFn:
    """step -> the stacked [M, ...] batch of every member (constants merged in, lengths aligned)."""
    constants = constants or [{} for _ in batch_fns]

    def batch(step: int) -> dict[str, np.ndarray]:
        batches = [{**fn(step), **c} for fn, c in zip(batch_fns, constants, strict=True)]
        return stack_member_batches(batches, pad_id, constant_keys)

    return batch


def fit_ensemble(
    trainer: EnsembleTrainer, state: TrainState, batch_fns: Sequence[BatchFn] | BatchFn,
    num_steps: int, *, seeds: Sequence[int], constants: Sequence[Mapping[str, Any]] | None = None,
    pad_id: int = 0, checkpointer: Any = None, save_every: int = 0, log_every: int = 50,
    metrics_writers: Sequence[MetricsWriter | None] | None = None, progress: bool = True,
    stop_check_every: int = 1, stage: str | None = None,
) -> TrainState:
    """`jaxpet.engine.training.fit` for M members: steps state.step .. num_steps-1 of all of them.

    batch_fns[m](step): member m's *global* batch (pure in its seed and step), or one function
    giving the stacked [M, ...] batch; constants[m]: e.g. {"verbalizer_ids": [L, W]}; seeds[m]:
    its rng seed. The loop is `fit`'s (jaxpet.engine.fit.fit_loop): resume, lagged logging
    (metrics_writers[m] gets member m's), SIGTERM / a first Ctrl-C agreed by every process of a
    multi-host run (save, "interrupted, checkpoint at step N", SystemExit(143) / (130)) and the
    finite-loss guard: the first step at which any member's loss or gradient norm is not
    finite raises NonFiniteLossError naming that step, `stage` (default: the checkpoint
    folder's parent) with the member index(es), and the last good checkpoint.
    """
    m_count = trainer.num_members
    if not callable(batch_fns):
        if len(batch_fns) != m_count:
            raise ValueError(f"fit_ensemble: {len(batch_fns)} batch_fns for {m_count} members")
        batch_fns = aligned_batch_fn(batch_fns, constants, pad_id, trainer.constant_keys)
    if len(seeds) != m_count:
        raise ValueError(f"fit_ensemble: {len(seeds)} seeds for {m_count} members")
    # made inside a program: a key array cannot be device_put onto other processes' devices
    rng_M = jax.jit(lambda: member_keys(seeds), out_shardings=trainer.member_sharding)()
    return fit_loop(trainer, state, batch_fns, num_steps, rng=rng_M, checkpointer=checkpointer,
                    save_every=save_every, log_every=log_every,
                    metrics_writers=list(metrics_writers or []), progress=progress,
                    stop_check_every=stop_check_every, stage=stage)


@dataclasses.dataclass
class Member:
    """One ensemble member: initial params, its global batch function, rng seed, constants."""

    params: Any
    batch_fn: BatchFn
    seed: int
    constants: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)


def train_members(
    members: Sequence[Member], loss_fn: LossFn, optimizer: optax.GradientTransformation,
    mesh: Mesh, num_steps: int, *, parallel: bool | Literal["auto"] = True,
    group_size: int | None = None, compute_dtype: Any = jnp.float32,
    learning_rate_fn: LearningRateFn | None = None, pad_id: int = 0,
    checkpointer_for: Callable[[tuple[int, ...]], Any] | None = None,
    metrics_writers: Sequence[MetricsWriter | None] | None = None, log_every: int = 50,
    progress: bool = True, compiler_options: dict[str, Any] | None = None,
) -> list[Any]:
    """Trains every member for num_steps and returns their final params, in member order.

    parallel=True: groups of `group_size` members (default: all) train as one ensemble each;
    False: one after another with the plain Trainer and `fit`; "auto": parallel, but a group
    whose step runs out of device memory (RESOURCE_EXHAUSTED) goes one by one, as does a last
    group that the member axis does not divide. Member m gets the same batches in every mode
    (lengths aligned over *all* members), so all agree to float32 rounding. loss_fn reads the
    constants from the batch (constants_from_batch). checkpointer_for(group's member indices,
    or (m,) one by one) gives that run's Checkpointer or None. compiler_options go to every
    step's jax.jit, in every mode.
    """
    keys = tuple(sorted({k for member in members for k in member.constants}))
    aligned = aligned_batch_fn([mb.batch_fn for mb in members], [mb.constants for mb in members],
                               pad_id, keys)
    writers = list(metrics_writers or [None] * len(members))
    shards = mesh.shape.get(MEMBER_AXIS, 1)
    results: dict[int, Any] = {}
    common = dict(log_every=log_every, progress=progress)  # for fit and fit_ensemble

    def one_by_one(m: int) -> None:
        trainer = Trainer(with_constants(loss_fn, members[m].constants), optimizer, mesh,
                          compute_dtype=compute_dtype, learning_rate_fn=learning_rate_fn,
                          compiler_options=compiler_options)

        def member_batch(step: int) -> dict[str, np.ndarray]:
            batch = {k: v[m] for k, v in aligned(step).items() if k not in keys}
            rows = process_batch_slice(mesh, next(iter(batch.values())).shape[0])
            return {k: v[rows] for k, v in batch.items()}

        state = fit(trainer, trainer.init(members[m].params), member_batch, num_steps,
                    seed=members[m].seed, metrics_writer=writers[m],
                    checkpointer=checkpointer_for((m,)) if checkpointer_for else None, **common)
        results[m] = state.params

    def together(group: list[int]) -> None:
        trainer = EnsembleTrainer(loss_fn, optimizer, mesh, len(group),
                                  compute_dtype=compute_dtype, learning_rate_fn=learning_rate_fn,
                                  constant_keys=keys, compiler_options=compiler_options)
        state = fit_ensemble(
            trainer, trainer.init([members[m].params for m in group]),
            lambda step: {k: v[group] for k, v in aligned(step).items()}, num_steps,
            seeds=[members[m].seed for m in group], metrics_writers=[writers[m] for m in group],
            checkpointer=checkpointer_for(tuple(group)) if checkpointer_for else None, **common)
        results.update({m: trainer.unstack(state, i).params for i, m in enumerate(group)})

    size = len(members) if group_size is None or not parallel else group_size
    if parallel and (size < 1 or size % shards):
        raise ValueError(f"group_size={size} must be a positive multiple of the mesh's member "
                         f"axis size {shards}")
    for first in range(0, len(members), max(size, 1)):
        group = list(range(first, min(first + size, len(members))))
        if parallel and len(group) % shards == 0:
            try:
                together(group)
                continue
            except Exception as err:  # members restart from their own (never donated) params
                if parallel != "auto" or "RESOURCE_EXHAUSTED" not in str(err):
                    raise
                warnings.warn(f"members {group} do not fit in device memory together; training "
                              f"them one after another ({str(err).splitlines()[0]})", stacklevel=2)
        for m in group:
            one_by_one(m)
    return [results[m] for m in range(len(members))]
