"""Shared tiny PET training setup for the engine tests; also a subprocess entry point.

As a script it trains the tiny model (optionally as one process of a jax.distributed run,
optionally with checkpoints, optionally stopping early) and writes the final parameters and
per-step losses to --out (and, with --predict, every process's predictions).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

VOCAB, SEQ, HIDDEN = 96, 24, 32
CLS, SEP, PAD, MASK = 1, 2, 0, 3
VERBALIZER_LxW = np.array([[10, -1], [11, 12]], np.int32)
# Cheaper CPU compiles for subprocess workers (same numerics in every run that uses them).
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def worker_env(num_devices: int = 8, cache_dir: str | None = None) -> dict[str, str]:
    """Environment for a worker subprocess: fake CPU devices, optional shared jit cache."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices} {FAST_XLA_FLAGS}"
    env["JAX_PLATFORMS"] = "cpu"
    if cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, args: list[str], cache_dir: str, via_env: bool = False,
           devices: int = 8, init_params: str | None = None) -> list[subprocess.Popen]:
    """Starts this script as the processes of one jax.distributed run on 127.0.0.1.

    The `devices` fake CPU devices are split evenly over the processes. via_env: pass the
    coordinator, process count and id as JAX_* environment variables (as tpu/gpu_launch.sh
    does) instead of as config values. init_params: a file from save_init_params.
    """
    address = f"127.0.0.1:{free_port()}"
    procs = []
    for pid in range(num_processes):
        env = worker_env(devices // num_processes, cache_dir)
        if init_params:
            env[INIT_PARAMS_ENV] = init_params
        cmd = [sys.executable, os.path.abspath(__file__), *args]
        if num_processes > 1 and via_env:
            env.update(JAXPET_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=address,
                       JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(pid))
        elif num_processes > 1:
            cmd += ["--coordinator", address, "--num-processes", str(num_processes),
                    "--process-id", str(pid)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))
    return procs


def finish(procs: list[subprocess.Popen], expected_rc: int = 0,
           timeout: float = 300) -> list[str]:
    """Waits for every process; fails with its output when one exits with another code;
    returns each process's output."""
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
    for i, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == expected_rc, (
            f"process {i}: rc {proc.returncode}\n{output[-4000:]}"
        )
    return outputs


def wait_for_progress(procs: list[subprocess.Popen], progress: Path, min_step: int,
                      timeout: float = 240) -> None:
    """Waits until process 0 has written a step >= min_step to `progress`; fails the test when
    a process ends first or the time runs out."""
    import pytest

    deadline = time.time() + timeout
    while time.time() < deadline:
        text = progress.read_text().strip() if progress.exists() else ""
        if text.isdigit() and int(text) >= min_step:
            return
        if any(p.poll() is not None for p in procs):
            finish(procs, expected_rc=0)  # reports the output of the failed process
            pytest.fail("a process finished before it was signalled")
        time.sleep(0.05)
    for p in procs:
        p.kill()
    pytest.fail(f"no process reached step {min_step} in {timeout} s")


def progress_batches(args: argparse.Namespace, batches: Callable[[int], dict]
                     ) -> Callable[[int], dict]:
    """batches(step), after process 0 writes the step to --progress-file (and each process
    sleeps --sleep seconds), so that a test can signal a run in the middle."""
    import jax  # the worker imports JAX only after it has set up its devices

    pid = jax.process_index()

    def batch_fn(step: int) -> dict:
        if args.progress_file and pid == 0:
            with open(args.progress_file, "w") as f:
                f.write(str(step))
        if args.sleep:
            time.sleep(args.sleep)
        return batches(step)

    return batch_fn


def tiny_config():
    from jaxpet.models.config import EncoderConfig

    return EncoderConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, embedding_size=HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
        # No dropout: it only adds compile time; the MLM masking exercises the step rng.
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


INIT_PARAMS_ENV = "JAXPET_TEST_INIT_PARAMS"


