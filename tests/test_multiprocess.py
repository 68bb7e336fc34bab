"""A 2-process jax.distributed run (4 fake CPU devices each) matches a 1-process 8-device run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import multiprocess_worker as worker
import numpy as np

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out, devices: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, WORKER, "--out", str(out), "--steps", str(STEPS), "--fsdp", "2", *extra]
    return subprocess.Popen(cmd, env=worker.worker_env(devices), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen) -> None:
    try:
        output = proc.communicate(timeout=300)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, output[-4000:]


def test_two_processes_match_one(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    multi = [
        _launch(tmp_path / "multi", 4, ["--coordinator", address, "--num-processes", "2",
                                        "--process-id", str(i)])
        for i in range(2)
    ]
    for proc in multi:
        _finish(proc)
    single = _launch(tmp_path / "single", 8, [])
    _finish(single)

    def load(name: str) -> tuple[dict, dict]:
        params = dict(np.load(tmp_path / name / "params.npz"))
        losses = json.loads((tmp_path / name / "losses.json").read_text())
        return params, losses

    multi_params, multi_losses = load("multi")
    single_params, single_losses = load("single")
    assert sorted(multi_losses) == [str(s) for s in range(1, STEPS + 1)]
    np.testing.assert_allclose(
        [multi_losses[k] for k in sorted(multi_losses)],
        [single_losses[k] for k in sorted(single_losses)], rtol=1e-5,
    )
    assert multi_params.keys() == single_params.keys()
    for name, value in single_params.items():
        np.testing.assert_allclose(multi_params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
