"""Deterministic batches: pure in (seed, step), epochs reshuffle, buckets, process slices."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxpet.data.batching import (
    Batcher,
    batch_indices,
    bucket_length,
    epoch_permutation,
    trim_to_bucket,
)
from jaxpet.engine.sharding import make_mesh


def _arrays(n: int = 10, seq: int = 12) -> dict[str, np.ndarray]:
    lengths = np.arange(n) % 7 + 3
    att = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": np.arange(n)[:, None] * 100 + np.arange(seq)[None] * att,
            "attention_mask": att, "labels": np.arange(n)}


def test_batch_indices_cover_each_epoch_once_and_reshuffle():
    n, bs, seed = 10, 4, 3
    stream = np.concatenate([batch_indices(s, bs, n, seed) for s in range(5)])  # 2 epochs
    assert sorted(stream[:10]) == list(range(n)) and sorted(stream[10:20]) == list(range(n))
    assert not np.array_equal(stream[:10], stream[10:20])
    np.testing.assert_array_equal(stream[:10], epoch_permutation(n, seed, 0))
    # Pure function of (seed, step): any order of calls gives the same batch.
    np.testing.assert_array_equal(batch_indices(3, bs, n, seed), stream[12:16])
    assert not np.array_equal(batch_indices(0, bs, n, seed + 1), stream[:4])
    assert sorted(batch_indices(0, 25, n, seed)[:20]) == sorted(list(range(n)) * 2)


def test_bucketing():
    assert bucket_length(5, (8, 16)) == 8 and bucket_length(8, (16, 8)) == 8
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_length(17, (8, 16))
    arrays = _arrays()
    trimmed = trim_to_bucket({k: v[:3] for k, v in arrays.items()}, (4, 8))  # lengths 3, 4, 5
    assert trimmed["input_ids"].shape == (3, 8) and trimmed["attention_mask"].shape == (3, 8)
    assert trimmed["labels"].shape == (3,)
    assert trimmed["attention_mask"].sum() == arrays["attention_mask"][:3].sum()
    # No bucket holds length 9: the full length (12) is used.
    assert trim_to_bucket(arrays, (4, 8))["input_ids"].shape[1] == 12


def test_groups_share_one_bucket_and_are_deterministic():
    a, b = _arrays(10), _arrays(6)
    batcher = Batcher(groups={"": (a, 4, 0), "unlabeled_": (b, 2, 1)}, buckets=(4, 8))
    batch = batcher(7)
    again = Batcher(groups={"": (a, 4, 0), "unlabeled_": (b, 2, 1)}, buckets=(4, 8))(7)
    assert batch.keys() == again.keys()
    for k in batch:
        np.testing.assert_array_equal(batch[k], again[k])
    assert batch["input_ids"].shape[1] == batch["unlabeled_input_ids"].shape[1]
    np.testing.assert_array_equal(batch["labels"], batch_indices(7, 4, 10, 0))
    np.testing.assert_array_equal(batch["unlabeled_labels"], batch_indices(7, 2, 6, 1))


def test_process_local_rows_are_this_process_slice():
    mesh = make_mesh(data=4, fsdp=2)
    assert jax.process_count() == 1
    whole = Batcher(_arrays(), 8, seed=0, buckets=(4, 8), mesh=mesh)
    np.testing.assert_array_equal(whole(2)["labels"], batch_indices(2, 8, 10, 0))
    with pytest.raises(ValueError, match="not divisible"):
        Batcher(_arrays(), 6, seed=0, mesh=mesh)