@functools.cache
def tiny_model():
    """(module, boxed params) of a 2-layer BERT MLM with 32-wide hidden states (built once).

    With $JAXPET_TEST_INIT_PARAMS naming a file from `save_init_params`, the values come from
    there (workers then skip compiling the initialiser; the boxes come from an abstract init).
    """
    import flax.linen as nn
    import jax

    from jaxpet.models.heads import EncoderForMaskedLM

    module = EncoderForMaskedLM(tiny_config())
    ids = np.ones((1, SEQ), np.int32)
    init = functools.partial(module.init, jax.random.key(0), ids, ids)
    saved = os.environ.get(INIT_PARAMS_ENV)
    if not saved:
        return module, jax.jit(init)()["params"]
    values = np.load(saved)
    boxed = jax.eval_shape(init)["params"]
    paths = jax.tree_util.tree_flatten_with_path(nn.unbox(boxed))[0]
    leaves = [values[jax.tree_util.keystr(path)] for path, _ in paths]
    unboxed = jax.tree.unflatten(jax.tree.structure(nn.unbox(boxed)), leaves)
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    params = jax.tree.map(lambda box, value: box.replace_boxed(value) if is_box(box) else value,
                          boxed, unboxed, is_leaf=is_box)
    return module, params


def save_init_params(path: str) -> str:
    """Writes tiny_model's initial values for workers (see INIT_PARAMS_ENV); returns path."""
    import flax.linen as nn

    np.savez(path, **flat_params(nn.unbox(tiny_model()[1])))
    return path


def tiny_data(num_labeled: int = 24, num_unlabeled: int = 40) -> tuple[dict, dict]:
    """Pattern-like encodings: [CLS] words [MASK] words [SEP] pad, random lengths."""
    rng = np.random.default_rng(0)

    def encode(n: int, labeled: bool) -> dict:
        ids = np.full((n, SEQ), PAD, np.int32)
        att = np.zeros((n, SEQ), np.int32)
        mask_pos = np.full((n, 1), -1, np.int32)
        for i in range(n):
            length = int(rng.integers(6, 15 if i % 3 else SEQ))
            ids[i, :length] = rng.integers(4, VOCAB, length)
            ids[i, 0], ids[i, length - 1] = CLS, SEP
            slot = int(rng.integers(1, length - 1))
            ids[i, slot] = MASK
            att[i, :length] = 1
            mask_pos[i, 0] = slot
        labels = (ids[:, 1] % 2).astype(np.int32) if labeled else np.full(n, -1, np.int32)
        return {"input_ids": ids, "attention_mask": att, "token_type_ids": np.zeros_like(ids),
                "mask_positions": mask_pos, "labels": labels}

    return encode(num_labeled, True), encode(num_unlabeled, False)


def setup(mesh, num_steps: int = 6, labeled_bs: int = 8, unlabeled_bs: int = 8, seed: int = 3):
    """(trainer, state, batcher) for a tiny PET run with the auxiliary MLM loss."""
    from jaxpet.data.batching import Batcher
    from jaxpet.engine.optim import make_learning_rate_fn, make_optimizer
    from jaxpet.engine.training import FAST_CPU_COMPILE, Trainer
    from jaxpet.scoring.cloze_step import make_pet_loss

    module, params = tiny_model()
    labeled, unlabeled = tiny_data()
    unlabeled = {k: v for k, v in unlabeled.items() if k not in ("labels", "mask_positions")}
    loss_fn = make_pet_loss(
        module.apply, VERBALIZER_LxW, alpha=0.1, mask_token_id=MASK, vocab_size=VOCAB,
        max_mlm_targets=4, pad_id=PAD, special_token_ids=(CLS, SEP),
    )
    optimizer = make_optimizer(learning_rate=1e-3, num_steps=num_steps, warmup_steps=1)
    trainer = Trainer(loss_fn, optimizer, mesh,
                      learning_rate_fn=make_learning_rate_fn(1e-3, num_steps, 1),
                      compiler_options=FAST_CPU_COMPILE)
    batcher = Batcher(
        groups={"": (labeled, labeled_bs, seed), "unlabeled_": (unlabeled, unlabeled_bs, seed + 1)},
        buckets=(16, SEQ), mesh=mesh,
    )
    return trainer, trainer.init(params), batcher


