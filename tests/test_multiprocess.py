"""Multi-host plumbing in one process: distributed settings, checkpoint URLs, the stop vote.

The runs with 2 and 4 real processes are in test_multihost.py.
"""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from jaxpet.engine.checkpoint import checkpoint_directory
from jaxpet.engine.fit import StopVote
from jaxpet.engine.sharding import distributed_settings, make_mesh, maybe_initialize_distributed

DIST_ENV = ("JAXPET_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
            "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS")


@pytest.fixture
def clean_env(monkeypatch):
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_not_distributed_without_a_request(clean_env):
    assert distributed_settings() is None
    assert distributed_settings({"enabled": False, "coordinator_address": "h:1"}) is None
    assert maybe_initialize_distributed() is False
    assert not jax.distributed.is_initialized()


def test_gpu_launch_environment_is_read(clean_env):
    # What tpu/gpu_launch.sh exports for process 3 of 8 driving GPUs 2 and 3.
    clean_env.setenv("JAXPET_DISTRIBUTED", "1")
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234")
    clean_env.setenv("JAX_NUM_PROCESSES", "8")
    clean_env.setenv("JAX_PROCESS_ID", "3")
    clean_env.setenv("JAX_LOCAL_DEVICE_IDS", "2,3")
    assert distributed_settings() == {"coordinator_address": "10.0.0.2:1234",
                                      "num_processes": 8, "process_id": 3,
                                      "local_device_ids": [2, 3]}
    # Config values win over the environment.
    cfg = {"num_processes": 2, "process_id": 1, "local_device_ids": [0]}
    assert distributed_settings(cfg) == {"coordinator_address": "10.0.0.2:1234",
                                         "num_processes": 2, "process_id": 1,
                                         "local_device_ids": [0]}


def test_tpu_vm_leaves_everything_to_jax(clean_env):
    # On a Cloud TPU VM jax.distributed.initialize() finds its peers: no arguments at all.
    assert distributed_settings({"enabled": True}) == {}
    clean_env.setenv("JAXPET_DISTRIBUTED", "1")
    assert distributed_settings() == {}


def test_bad_environment_values_name_the_variable(clean_env):
    clean_env.setenv("JAXPET_DISTRIBUTED", "1")
    clean_env.setenv("JAX_PROCESS_ID", "first")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        distributed_settings()
    clean_env.delenv("JAX_PROCESS_ID")
    clean_env.setenv("JAX_LOCAL_DEVICE_IDS", "0,x")
    with pytest.raises(ValueError, match="JAX_LOCAL_DEVICE_IDS"):
        distributed_settings()


def test_checkpoint_urls_pass_through_untouched(tmp_path, monkeypatch):
    assert checkpoint_directory("gs://bucket/runs/a") == "gs://bucket/runs/a"
    # A URL that went through pathlib lost a slash; it is given back.
    assert checkpoint_directory(Path("gs://bucket/runs") / "ckpt") == "gs://bucket/runs/ckpt"
    monkeypatch.chdir(tmp_path)
    assert checkpoint_directory("runs/x") == str(tmp_path / "runs" / "x")
    assert checkpoint_directory(tmp_path / "y") == str(tmp_path / "y")


def test_single_process_stop_vote_is_the_local_flag():
    vote = StopVote(make_mesh(data=-1), every=3)
    assert vote.multi is False
    assert vote.should_stop(1, False) is False
    assert vote.should_stop(2, True) is True
    with pytest.raises(ValueError, match="stop_check_every"):
        StopVote(make_mesh(data=-1), every=0)
