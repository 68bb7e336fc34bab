"""The second run of a config compiles nothing: every program comes from the persistent cache."""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache
from test_train_cli import build_workspace

from jaxpet.cli import train_main

REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"  # one per program to compile
MISSES = "/jax/compilation_cache/cache_misses"
HITS = "/jax/compilation_cache/cache_hits"


@pytest.fixture
def restore_jax_cache_settings():
    previous_dir = jax.config.jax_compilation_cache_dir
    previous_min = jax.config.jax_persistent_cache_min_compile_time_secs
    yield
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", previous_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous_min)


@pytest.mark.slow
def test_a_rerun_of_a_config_compiles_nothing(tmp_path, restore_jax_cache_settings):
    workspace = build_workspace(tmp_path)
    events: collections.Counter[str] = collections.Counter()
    monitoring.register_event_listener(lambda event, **kwargs: events.update([event]))
    # one member and its evaluation, zero-shot included: training, eval and eager programs
    args = ["--config", str(workspace["config"]), f"compilation_cache={tmp_path / 'xla'}",
            "pet.pattern_ids=[0]", "pet.max_steps=2", "no_distillation=true"]
    compilation_cache.reset_cache()
    jax.clear_caches()  # programs an earlier test compiled in this process must compile again
    assert train_main([*args, f"output_dir={tmp_path / 'first'}"]) == 0
    first = dict(events)
    events.clear()
    jax.clear_caches()  # a new process: nothing compiled in memory
    assert train_main([*args, f"output_dir={tmp_path / 'second'}"]) == 0
    second = dict(events)
    # the first run compiled its programs (train, eval, eager ops) and kept every one of them
    assert first[REQUESTS] > 10 and first.get(MISSES, 0) == first[REQUESTS], first
    # the second asked for the same programs and found every one in the cache
    assert second[REQUESTS] == first[REQUESTS], second
    assert second.get(HITS, 0) == second[REQUESTS] and second.get(MISSES, 0) == 0, second
    # the cached programs compute what the compiled ones did
    logits = [np.load(tmp_path / run / "p0-s0" / "eval_logits.npy") for run in ("first", "second")]
    np.testing.assert_array_equal(logits[0], logits[1])