# Two members of a parallel-members run: each its own verbalizer, data order and rng seed.
MEMBER_SEEDS = (7, 8)
MEMBER_VERBALIZERS = (VERBALIZER_LxW, np.array([[20, 21], [22, -1]], np.int32))


def setup_members(mesh, num_steps: int = 6, batch_size: int = 8):
    """(trainer, state, stacked batch_fn) of the tiny PET members trained as one ensemble
    (pet.parallel_members' engine path), global full-length batches (no padding between
    members)."""
    from jaxpet.data.batching import Batcher
    from jaxpet.engine.ensemble_training import EnsembleTrainer, aligned_batch_fn
    from jaxpet.engine.optim import make_learning_rate_fn, make_optimizer
    from jaxpet.engine.training import FAST_CPU_COMPILE
    from jaxpet.scoring.cloze_step import make_member_pet_loss

    module, params = tiny_model()
    labeled, unlabeled = tiny_data()
    unlabeled = {k: v for k, v in unlabeled.items() if k not in ("labels", "mask_positions")}
    loss_fn = make_member_pet_loss(module.apply, alpha=0.1, mask_token_id=MASK,
                                   vocab_size=VOCAB, max_mlm_targets=4, pad_id=PAD,
                                   special_token_ids=(CLS, SEP))
    optimizer = make_optimizer(learning_rate=1e-3, num_steps=num_steps, warmup_steps=1)
    trainer = EnsembleTrainer(loss_fn, optimizer, mesh, len(MEMBER_SEEDS),
                              learning_rate_fn=make_learning_rate_fn(1e-3, num_steps, 1),
                              compiler_options=FAST_CPU_COMPILE)
    batchers = [Batcher(groups={"": (labeled, batch_size, seed),
                                "unlabeled_": (unlabeled, batch_size, seed + 1)})
                for seed in MEMBER_SEEDS]
    batch_fn = aligned_batch_fn([b.global_batch for b in batchers],
                                [{"verbalizer_ids": v} for v in MEMBER_VERBALIZERS], PAD)
    return trainer, trainer.init([params] * len(MEMBER_SEEDS)), batch_fn


def flat_params(params) -> dict[str, np.ndarray]:
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f)


