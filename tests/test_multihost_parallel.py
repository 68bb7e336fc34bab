"""2 jax.distributed processes training parallel members: SIGTERM to one stops both, one resume.

Two tiny PET members (own verbalizer, data order and seed) train as one ensemble
(fit_ensemble, the engine path of pet.parallel_members) on a member=2 x data=2 mesh of 4 fake
CPU devices split over 2 processes, so each process holds one member. SIGTERM goes to the
process that does not report progress; both processes must stop at the same step behind one
checkpoint, and the relaunched command must end where an uninterrupted run in this process
ends: the same per-member losses at every step and the same parameters.
"""

from __future__ import annotations

import json
import signal

import jax
import multiprocess_worker as worker
import numpy as np
import pytest

from jaxpet.engine.ensemble_training import fit_ensemble
from jaxpet.engine.sharding import make_mesh

STEPS = 6
DEVICES = 4
MEMBERS = len(worker.MEMBER_SEEDS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Per-member losses and flat stacked params of one uninterrupted process."""
    mesh = make_mesh(member=MEMBERS, data=-1, devices=jax.devices()[:DEVICES])
    trainer, state, batch_fn = worker.setup_members(mesh, num_steps=STEPS)
    logged: dict[int, list[float]] = {}

    def writer(m: int):
        return lambda step, metrics: logged.setdefault(step, [0.0] * MEMBERS).__setitem__(
            m, metrics["loss"])

    state = fit_ensemble(trainer, state, batch_fn, STEPS, seeds=worker.MEMBER_SEEDS,
                         log_every=1, progress=False,
                         metrics_writers=[writer(m) for m in range(MEMBERS)])
    losses = np.asarray([logged[s] for s in range(1, STEPS + 1)])
    # The members really differ (verbalizer, data, seed): a mixed-up member would show.
    assert np.abs(losses[:, 0] - losses[:, 1]).max() > 1e-3
    init = worker.save_init_params(str(tmp_path_factory.mktemp("init") / "init.npz"))
    return {"losses": logged, "params": worker.flat_params(state.params), "init": init,
            "cache": str(tmp_path_factory.mktemp("jit-cache"))}


def _read_losses(path) -> dict[int, list[float]]:
    return {int(k): v for k, v in json.loads(path.read_text()).items()}


@pytest.mark.slow  # two launches of 2 processes that each compile the ensemble step
def test_sigterm_to_one_process_stops_both_members_then_resume_matches(tmp_path, reference):
    ckpt, progress = tmp_path / "ckpt", tmp_path / "progress"
    args = ["--steps", str(STEPS), "--members", str(MEMBERS), "--ckpt", str(ckpt)]

    def start(out: str, extra: list[str]):
        return worker.launch(2, ["--out", str(tmp_path / out), *args, *extra],
                             reference["cache"], via_env=True, devices=DEVICES,
                             init_params=reference["init"])

    # 1) SIGTERM to process 1 only (process 0 writes the progress file) once both train.
    procs = start("first", ["--sleep", "0.3", "--progress-file", str(progress)])
    worker.wait_for_progress(procs, progress, 2)
    procs[-1].send_signal(signal.SIGTERM)
    # Without the stop vote, process 1 stops alone and process 0 waits in the next
    # collective: that shows here as a timeout or a status other than 143.
    worker.finish(procs, expected_rc=143, timeout=240)
    stopped = [_read_losses(tmp_path / "first" / f"losses-{i}.json") for i in range(2)]
    stop_step = max(stopped[0])
    assert 2 <= stop_step < STEPS
    assert stopped[1] == stopped[0], "processes stopped at different steps"
    assert sorted(stopped[0]) == list(range(1, stop_step + 1))
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [stop_step]
    assert not (tmp_path / "first" / "params.npz").exists()

    # 2) The same command again resumes at the checkpoint and runs to the end.
    worker.finish(start("second", []))
    resumed = _read_losses(tmp_path / "second" / "losses-0.json")
    assert sorted(resumed) == list(range(stop_step + 1, STEPS + 1))
    logged = {**stopped[0], **resumed}
    ref = reference["losses"]
    # Same programs on the same layout, only split over 2 processes: equal up to the order
    # of float32 sums across processes; a wrong restore (step, rng, optimizer state) is 1e-3.
    np.testing.assert_allclose([logged[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)],
                               rtol=1e-5)
    params = dict(np.load(tmp_path / "second" / "params.npz"))
    assert params.keys() == reference["params"].keys()
    for name, value in reference["params"].items():
        assert value.shape[0] == MEMBERS, name
        np.testing.assert_allclose(params[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())[-1] == STEPS
