"""Deterministic batches: the batch at step s is a pure function of (seed, s), bucketed lengths.

Examples are drawn from an endless stream of epochs; epoch e is a permutation seeded by
(seed, e), so a batch may straddle two epochs and no example is ever dropped. Sequence arrays
are cut to the smallest length bucket that holds every row of the *global* batch (all groups
together, e.g. labeled and unlabeled), so a run compiles one program per bucket at most and all
processes agree on the shape. Each process then keeps only its rows of the global batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from jax.sharding import Mesh

from jaxpet.engine.batch_keys import is_sequence_key
from jaxpet.engine.sharding import process_batch_slice

DEFAULT_BUCKETS: tuple[int, ...] = (32, 64, 128, 256, 512)
def bucket_length(max_len_in_batch: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= max_len_in_batch."""
    for bucket in sorted(buckets):
        if bucket >= max_len_in_batch:
            return int(bucket)
    raise ValueError(
        f"a batch needs length {max_len_in_batch}, longer than the largest bucket {max(buckets)}"
    )


def trim_to_bucket(
    arrays: Mapping[str, np.ndarray], buckets: Sequence[int] | None
) -> dict[str, np.ndarray]:
    """Cuts every sequence array to one bucket length that keeps all attended tokens.

    The length needed is the largest (last attended position + 1) over all attention masks in
    `arrays`; the full padded length is always an allowed bucket. buckets=None: no trimming.
    """
    arrays = dict(arrays)
    seq_keys = [k for k in arrays if is_sequence_key(k)]
    if not buckets or not seq_keys:
        return arrays
    full = max(arrays[k].shape[1] for k in seq_keys)
    needed = 1
    for key in seq_keys:
        if key.endswith("attention_mask"):
            mask = np.asarray(arrays[key]).astype(bool)
            if mask.any():
                last = mask.shape[1] - np.argmax(mask[:, ::-1], axis=1)
                needed = max(needed, int(last[mask.any(axis=1)].max()))
    length = bucket_length(needed, [b for b in buckets if b <= full] + [full])
    for key in seq_keys:
        if arrays[key].shape[1] != full:
            raise ValueError(
                f"sequence array {key!r} has length {arrays[key].shape[1]}, expected {full}"
            )
        arrays[key] = arrays[key][:, :length]
    return arrays


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch; a pure function of (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples)


def batch_indices(step: int, batch_size: int, num_examples: int, seed: int) -> np.ndarray:
    """Example indices of the global batch at `step`: positions [step*B, step*B + B) of the
    endless stream epoch 0 ++ epoch 1 ++ ...; a pure function of (seed, step)."""
    if num_examples <= 0:
        raise ValueError("cannot draw batches from an empty set of examples")
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs = positions // num_examples
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        out[sel] = epoch_permutation(num_examples, seed, int(epoch))[positions[sel] % num_examples]
    return out


def _num_rows(arrays: Mapping[str, np.ndarray]) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"arrays have different numbers of rows: {sizes}")
    return next(iter(sizes.values()))


class Batcher:
    """Deterministic batches from one or several groups of arrays.

    groups: {key prefix: (arrays, global batch size, seed)}, e.g.
    {"": (labeled, 16, seed), "unlabeled_": (unlabeled, 16, seed + 1)}; or pass plain
    (arrays, batch_size, seed) for a single group without prefix. `__call__(step)` returns the
    process-local rows of every group (the whole batch when mesh is None), with sequence arrays
    of all groups cut to one common bucket length.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray] | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        buckets: Sequence[int] | None = DEFAULT_BUCKETS,
        *,
        mesh: Mesh | None = None,
        groups: Mapping[str, tuple[Mapping[str, np.ndarray], int, int]] | None = None,
    ) -> None:
        if groups is None:
            if arrays is None or batch_size is None:
                raise ValueError("Batcher needs (arrays, batch_size) or groups")
            groups = {"": (arrays, batch_size, seed)}
        self.groups = {
            prefix: ({k: np.asarray(v) for k, v in arrs.items()}, int(bs), int(sd))
            for prefix, (arrs, bs, sd) in groups.items()
        }
        self.num_rows = {p: _num_rows(a) for p, (a, _, _) in self.groups.items()}
        self.buckets = tuple(buckets) if buckets else None
        self.mesh = mesh
        self.slices = {
            p: (slice(None) if mesh is None else process_batch_slice(mesh, bs))
            for p, (_, bs, _) in self.groups.items()
        }

    def global_batch(self, step: int) -> dict[str, np.ndarray]:
        """The full global batch at `step` (every process computes the same one)."""
        out: dict[str, np.ndarray] = {}
        for prefix, (arrays, batch_size, seed) in self.groups.items():
            idx = batch_indices(step, batch_size, self.num_rows[prefix], seed)
            out.update({prefix + k: v[idx] for k, v in arrays.items()})
        return trim_to_bucket(out, self.buckets)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        batch = self.global_batch(step)
        if self.mesh is None:
            return batch
        out = {}
        for key, value in batch.items():
            prefix = max((p for p in self.groups if key.startswith(p)), key=len)
            out[key] = value[self.slices[prefix]]
        return out
