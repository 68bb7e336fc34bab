"""Multi-mask decoding benchmark: the compiled multi_mask_decode vs PET's per-example loop.

Both ways score the same candidates with the same model and weights. The reference follows
the original PET evaluation loop: batch size 1 per example, candidates grouped by length with
the first forward pass cached per group, chunks of at most 8 candidates, one forward pass per
filled mask and a host round trip per step to pick the next mask. Its forward passes are
jitted and compiled for every chunk size before timing, so only running time is compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet.decoding.multi_mask import make_multi_mask_decoder
from jaxpet.models.config import EncoderConfig
from jaxpet.models.pretrained import init_model

PAD, CLS, SEP, MASK = 0, 101, 102, 103  # BERT's ids
SMALL_BERT = dict(model_type="bert", vocab_size=30522, hidden_size=256, embedding_size=256,
                  num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
PET_CHUNK = 8  # the original PET scores at most 8 candidates per forward pass


def small_mlm(seed: int = 0, dtype: Any = jnp.float32) -> tuple[Callable, Any, int, str]:
    """(apply_fn(params, ids, mask, positions) -> [B, P, V], params, vocab size, description)."""
    lm = init_model(EncoderConfig(**SMALL_BERT), head="mlm", seed=seed, dtype=dtype)

    def apply_fn(params, input_ids, attention_mask, positions):
        return lm.module.apply({"params": params}, input_ids, attention_mask, positions=positions)

    return apply_fn, lm.params, SMALL_BERT["vocab_size"], "jaxpet BERT 4 layers/256/vocab 30522"


def make_inputs(num_examples: int, num_candidates: int, max_masks: int, seq_len: int,
                vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """PET-style rows: [CLS] text [MASK]*n text [SEP] pad, n = each candidate's token count."""
    rng = np.random.default_rng(seed)
    shape = (num_examples, num_candidates)
    ids = np.full((*shape, seq_len), PAD, np.int32)
    attn = np.zeros((*shape, seq_len), np.int32)
    pos = np.full((*shape, max_masks), -1, np.int32)
    tgt = np.full((*shape, max_masks), -1, np.int32)
    for n in range(num_examples):
        text_len = int(rng.integers(seq_len // 2, seq_len - max_masks - 2))
        text = rng.integers(1000, vocab_size, size=text_len)
        split = int(rng.integers(1, text_len))
        for c in range(num_candidates):
            length = int(rng.integers(1, max_masks + 1))
            row = [CLS, *text[:split], *[MASK] * length, *text[split:], SEP]
            ids[n, c, : len(row)] = row
            attn[n, c, : len(row)] = 1
            pos[n, c, :length] = np.arange(1 + split, 1 + split + length)
            tgt[n, c, :length] = rng.integers(1000, vocab_size, size=length)
    return {"input_ids": ids, "attention_mask": attn, "mask_positions": pos, "target_ids": tgt}


def _reference_forward(apply_fn: Callable) -> tuple[Callable, Callable]:
    """(first pass -> log-probs [1, K, V] left on the device, step -> target log-probs [B, K])."""

    @jax.jit
    def first_pass(params, ids_1xS, attn_1xS, pos_1xK):
        logits_1xKxV = apply_fn(params, ids_1xS, attn_1xS, jnp.maximum(pos_1xK, 0))
        return jax.nn.log_softmax(logits_1xKxV.astype(jnp.float32), axis=-1)

    @jax.jit
    def pick(log_probs_1xKxV, tgt_BxK):
        picked_BxK = jnp.take_along_axis(log_probs_1xKxV[0], jnp.maximum(tgt_BxK, 0).T, 1).T
        return picked_BxK

    @jax.jit
    def step(params, ids_BxS, attn_BxS, pos_BxK, tgt_BxK):
        logits_BxKxV = apply_fn(params, ids_BxS, attn_BxS, jnp.maximum(pos_BxK, 0))
        log_probs_BxKxV = jax.nn.log_softmax(logits_BxKxV.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(log_probs_BxKxV, jnp.maximum(tgt_BxK, 0)[..., None], -1)[..., 0]

    def first(params, ids_1xS, attn_1xS, pos_1xK, tgt_GxK):
        return pick(first_pass(params, ids_1xS, attn_1xS, pos_1xK), tgt_GxK)

    return first, step


def reference_decode(forward: tuple[Callable, Callable], params: Any, inputs: dict[str, np.ndarray],
                     examples: range, strategy: str = "max_first") -> np.ndarray:
    """PET's loop: per example, per length group, per chunk of <= 8, one forward per step."""
    first_forward, step_forward = forward
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    pos, tgt = inputs["mask_positions"], inputs["target_ids"]
    scores = np.full((len(examples), ids.shape[1]), -np.inf)
    for row, n in enumerate(examples):
        groups: dict[int, list[int]] = {}
        for c in range(ids.shape[1]):
            groups.setdefault(int((pos[n, c] >= 0).sum()), []).append(c)
        for cands in groups.values():
            lead = cands[0]
            # The first pass runs once per group on the shared input (PET's initial_outputs).
            first = np.asarray(first_forward(params, ids[n, lead][None], attn[n, lead][None],
                                             pos[n, lead][None], tgt[n, cands]))
            for start in range(0, len(cands), PET_CHUNK):
                chunk = cands[start:start + PET_CHUNK]
                scores[row, chunk] = _score_chunk(
                    step_forward, params, ids[n, chunk], attn[n, chunk], pos[n, chunk],
                    tgt[n, chunk], first[start:start + PET_CHUNK], strategy,
                )
    return scores


def _score_chunk(forward, params, ids_BxS, attn_BxS, pos_BxK, tgt_BxK, first_BxK, strategy):
    ids_BxS = ids_BxS.copy()
    remaining_BxK = pos_BxK >= 0
    total_B = np.zeros(len(ids_BxS))
    log_probs_BxK = first_BxK
    while remaining_BxK.any():
        if strategy == "parallel":
            return np.where(remaining_BxK, log_probs_BxK, 0.0).sum(-1)
        for b in range(len(ids_BxS)):
            slots = np.flatnonzero(remaining_BxK[b])
            k = slots[0] if strategy == "ltr" else slots[np.argmax(log_probs_BxK[b, slots])]
            total_B[b] += log_probs_BxK[b, k]
            ids_BxS[b, pos_BxK[b, k]] = tgt_BxK[b, k]
            remaining_BxK[b, k] = False
        if remaining_BxK.any():
            log_probs_BxK = np.asarray(forward(params, ids_BxS, attn_BxS, pos_BxK, tgt_BxK))
    return total_B


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_decode_benchmark(
    model: tuple[Callable, Any] | None = None,
    N: int = 64,  # noqa: N803 - the benchmark's documented parameter names
    C: int = 5,  # noqa: N803
    K_max: int = 4,  # noqa: N803
    seq_len: int = 64,
    strategy: str = "max_first",
    repeats: int = 3,
    reference_examples: int | None = 16,
    seed: int = 0,
    row_buckets: int = 3,
    reuse_first_pass: bool = True,
) -> dict[str, Any]:
    """Examples/s of the compiled decoder and of PET's loop, their ratio and their agreement.

    model: (apply_fn(params, ids, mask, positions) -> [B, P, V], params); default the small
    BERT of small_mlm(). The reference runs on the first `reference_examples` examples (all if
    None) and its rate is measured on those; scores of both ways are compared there.
    """
    if model is None:
        apply_fn, params, vocab_size, description = small_mlm(seed)
    else:
        apply_fn, params = model
        vocab_size = int(jax.eval_shape(
            apply_fn, params, jnp.zeros((1, seq_len), jnp.int32), jnp.ones((1, seq_len), jnp.int32),
            jnp.zeros((1, 1), jnp.int32)).shape[-1])
        description = "caller's model"
    inputs = make_inputs(N, C, K_max, seq_len, vocab_size, seed)
    device_inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
    decode = make_multi_mask_decoder(apply_fn, strategy=strategy, row_buckets=row_buckets,
                                     reuse_first_pass=reuse_first_pass)

    def compiled():
        return jax.block_until_ready(decode(
            params, device_inputs["input_ids"], device_inputs["attention_mask"],
            device_inputs["mask_positions"], device_inputs["target_ids"]))

    start = time.perf_counter()
    scores = np.asarray(compiled())
    compile_seconds = time.perf_counter() - start
    compiled_seconds = _median_seconds(compiled, repeats)

    forward = _reference_forward(apply_fn)
    num_ref = N if reference_examples is None else min(N, reference_examples)
    for size in range(1, C + 1):  # compile every shape the loop meets before timing
        args = [inputs[k][0, :size] for k in ("input_ids", "attention_mask", "mask_positions")]
        forward[0](params, *[a[:1] for a in args], inputs["target_ids"][0, :size])
        if size <= PET_CHUNK:
            forward[1](params, *args, inputs["target_ids"][0, :size])
    start = time.perf_counter()
    reference_scores = reference_decode(forward, params, inputs, range(num_ref), strategy)
    reference_seconds = time.perf_counter() - start

    compiled_rate = N / compiled_seconds
    reference_rate = num_ref / reference_seconds
    return {
        "model": description,
        "device": str(jax.devices()[0].device_kind),
        "N": N, "C": C, "K_max": K_max, "seq_len": seq_len, "strategy": strategy,
        "row_buckets": row_buckets, "reuse_first_pass": reuse_first_pass,
        "compile_seconds": round(compile_seconds, 3),
        "compiled_seconds": round(compiled_seconds, 4),
        "compiled_examples_per_s": round(compiled_rate, 2),
        "reference_examples": num_ref,
        "reference_seconds": round(reference_seconds, 4),
        "reference_examples_per_s": round(reference_rate, 2),
        "speedup": round(compiled_rate / reference_rate, 2),
        "max_abs_score_diff": float(np.max(np.abs(scores[:num_ref] - reference_scores))),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--C", type=int, default=5)
    parser.add_argument("--K-max", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--strategy", default="max_first", choices=["max_first", "ltr", "parallel"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-examples", type=int, default=16)
    parser.add_argument("--row-buckets", type=int, default=3)
    parser.add_argument("--no-reuse", action="store_true", help="no shared first pass")
    args = parser.parse_args(argv)
    print(json.dumps(run_decode_benchmark(
        N=args.N, C=args.C, K_max=args.K_max, seq_len=args.seq_len, strategy=args.strategy,
        repeats=args.repeats, reference_examples=args.reference_examples,
        row_buckets=args.row_buckets, reuse_first_pass=not args.no_reuse), indent=2))


if __name__ == "__main__":
    main()
