"""Mesh construction, partition rules (logical names and the fsdp shape rule), global batches."""

from __future__ import annotations

import flax.linen as nn
import jax
import multiprocess_worker as worker
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxpet.engine.sharding import (
    batch_sharding,
    fsdp_spec,
    global_batch,
    logical_names_of,
    make_mesh,
    param_shardings,
    process_batch_slice,
)


def test_make_mesh_sizes():
    mesh = make_mesh(data=-1, fsdp=2)
    assert dict(mesh.shape) == {"member": 1, "data": 4, "fsdp": 2, "tensor": 1}
    assert dict(make_mesh(data=1, fsdp=-1).shape)["fsdp"] == 8
    with pytest.raises(ValueError, match="only one axis"):
        make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="not divisible"):
        make_mesh(data=-1, fsdp=3)
    with pytest.raises(ValueError, match="multiply"):
        make_mesh(data=2, fsdp=2)


def test_fsdp_shape_rule():
    mesh = make_mesh(data=2, fsdp=4)
    assert fsdp_spec((6, 8), mesh) == P(None, "fsdp")   # largest divisible dim
    assert fsdp_spec((16, 8), mesh) == P("fsdp", None)
    assert fsdp_spec((6, 7), mesh) == P()                # nothing divisible
    assert fsdp_spec((64,), mesh) == P()                 # vectors stay replicated


def test_param_shardings_from_logical_names_and_fallback():
    mesh = make_mesh(data=4, fsdp=2)
    from jaxpet.models.heads import EncoderForMaskedLM

    module = EncoderForMaskedLM(worker.tiny_config())
    ids = np.ones((1, 8), np.int32)
    # Abstract params (no compile): ShapeDtypeStructs inside the logical boxes.
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, ids)["params"])
    shard = param_shardings(boxed, mesh)
    layer = shard["encoder"]["layers"]["layer"]
    # [layers, embed, mlp]: embed -> fsdp, mlp -> tensor (size 1 -> replicated).
    assert layer["intermediate"]["kernel"].spec == P(None, "fsdp", None)
    assert layer["output"]["kernel"].spec == P(None, None, "fsdp")
    assert shard["encoder"]["embeddings"]["word_embeddings"]["embedding"].spec == P(None, "fsdp")
    # The same from plain params plus the module's logical names.
    plain = nn.unbox(boxed)
    names = logical_names_of(module, ids, ids)
    assert param_shardings(plain, mesh, logical_names=names) == shard
    # Without names: the shape rule.
    fallback = param_shardings(plain, mesh)
    assert fallback["encoder"]["layers"]["layer"]["intermediate"]["kernel"].spec == P(
        None, None, "fsdp")  # [2, 32, 64]: 64 is the largest dim
    assert fallback["bias"].spec == P()


def test_global_batch_and_process_slice():
    mesh = make_mesh(data=4, fsdp=2)
    assert process_batch_slice(mesh, 16) == slice(0, 16)
    with pytest.raises(ValueError, match="not divisible"):
        process_batch_slice(mesh, 12)
    local = {"input_ids": np.arange(32).reshape(16, 2), "labels": np.arange(16)}
    arrays = global_batch(local, mesh)
    assert arrays["input_ids"].sharding == batch_sharding(mesh)
    assert len({s.index[0].start for s in arrays["labels"].addressable_shards}) == 8
    np.testing.assert_array_equal(np.asarray(arrays["input_ids"]), local["input_ids"])
