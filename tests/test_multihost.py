"""2 jax.distributed processes on 127.0.0.1 match one process: training, predict, resume.

The test runs the tiny PET training (cloze + MLM loss) as 2 processes over 4 fake CPU devices
(data 2 x fsdp 2), sends SIGTERM to one process mid-run, checks that every process stopped at
the same step behind one checkpoint, relaunches the same command, and compares the resumed
run's losses, parameters and predictions (13 examples: neither a multiple of the batch nor of
the process count) with an uninterrupted single-process run in this process.
"""

from __future__ import annotations

import json
import signal

import jax
import multiprocess_worker as worker
import numpy as np
import pytest

from jaxpet import losses
from jaxpet.engine.sharding import make_mesh
from jaxpet.engine.training import fit

STEPS = 8
DEVICES = 4
PREDICT_ROWS = 13


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Losses, flat params and directly computed label scores of one uninterrupted process."""
    mesh = make_mesh(data=-1, fsdp=2, devices=jax.devices()[:DEVICES])
    trainer, state, batcher = worker.setup(mesh, num_steps=STEPS)
    logged: dict[int, float] = {}
    state = fit(trainer, state, batcher, STEPS, seed=7, log_every=1, progress=False,
                metrics_writer=lambda step, m: logged.__setitem__(step, m["loss"]))
    module, _ = worker.tiny_model()
    labeled, _ = worker.tiny_data(PREDICT_ROWS, 1)
    params = jax.device_get(state.params)
    logits = jax.jit(module.apply)({"params": params}, labeled["input_ids"],
                                   labeled["attention_mask"], positions=labeled["mask_positions"])
    scores = np.asarray(losses.label_logits(logits[:, 0], worker.VERBALIZER_LxW))
    init = worker.save_init_params(str(tmp_path_factory.mktemp("init") / "init.npz"))
    return {"losses": logged, "params": worker.flat_params(state.params), "scores": scores,
            "init": init, "cache": str(tmp_path_factory.mktemp("jit-cache"))}


def _read_losses(path) -> dict[int, float]:
    return {int(k): v for k, v in json.loads(path.read_text()).items()}


# One case: 2 processes exercise the same cross-process code as 4 (each process feeds its slice
# of every batch; the 13 prediction rows split unevenly); the coordinator, count and id come
# from JAX_* variables as tpu/gpu_launch.sh sets them (test_multiprocess.py checks that config
# values are read the same way, and test_multiprocess_cli.py runs train.py's config path).
@pytest.mark.slow
def test_sigterm_to_one_process_then_resume_matches_one_process(tmp_path, reference):
    num_processes, via_env = 2, True
    ckpt, progress = tmp_path / "ckpt", tmp_path / "progress"
    args = ["--steps", str(STEPS), "--fsdp", "2", "--ckpt", str(ckpt)]

    def start(out: str, extra: list[str]):
        return worker.launch(num_processes, ["--out", str(tmp_path / out), *args, *extra],
                             reference["cache"], via_env=via_env, devices=DEVICES,
                             init_params=reference["init"])

    # 1) SIGTERM to the last process only, once every process is inside the training loop.
    procs = start("first", ["--sleep", "0.3", "--progress-file", str(progress)])
    worker.wait_for_progress(procs, progress, 2)
    procs[-1].send_signal(signal.SIGTERM)
    worker.finish(procs, expected_rc=143)
    stopped = [_read_losses(tmp_path / "first" / f"losses-{i}.json") for i in range(num_processes)]
    stop_step = max(stopped[0])
    assert 2 <= stop_step < STEPS
    assert all(logged == stopped[0] for logged in stopped), "processes stopped at different steps"
    assert sorted(stopped[0]) == list(range(1, stop_step + 1))
    saved = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert saved == [stop_step]
    assert not (tmp_path / "first" / "params.npz").exists()

    # 2) The same command again resumes at the checkpoint and runs to the end, then predicts.
    worker.finish(start("second", ["--predict", str(PREDICT_ROWS)]))
    resumed = [_read_losses(tmp_path / "second" / f"losses-{i}.json")
               for i in range(num_processes)]
    assert sorted(resumed[0]) == list(range(stop_step + 1, STEPS + 1))
    logged = {**stopped[0], **resumed[0]}
    ref = reference["losses"]
    np.testing.assert_allclose([logged[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)],
                               rtol=1e-5)
    params = dict(np.load(tmp_path / "second" / "params.npz"))
    assert params.keys() == reference["params"].keys()
    for name, value in reference["params"].items():
        np.testing.assert_allclose(params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())[-1] == STEPS

    # Every process holds every example's scores, once, in order, and they agree exactly.
    scores = [np.load(tmp_path / "second" / f"preds-{i}.npy") for i in range(num_processes)]
    for other in scores[1:]:
        np.testing.assert_array_equal(other, scores[0])
    assert scores[0].shape == (PREDICT_ROWS, len(worker.VERBALIZER_LxW))
    np.testing.assert_allclose(scores[0], reference["scores"], rtol=1e-4, atol=1e-5)
