"""A short run with evaluation compiles exactly one program per length bucket, and no more."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet.data.batching import Batcher
from jaxpet.engine.optim import make_optimizer
from jaxpet.engine.sharding import make_mesh
from jaxpet.engine.training import FAST_CPU_COMPILE, Trainer, fit, predict
from jaxpet.scoring.cloze_step import make_classifier_logits_fn, make_classifier_loss

# compiled programs are counted: none may come back from conftest's persistent XLA cache, where
# a program compiled twice would pass for one compiled once
pytestmark = pytest.mark.usefixtures("no_compilation_cache")


class TinyClassifier(nn.Module):
    """Stand-in with the models' apply signature: mean-pooled embeddings -> 3 labels."""

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, positions=None,
                 deterministic=True):
        h = nn.Embed(50, 16)(input_ids) * attention_mask[..., None]
        h = nn.Dropout(0.1, deterministic=deterministic)(h.sum(1) / attention_mask.sum(1)[:, None])
        return nn.Dense(3)(h)


def _data(n: int = 20, seq: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = np.where(np.arange(n) < 16, 3, 10)  # mostly short rows: two buckets get used
    att = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": rng.integers(1, 50, (n, seq)) * att, "attention_mask": att,
            "labels": rng.integers(0, 3, n)}


def test_compile_count_of_a_run_with_eval():
    events: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    mesh = make_mesh(data=2, fsdp=2, devices=jax.devices()[:4])
    model = TinyClassifier()
    data = _data()
    params = jax.jit(model.init)(jax.random.key(0), data["input_ids"][:1],
                                 data["attention_mask"][:1])["params"]
    trainer = Trainer(make_classifier_loss(model.apply), make_optimizer(1e-2, num_steps=12),
                      mesh, compiler_options=FAST_CPU_COMPILE)
    state = trainer.init(params)
    buckets = (4, 8, 16)
    batcher = Batcher(data, 4, seed=0, buckets=buckets, mesh=mesh)
    lengths = {batcher(step)["input_ids"].shape[1] for step in range(12)}
    assert len(lengths) >= 2  # the run really sees several buckets
    logits_fn = make_classifier_logits_fn(model.apply)

    state = fit(trainer, state, batcher, 6, seed=0, progress=False, log_every=2)
    first = predict(logits_fn, state.params, data, batch_size=8, mesh=mesh)
    warm = len(events)
    # Same shapes again: more steps and another evaluation compile nothing new.
    state = fit(trainer, state, batcher, 12, seed=0, progress=False, log_every=2)
    second = predict(logits_fn, state.params, data, batch_size=8, mesh=mesh)
    new_lengths = {batcher(step)["input_ids"].shape[1] for step in range(6, 12)}
    assert len(events) - warm == len(new_lengths - {batcher(s)["input_ids"].shape[1]
                                                    for s in range(6)})
    assert trainer.compiled_programs() == len(lengths)
    assert first.shape == second.shape == (20, 3)
    assert not np.allclose(first, second)  # training went on between the evaluations
    # sharded predict vs one plain forward (fp32); stale or other parameters differ > 1e-3
    np.testing.assert_allclose(second, jax.jit(model.apply)({"params": jax.device_get(
        state.params)}, data["input_ids"], data["attention_mask"]), rtol=1e-4, atol=1e-5)
    assert jnp.isfinite(second).all()