def _time_vote(mesh, state, trainer, batcher, repeats: int = 50) -> dict[str, float]:
    """Seconds per blocking stop vote and per blocking train step (for the overhead report)."""
    import jax

    from jaxpet.engine.fit import StopVote
    from jaxpet.engine.sharding import global_batch

    vote = StopVote(mesh)
    vote.should_stop(1, False)
    vote.should_stop(2, False)  # compiled and warm
    start = time.perf_counter()
    for i in range(repeats):
        vote.should_stop(3 + i, False)
    per_vote = (time.perf_counter() - start) / repeats
    batch = global_batch(batcher(0), mesh)
    rng = jax.random.key(0)
    state, _ = trainer.train_step(state, batch, rng)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(repeats // 5):
        state, _ = trainer.train_step(state, batch, rng)
    jax.block_until_ready(state)
    return {"vote_s": per_vote, "step_s": (time.perf_counter() - start) / (repeats // 5)}


def _train_members(args) -> None:
    """--members: the parallel-members run (fit_ensemble) on a member x data mesh; writes
    losses-{process}.json ({step: [loss of each member]}) and, once finished, params.npz."""
    import jax

    from jaxpet.engine.checkpoint import Checkpointer
    from jaxpet.engine.ensemble_training import fit_ensemble
    from jaxpet.engine.sharding import make_mesh

    mesh = make_mesh(member=args.members, data=-1, fsdp=args.fsdp)
    trainer, state, stacked = setup_members(mesh, num_steps=args.steps)
    losses: dict[int, list[float | None]] = {}
    pid = jax.process_index()

    batch_fn = progress_batches(args, stacked)

    def writer(m: int):
        def write(step: int, metrics: dict) -> None:
            losses.setdefault(step, [None] * args.members)[m] = metrics["loss"]
        return write

    ckpt = Checkpointer(args.ckpt, save_every=args.save_every) if args.ckpt else None
    try:
        state = fit_ensemble(trainer, state, batch_fn, args.stop_after or args.steps,
                             seeds=MEMBER_SEEDS, checkpointer=ckpt, log_every=1, progress=False,
                             metrics_writers=[writer(m) for m in range(args.members)])
    finally:  # also on the SystemExit(143) of a coordinated stop: say where this process was
        _write_json(os.path.join(args.out, f"losses-{pid}.json"), losses)
    if ckpt is not None:
        ckpt.close()
    params = flat_params(state.params)
    if pid == 0:
        np.savez(os.path.join(args.out, "params.npz"), **params)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=6, help="length of the run (lr schedule)")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop (and checkpoint) after this many steps of the --steps run")
    parser.add_argument("--fsdp", type=int, default=1)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep per step")
    parser.add_argument("--progress-file", default=None,
                        help="process 0 writes the step whose batch it is building")
    parser.add_argument("--predict", type=int, default=0,
                        help="after training, predict label scores of this many examples")
    parser.add_argument("--time-vote", action="store_true")
    parser.add_argument("--members", type=int, default=0,
                        help="train this many members together (fit_ensemble) instead")
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args(argv)

    import jax

    from jaxpet.engine.sharding import maybe_initialize_distributed

    if args.coordinator:
        maybe_initialize_distributed({"coordinator_address": args.coordinator,
                                      "num_processes": args.num_processes,
                                      "process_id": args.process_id})
    else:  # JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, when set
        maybe_initialize_distributed()
    if args.members:
        _train_members(args)
        return
    from jaxpet.engine.checkpoint import Checkpointer
    from jaxpet.engine.sharding import make_mesh
    from jaxpet.engine.training import fit, predict
    from jaxpet.scoring.cloze_step import make_label_logits_fn

    mesh = make_mesh(data=-1, fsdp=args.fsdp)
    trainer, state, batcher = setup(mesh, num_steps=args.steps)
    losses: dict[int, float] = {}
    pid = jax.process_index()

    batch_fn = progress_batches(args, batcher)

    ckpt = Checkpointer(args.ckpt, save_every=args.save_every) if args.ckpt else None
    try:
        state = fit(trainer, state, batch_fn, args.stop_after or args.steps, seed=7,
                    checkpointer=ckpt, log_every=1, progress=False,
                    metrics_writer=lambda s, m: losses.__setitem__(s, m["loss"]))
    finally:  # also on the SystemExit(143) of a coordinated stop: say where this process was
        if jax.process_count() > 1:
            _write_json(os.path.join(args.out, f"losses-{pid}.json"), losses)
    if ckpt is not None:
        ckpt.close()
    extra = {}
    if args.predict:
        module, _ = tiny_model()
        labeled, _ = tiny_data(args.predict, 1)
        fn = make_label_logits_fn(module.apply, VERBALIZER_LxW)
        os.makedirs(args.out, exist_ok=True)
        np.save(os.path.join(args.out, f"preds-{pid}.npy"), predict(fn, state.params, labeled, 8,
                                                                    mesh))
    params = flat_params(state.params)
    if args.time_vote:  # after flat_params: this trains on
        extra = _time_vote(mesh, state, trainer, batcher)
    if pid == 0:
        os.makedirs(args.out, exist_ok=True)
        np.savez(os.path.join(args.out, "params.npz"), **params)
        _write_json(os.path.join(args.out, "losses.json"), losses)
        if extra:
            _write_json(os.path.join(args.out, "timing.json"), extra)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
