"""Shared tiny PET training setup for the engine tests; also a subprocess entry point.

As a script it trains the tiny model (optionally as one process of a jax.distributed run,
optionally with checkpoints) and writes the final parameters and per-step losses to --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

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


def tiny_config():
    from jaxpet.models.config import EncoderConfig

    return EncoderConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, embedding_size=HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
        # No dropout: it only adds compile time; the MLM masking exercises the step rng.
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


@functools.cache
def tiny_model():
    """(module, boxed params) of a 2-layer BERT MLM with 32-wide hidden states (built once)."""
    import jax

    from jaxpet.models.heads import EncoderForMaskedLM

    module = EncoderForMaskedLM(tiny_config())
    ids = np.ones((1, SEQ), np.int32)
    params = jax.jit(module.init)(jax.random.key(0), ids, ids)["params"]
    return module, params


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
    from jaxpet.optim import make_learning_rate_fn, make_optimizer
    from jaxpet.pet_step import make_pet_loss
    from jaxpet.training import FAST_CPU_COMPILE, Trainer

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


def flat_params(params) -> dict[str, np.ndarray]:
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--fsdp", type=int, default=1)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep per step")
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args(argv)

    import jax

    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        from jaxpet.sharding import maybe_initialize_distributed

        maybe_initialize_distributed({"coordinator_address": args.coordinator,
                                      "num_processes": args.num_processes,
                                      "process_id": args.process_id})
    from jaxpet.checkpoint import Checkpointer
    from jaxpet.sharding import make_mesh
    from jaxpet.training import fit

    mesh = make_mesh(data=-1, fsdp=args.fsdp)
    trainer, state, batcher = setup(mesh, num_steps=args.steps)
    losses: dict[int, float] = {}

    def batch_fn(step: int) -> dict:
        if args.sleep:
            time.sleep(args.sleep)
        return batcher(step)

    ckpt = Checkpointer(args.ckpt, save_every=args.save_every) if args.ckpt else None
    state = fit(trainer, state, batch_fn, args.steps, seed=7, checkpointer=ckpt, log_every=1,
                metrics_writer=lambda s, m: losses.__setitem__(s, m["loss"]), progress=False)
    if ckpt is not None:
        ckpt.close()
    params = flat_params(state.params)
    if jax.process_index() == 0:
        os.makedirs(args.out, exist_ok=True)
        np.savez(os.path.join(args.out, "params.npz"), **params)
        with open(os.path.join(args.out, "losses.json"), "w") as f:
            json.dump(losses, f)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
