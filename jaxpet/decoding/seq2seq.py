"""Seq2seq decoding for T5: jitted cached greedy/beam search and teacher-forced target scoring."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet.models import LoadedModel

_NEG = -1.0e9  # the "impossible" score offset, as HF's beam search uses


def _special_ids(lm: LoadedModel, eos_token_id: int | None) -> tuple[int, int, int]:
    cfg = lm.config
    pad = getattr(cfg, "pad_token_id", 0)
    start = getattr(cfg, "decoder_start_token_id", None)
    eos = getattr(cfg, "eos_token_id", None) if eos_token_id is None else eos_token_id
    if eos is None:
        raise ValueError("generate needs an eos_token_id (none given and none in lm.config)")
    pad = 0 if pad is None else int(pad)
    return pad, pad if start is None else int(start), int(eos)


def generate(
    lm: LoadedModel,
    input_ids: Any,
    attention_mask: Any,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
) -> jax.Array:
    """Generated ids [B, max_new_tokens] (no decoder start token; pad after EOS).

    num_beams=1 is greedy; otherwise beam search as HF's (early_stopping=False): finished
    hypotheses scored sum log p / length**length_penalty, the best one returned. One jitted
    program per (model, shapes, settings); the loop stops early once every row is done."""
    if max_new_tokens < 1 or num_beams < 1:
        raise ValueError("max_new_tokens and num_beams must be >= 1")
    pad, start, eos = _special_ids(lm, eos_token_id)
    fn = _compiled_generate(lm.module, int(max_new_tokens), int(num_beams), pad, start)
    # eos and the penalty are traced, so changing them does not recompile.
    return fn(lm.params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32),
              jnp.int32(eos), jnp.float32(length_penalty))


@functools.lru_cache(maxsize=64)
def _compiled_generate(module: Any, max_new_tokens: int, num_beams: int, pad: int, start: int):
    if num_beams == 1:
        body = functools.partial(_greedy, module, max_new_tokens, pad, start)
    else:
        body = functools.partial(_beam_search, module, max_new_tokens, num_beams, pad, start)
    return jax.jit(body)


def _greedy(module, max_new_tokens, pad, start, params, ids_BxS, mask_BxS, eos, length_penalty):
    del length_penalty  # greedy has no use for it
    variables = {"params": params}
    batch = ids_BxS.shape[0]
    enc_BxSxD = module.apply(variables, ids_BxS, mask_BxS, method="encode")
    cache = module.apply(variables, enc_BxSxD, mask_BxS, max_new_tokens, method="init_cache")
    out_BxT = jnp.full((batch, max_new_tokens), pad, jnp.int32)
    state = (jnp.int32(0), jnp.full((batch,), start, jnp.int32), jnp.zeros((batch,), bool),
             out_BxT, cache)

    def cond(state):
        t, _, done_B, _, _ = state
        return (t < max_new_tokens) & ~jnp.all(done_B)

    def step(state):
        t, last_B, done_B, out_BxT, cache = state
        logits_Bx1xV, cache = module.apply(variables, last_B[:, None], cache, mask_BxS,
                                           method="decode_step")
        next_B = jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)
        next_B = jnp.where(done_B, pad, next_B)
        out_BxT = out_BxT.at[:, t].set(next_B)
        return t + 1, next_B, done_B | (next_B == eos), out_BxT, cache

    return jax.lax.while_loop(cond, step, state)[3]


def _gather_BxK(x_BxKx___: jax.Array, idx_BxN: jax.Array) -> jax.Array:
    idx = idx_BxN.reshape(idx_BxN.shape + (1,) * (x_BxKx___.ndim - 2))
    return jnp.take_along_axis(x_BxKx___, idx, axis=1)


def _beam_search(module, max_new_tokens, num_beams, pad, start, params, ids_BxS, mask_BxS, eos,
                 length_penalty):
    variables = {"params": params}
    batch, n, steps = ids_BxS.shape[0], num_beams, max_new_tokens
    keep = 2 * n  # candidates kept per step so n beams can go on even if n just ended
    enc_BxSxD = module.apply(variables, ids_BxS, mask_BxS, method="encode")
    enc_MxSxD = jnp.repeat(enc_BxSxD, n, axis=0)  # M = B * n, beams of a row are adjacent
    mask_MxS = jnp.repeat(mask_BxS, n, axis=0)
    cache = module.apply(variables, enc_MxSxD, mask_MxS, steps, method="init_cache")

    run_seq_BxNxT = jnp.full((batch, n, steps), pad, jnp.int32)
    run_score_BxN = jnp.tile(jnp.where(jnp.arange(n) == 0, 0.0, _NEG)[None], (batch, 1))
    fin_seq_BxNxT = run_seq_BxNxT
    fin_score_BxN = jnp.full((batch, n), _NEG, jnp.float32)
    fin_BxN = jnp.zeros((batch, n), bool)
    open_B = jnp.ones((batch,), bool)  # improvement still possible (HF's early-stop heuristic)
    last_M = jnp.full((batch * n,), start, jnp.int32)
    state = (jnp.int32(0), last_M, cache, run_seq_BxNxT, run_score_BxN.astype(jnp.float32),
             fin_seq_BxNxT, fin_score_BxN, fin_BxN, open_B)

    def cond(state):
        return (state[0] < steps) & jnp.any(state[-1])

    def step(state):
        t, last_M, cache, run_seq, run_score, fin_seq, fin_score, fin, open_B = state
        logits_Mx1xV, cache = module.apply(variables, last_M[:, None], cache, mask_MxS,
                                           method="decode_step")
        logp_BxNxV = jax.nn.log_softmax(logits_Mx1xV[:, 0].astype(jnp.float32), axis=-1)
        vocab = logp_BxNxV.shape[-1]
        logp_BxNxV = logp_BxNxV.reshape(batch, n, vocab) + run_score[:, :, None]
        top_lp_BxK, top_idx_BxK = jax.lax.top_k(logp_BxNxV.reshape(batch, n * vocab), keep)
        src_BxK = top_idx_BxK // vocab
        tok_BxK = (top_idx_BxK % vocab).astype(jnp.int32)
        top_seq_BxKxT = _gather_BxK(run_seq, src_BxK).at[:, :, t].set(tok_BxK)
        hits_BxK = (tok_BxK == eos) | (t == steps - 1)

        # Beams that go on: the best `n` candidates that did not just stop.
        cont_lp_BxK = top_lp_BxK + hits_BxK * _NEG
        _, next_BxN = jax.lax.top_k(cont_lp_BxK, n)
        run_seq = _gather_BxK(top_seq_BxKxT, next_BxN)
        run_score = _gather_BxK(cont_lp_BxK, next_BxN)
        parent_M = (_gather_BxK(src_BxK, next_BxN) + jnp.arange(batch)[:, None] * n).reshape(-1)

        # Finished hypotheses: only stops among the top n ranks count, length-penalised.
        just_BxK = hits_BxK & (jnp.arange(keep) < n)[None]
        fin_lp_BxK = top_lp_BxK / ((t + 1).astype(jnp.float32) ** length_penalty)
        fin_lp_BxK = fin_lp_BxK + (~open_B)[:, None] * _NEG + (~just_BxK) * _NEG
        merged_score = jnp.concatenate([fin_score, fin_lp_BxK], axis=1)
        _, best_BxN = jax.lax.top_k(merged_score, n)
        fin_seq = _gather_BxK(jnp.concatenate([fin_seq, top_seq_BxKxT], axis=1), best_BxN)
        fin_score = _gather_BxK(merged_score, best_BxN)
        fin = _gather_BxK(jnp.concatenate([fin, just_BxK], axis=1), best_BxN)

        layers = cache["layers"]
        layers = dict(layers, self_k=jnp.take(layers["self_k"], parent_M, axis=1),
                      self_v=jnp.take(layers["self_v"], parent_M, axis=1))
        cache = dict(cache, layers=layers)

        best_running_B = run_score[:, 0] / ((t + 1).astype(jnp.float32) ** length_penalty)
        worst_BxN = jnp.where(fin, jnp.min(fin_score, axis=1, keepdims=True), _NEG)
        open_B = open_B & jnp.any(best_running_B[:, None] > worst_BxN, axis=1)
        last_M = run_seq[:, :, t].reshape(-1)
        return (t + 1, last_M, cache, run_seq, run_score, fin_seq, fin_score, fin, open_B)

    final = jax.lax.while_loop(cond, step, state)
    return final[5][:, 0]


def shift_right(target_ids_BxT: Any, start_id: int, pad_id: int) -> jax.Array:
    """Decoder inputs for teacher forcing: start token, then the targets shifted by one."""
    targets = jnp.asarray(target_ids_BxT, jnp.int32)
    shifted = jnp.concatenate([jnp.full_like(targets[:, :1], start_id), targets[:, :-1]], axis=1)
    return jnp.where(shifted < 0, pad_id, shifted)


def score_targets(lm: LoadedModel, input_ids: Any, attention_mask: Any, target_ids: Any,
                  target_mask: Any) -> jax.Array:
    """Teacher-forced sum log p(target) per row [B]; tokens where target_mask is 0 are ignored.

    The rank-classification score: score each candidate answer, pick the largest."""
    pad, start, _ = _special_ids(lm, -1)
    fn = _compiled_score(lm.module, start, pad)
    return fn(lm.params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32),
              jnp.asarray(target_ids, jnp.int32), jnp.asarray(target_mask, jnp.float32))


def teacher_forcing(target_ids_BxT: Any, weights_BxT: Any, start_id: int,
                    pad_id: int) -> tuple[jax.Array, jax.Array]:
    """(targets with pad_id where the weight is 0, the decoder inputs shift_right of them)."""
    safe_BxT = jnp.where(weights_BxT > 0, target_ids_BxT, pad_id)
    return safe_BxT, shift_right(safe_BxT, start_id, pad_id)


def target_log_likelihood(logits_BxTxV: Any, safe_targets_BxT: Any,
                          weights_BxT: Any) -> jax.Array:
    """[B] teacher-forced sum of weights * log p(target token) (float32), from the decoder's
    logits on teacher_forcing's inputs. The one scorer of T5 targets: rank classification
    (score_targets) and T5 PET label scores (jaxpet.scoring.seq2seq) both sum it."""
    logp_BxTxV = jax.nn.log_softmax(jnp.asarray(logits_BxTxV).astype(jnp.float32), axis=-1)
    tok_lp_BxT = jnp.take_along_axis(logp_BxTxV, safe_targets_BxT[..., None], axis=-1)[..., 0]
    return jnp.sum(tok_lp_BxT * weights_BxT, axis=1)


@functools.lru_cache(maxsize=16)
def _compiled_score(module: Any, start: int, pad: int):
    def score(params, ids_BxS, mask_BxS, targets_BxT, weights_BxT):
        safe_BxT, dec_BxT = teacher_forcing(targets_BxT, weights_BxT, start, pad)
        logits_BxTxV = module.apply({"params": params}, ids_BxS, mask_BxS,
                                    decoder_input_ids=dec_BxT)
        return target_log_likelihood(logits_BxTxV, safe_BxT, weights_BxT)

    return jax.jit(score)


def strip_after_eos(tokens_BxT: Any, eos_token_id: int) -> list[list[int]]:
    """Python lists of generated ids, cut before the first EOS (for detokenising)."""
    rows = []
    for row in np.asarray(tokens_BxT).tolist():
        rows.append(row[: row.index(eos_token_id)] if eos_token_id in row else row)
    return rows
