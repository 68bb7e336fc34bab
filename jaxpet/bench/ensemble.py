"""Ensemble-parallel versus one-after-another member training: member-steps per second.

Both ways run the same PET step (cloze + auxiliary MLM, AdamW) of the same model on the same
synthetic batches, compiled once; only steady-state steps are timed. "sequential" trains the
members one after another (one Trainer, M x steps updates); "parallel" runs one
EnsembleTrainer step for all M members. Wall and process CPU time are both reported, since the
CPU may be shared with other jobs. Run: python -m jaxpet.bench.ensemble [--members 4 ...].
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import jax
import numpy as np

from jaxpet.bench.train import SpecialIds, model_config, synthetic_batch, verbalizer_ids
from jaxpet.engine.ensemble_training import EnsembleTrainer, member_keys
from jaxpet.engine.optim import make_optimizer
from jaxpet.engine.sharding import global_batch, make_mesh
from jaxpet.engine.training import Trainer
from jaxpet.models.pretrained import init_model
from jaxpet.scoring.cloze_step import make_member_pet_loss


def _timed(run: Any, repeats: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def run_ensemble_benchmark(
    size: str = "small",
    vocab_size: int | None = None,
    members: int = 4,
    seq_len: int = 64,
    labeled: int = 4,
    unlabeled: int = 4,
    max_targets: int = 10,
    steps: int = 3,
    repeats: int = 3,
) -> dict[str, Any]:
    """Member-steps/s of both ways; each repeat times `steps` updates of every member."""
    config = model_config(size, seq_len)
    if vocab_size:
        config = config.replace(vocab_size=vocab_size)
    lm = init_model(config, head="mlm")
    ids = SpecialIds.for_config(config)
    loss_fn = make_member_pet_loss(lm.module.apply, alpha=1e-4, mask_token_id=ids.mask,
                                   vocab_size=config.vocab_size, max_mlm_targets=max_targets,
                                   pad_id=ids.pad, special_token_ids=(ids.cls, ids.sep))
    optimizer = make_optimizer(1e-5, num_steps=10_000)
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    batches = [{**synthetic_batch(config, labeled, unlabeled, seq_len, seed=m),
                "verbalizer_ids": verbalizer_ids(config)} for m in range(members)]

    # One after another: one compiled step serves every member (same shapes), as with PET.
    trainer = Trainer(loss_fn, optimizer, mesh)
    states = [trainer.init(lm.params) for _ in range(members)]
    device_batches = [global_batch(b, mesh) for b in batches]
    keys = [jax.random.key(m) for m in range(members)]

    def sequential() -> None:
        for m in range(members):
            for _ in range(steps):
                states[m], metrics = trainer.train_step(states[m], device_batches[m], keys[m])
            jax.block_until_ready(metrics["loss"])

    ensemble = EnsembleTrainer(loss_fn, optimizer, mesh, members)
    holder = {"state": ensemble.init([lm.params] * members)}
    stacked = ensemble.global_batch({k: np.stack([b[k] for b in batches]) for k in batches[0]})
    rng_M = member_keys(range(members))

    def parallel() -> None:
        for _ in range(steps):
            holder["state"], metrics = ensemble.train_step(holder["state"], stacked, rng_M)
        jax.block_until_ready(metrics["loss"])

    result: dict[str, Any] = {
        "device": str(jax.devices()[0].device_kind), "size": size,
        "layers": config.num_hidden_layers, "hidden": config.hidden_size,
        "vocab": config.vocab_size, "members": members, "seq_len": seq_len,
        "batch": f"{labeled}+{unlabeled}", "steps_per_repeat": steps, "repeats": repeats,
    }
    for name, run in (("sequential", sequential), ("parallel", parallel)):
        start = time.perf_counter()
        run()  # compiles, then warms up
        result[f"{name}_first_s"] = time.perf_counter() - start
        walls, cpus = _timed(run, repeats)
        work = members * steps
        result[name] = {
            "member_steps_per_s_wall": [round(work / w, 3) for w in walls],
            "member_steps_per_s_cpu": [round(work / c, 3) for c in cpus],
            "median_wall_s": statistics.median(walls), "median_cpu_s": statistics.median(cpus),
        }
    seq, par = result["sequential"], result["parallel"]
    result["speedup_wall"] = seq["median_wall_s"] / par["median_wall_s"]
    result["speedup_cpu"] = seq["median_cpu_s"] / par["median_cpu_s"]
    assert ensemble.compiled_programs() == 1 and trainer.compiled_programs() == 1
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="tiny | small | base | large")
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--labeled", type=int, default=4)
    parser.add_argument("--unlabeled", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = run_ensemble_benchmark(args.size, args.vocab_size, args.members, args.seq_len,
                                    args.labeled, args.unlabeled, steps=args.steps,
                                    repeats=args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
