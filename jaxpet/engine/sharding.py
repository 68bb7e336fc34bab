"""Device mesh, parameter partition rules and global-batch assembly (single- and multi-host).

Layout policy lives here and nowhere else:

* the mesh has axes ("member", "data", "fsdp", "tensor"); a size of -1 takes all remaining
  devices. Axes are `AxisType.Auto`, because Flax Linen's logical constraints are hints;
* parameters are sharded from the models' logical axis names through `DEFAULT_RULES`
  ("embed" -> "fsdp", "mlp"/"heads"/"vocab" -> "tensor"); a parameter without logical names
  falls back to a shape rule: its largest dimension divisible by the fsdp size is sharded over
  "fsdp" (kernels only, i.e. ndim >= 2). A dimension that a mesh axis does not divide is
  replicated instead of failing;
* the batch is split over ("data", "fsdp") and replicated over "member" and "tensor";
* each process builds only its own rows of the global batch (`process_batch_slice`), and
  `global_batch` assembles them with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpet.config import Config

MESH_AXES: tuple[str, ...] = ("member", "data", "fsdp", "tensor")
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")

# Logical axis name -> mesh axis (or tuple of axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("joined_kv", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("layers", None),
    ("length", None),
)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    member: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh with axes ("member", "data", "fsdp", "tensor"); at most one size may be -1."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"member": member, "data": data, "fsdp": fsdp, "tensor": tensor}
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: only one axis may have size -1, got {sizes}")
    bad = {name: size for name, size in sizes.items() if size == 0 or size < -1}
    if bad:
        raise ValueError(f"mesh: axis sizes must be positive or -1, got {bad}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(
                f"mesh: {len(devices)} devices are not divisible by the fixed axes {sizes}"
            )
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"mesh: axis sizes {sizes} do not multiply to {len(devices)} devices")
    shape = tuple(sizes[name] for name in MESH_AXES)
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        return mesh.shape[axes]
    return math.prod(mesh.shape[a] for a in axes)


def _fit_spec(spec: Sequence[Any], shape: Sequence[int], mesh: Mesh) -> P:
    """Drops mesh axes that do not divide their dimension or that an earlier dim already uses."""
    used: set[str] = set()
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        names = tuple(a for a in names if a in mesh.shape and a not in used)
        if not names or _axis_size(mesh, names) == 1 or dim % _axis_size(mesh, names):
            fitted.append(None)
            continue
        used.update(names)
        fitted.append(names[0] if len(names) == 1 else names)
    return P(*fitted)


def fsdp_spec(shape: Sequence[int], mesh: Mesh) -> P:
    """Shape rule: shard the largest dim divisible by the fsdp size; vectors stay replicated."""
    size = mesh.shape.get("fsdp", 1)
    if len(shape) < 2 or size == 1:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if shape[i] % size == 0:
            spec = [None] * len(shape)
            spec[i] = "fsdp"
            return P(*spec)
    return P()


def _logical_to_mesh(names: Sequence[str | None], rules: Sequence[tuple[str, Any]]) -> list:
    table = dict(rules)
    return [table.get(name) if name is not None else None for name in names]


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.LogicallyPartitioned | nn.Partitioned)


def param_shardings(
    params: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
    logical_names: Any = None,
) -> Any:
    """NamedSharding for every parameter (the returned tree has the unboxed structure).

    params: boxed params straight from `module.init` (nn.LogicallyPartitioned leaves), plain
    arrays, or ShapeDtypeStructs. logical_names: optional tree of logical-name tuples (same
    structure as the unboxed params) for plain params, e.g. from `logical_names_of(module, ...)`.
    Leaves without names use the fsdp shape rule.
    """

    def one(leaf: Any, names: Any) -> NamedSharding:
        if isinstance(leaf, nn.LogicallyPartitioned):
            spec = _logical_to_mesh(leaf.names, rules)
            shape = leaf.value.shape
        elif isinstance(leaf, nn.Partitioned):
            spec, shape = list(leaf.names), leaf.value.shape
        elif names is not None:
            spec, shape = _logical_to_mesh(names, rules), leaf.shape
        else:
            return NamedSharding(mesh, fsdp_spec(leaf.shape, mesh))
        return NamedSharding(mesh, _fit_spec(spec, shape, mesh))

    if logical_names is None:
        return jax.tree.map(lambda leaf: one(leaf, None), params, is_leaf=_is_box)
    return jax.tree.map(
        one, params, logical_names, is_leaf=lambda x: _is_box(x) or isinstance(x, tuple)
    )


def place(tree: Any, shardings: Any) -> Any:
    """A copy of `tree` (boxed or plain, on any devices) put on the mesh with `shardings` (a
    tree of the unboxed structure). The copy goes through the host, so the caller's arrays stay
    valid even when the placed ones are later donated."""
    host = jax.tree.map(np.asarray, jax.device_get(nn.unbox(tree)))
    return jax.tree.map(jax.device_put, host, shardings)


def logical_names_of(module: nn.Module, *init_args: Any, **init_kwargs: Any) -> Any:
    """Tree of logical axis-name tuples (None where a param has none) from an abstract init."""
    boxed = jax.eval_shape(
        lambda: module.init(jax.random.key(0), *init_args, **init_kwargs)["params"]
    )
    return jax.tree.map(
        lambda x: tuple(x.names) if isinstance(x, nn.LogicallyPartitioned) else None,
        boxed,
        is_leaf=_is_box,
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dim split over ("data", "fsdp"); other dims replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_divisor(mesh: Mesh) -> int:
    """A global batch size must be a multiple of this (the number of batch shards)."""
    return _axis_size(mesh, BATCH_AXES)


def process_batch_slice(mesh: Mesh, global_batch_size: int) -> slice:
    """The rows of a global batch that this process must supply (contiguous by construction)."""
    if global_batch_size % batch_divisor(mesh):
        raise ValueError(
            f"batch size {global_batch_size} is not divisible by the {batch_divisor(mesh)} "
            f"batch shards of the mesh {dict(mesh.shape)}"
        )
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    rows = [idx[0].indices(global_batch_size) for idx in index_map.values()]
    starts, stops = [r[0] for r in rows], [r[1] for r in rows]
    start, stop = min(starts), max(stops)
    covered = sum(
        b - a for a, b in sorted(set(zip(starts, stops, strict=True)))
    )
    if covered != stop - start:
        raise ValueError(
            "this process's batch rows are not contiguous; build the mesh with make_mesh"
        )
    return slice(start, stop)


def global_batch(process_local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global jax.Arrays (batch-sharded) from this process's rows of every array."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in process_local_batch.items()
    }


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _device_ids(value: Any, source: str) -> list[int] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{source}: expected comma-separated device ids, got {value!r}") from None


def distributed_settings(cfg: Any = None) -> dict[str, Any] | None:
    """The keyword arguments for jax.distributed.initialize, or None when not asked for.

    Config fields win over the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID, JAX_LOCAL_DEVICE_IDS, as tpu/gpu_launch.sh sets them). Distributed JAX is
    asked for by `enabled: true`, by JAXPET_DISTRIBUTED=1, or by a coordinator address; unset
    keys are left to JAX's own cluster detection (Cloud TPU, Slurm, Kubernetes...).
    """
    address = _get(cfg, "coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    enabled = _get(cfg, "enabled")
    if enabled is None:
        enabled = bool(address) or os.environ.get("JAXPET_DISTRIBUTED", "0") == "1"
    if not enabled:
        return None
    num_processes = _get(cfg, "num_processes")
    process_id = _get(cfg, "process_id")
    local_ids = _device_ids(_get(cfg, "local_device_ids"), "distributed.local_device_ids")
    kwargs = {
        "coordinator_address": address or None,
        "num_processes": _env_int("JAX_NUM_PROCESSES") if num_processes is None else num_processes,
        "process_id": _env_int("JAX_PROCESS_ID") if process_id is None else process_id,
        "local_device_ids": local_ids
        if local_ids is not None
        else _device_ids(os.environ.get("JAX_LOCAL_DEVICE_IDS"), "JAX_LOCAL_DEVICE_IDS"),
    }
    return {k: (int(v) if k in ("num_processes", "process_id") else v)
            for k, v in kwargs.items() if v is not None}


def maybe_initialize_distributed(cfg: Any = None) -> bool:
    """Calls jax.distributed.initialize when the config or the environment asks for it.

    cfg (a mapping or object, e.g. the `distributed` config section) may hold `enabled`,
    `coordinator_address`, `num_processes`, `process_id`, `local_device_ids`; see
    `distributed_settings` for the environment variables. On a Cloud TPU VM, `enabled: true`
    (or JAXPET_DISTRIBUTED=1) alone suffices: JAX finds its peers itself. CPU processes
    exchange collectives through gloo. Must run before any other JAX call. Returns True when
    distributed JAX is (now) initialised.
    """
    if jax.distributed.is_initialized():
        return True
    kwargs = distributed_settings(cfg)
    if kwargs is None:
        return False
    # Only the CPU backend uses this; without it CPU processes cannot run cross-process programs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True


def build_mesh(config: Config) -> Mesh:
    """The run's mesh from its `mesh` section (mesh.data 0 = every device)."""
    devices = jax.devices()
    if config.mesh.data > 0:
        devices = devices[: config.mesh.data * config.mesh.fsdp * config.mesh.tensor]
    return make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor,
                     devices=devices)


def check_batch_sizes(mesh: Mesh, sizes: Mapping[str, int]) -> None:
    """Every global batch must split evenly over the mesh's batch shards."""
    shards = batch_divisor(mesh)
    for key, size in sizes.items():
        if size % shards:
            raise ValueError(f"config key '{key}' = {size} is not a multiple of the {shards} batch "
                             f"shards of the mesh (mesh.data x mesh.fsdp); change one of them")
