"""multi_mask_decode's branches, run eagerly on tiny shapes, against a numpy port of PET's loops."""

from collections.abc import Iterator
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet.decoding.multi_mask import make_multi_mask_decoder, multi_mask_decode

# One shape for every decode here (N examples x C candidates x K slots, S tokens): eagerly each
# primitive compiles once per shape, so a second shape would double the cost. C > K makes the
# shared first pass reachable (it needs more candidates than the K distinct lengths).
VOCAB, SEQ, WIDTH, NUM_EX, NUM_CAND, K_MAX = 12, 8, 6, 2, 4, 3
PAD, CLS, SEP, MASK = 0, 1, 2, 3

_rng = np.random.default_rng(7)
PARAMS_NP = {
    "embed": _rng.normal(size=(VOCAB, WIDTH)).astype(np.float32),
    "pos": _rng.normal(size=(SEQ, WIDTH)).astype(np.float32),
    "types": _rng.normal(size=(2, WIDTH)).astype(np.float32),
}
PARAMS = {k: jnp.asarray(v) for k, v in PARAMS_NP.items()}


@pytest.fixture(autouse=True, scope="module")
def eager() -> Iterator[None]:
    """Eager dispatch compiles each primitive once instead of XLA-compiling every decoder
    configuration: this file runs in seconds, which makes mutation testing affordable. The
    lax loops, cond and switch run the same computations one step at a time."""
    with jax.disable_jit():
        yield


def _apply(params, input_ids, attention_mask, positions, token_type_ids=None, xp=jnp):
    """A tiny 'MLM' (jnp or numpy): each logit depends on every attended token, the position
    and the token type, so a filled mask, the attention mask and the types all change it."""
    h = params["embed"][input_ids] + params["pos"][None, : input_ids.shape[1]]
    if token_type_ids is not None:
        h = h + params["types"][token_type_ids]
    weights = attention_mask[..., None].astype(h.dtype)
    context = xp.sum(xp.tanh(h) * weights, 1) / xp.sum(weights, 1)
    at_pos = xp.take_along_axis(h, positions[..., None], axis=1)
    return 3.0 * xp.tanh(at_pos + 2.0 * context[:, None, :]) @ params["embed"].T


_apply_jit = jax.jit(_apply, static_argnames="xp")


def apply_fn(params, input_ids, attention_mask, positions, token_type_ids=None):
    # The stand-in model is not under test: one compiled program per shape instead of its
    # ~30 primitives each dispatched (and compiled) on its own under disable_jit.
    with jax.disable_jit(False):
        return _apply_jit(params, input_ids, attention_mask, positions, token_type_ids)


def logits_fn(input_ids, attention_mask, positions, token_type_ids=None):
    return apply_fn(PARAMS, input_ids, attention_mask, positions, token_type_ids)


def _np_log_probs(row, attn, pos, types):
    """float64 numpy log softmax over the vocabulary at each slot's position."""
    tt = None if types is None else types[None].astype(np.int64)
    logits = _apply(PARAMS_NP, row[None].astype(np.int64), attn[None], np.maximum(pos, 0)[None],
                    tt, xp=np)[0].astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _reference(ids, attn, pos, tgt, strategy, types=None, cand=None):
    """PET's evaluation loop, one row at a time: re-run the model after every filled mask;
    max_first fills the slot whose own target is most probable, ltr the leftmost position,
    parallel scores every slot from the first pass; the score sums the log-probs."""
    scores = np.full(ids.shape[:2], -np.inf)
    for n in range(ids.shape[0]):
        for c in range(ids.shape[1]):
            masks = [(k, int(pos[n, c, k]), int(tgt[n, c, k])) for k in range(pos.shape[2])
                     if pos[n, c, k] >= 0]
            if not masks or (cand is not None and not cand[n, c]):
                continue
            row = ids[n, c].copy()
            total = 0.0
            while masks:
                lp = _np_log_probs(row, attn[n, c], pos[n, c],
                                   None if types is None else types[n, c])
                if strategy == "parallel":
                    total += sum(lp[k, t] for k, _, t in masks)
                    break
                if strategy == "ltr":
                    best = min(masks, key=lambda m: m[1])
                else:
                    best = max(masks, key=lambda m: lp[m[0], m[2]])
                total += lp[best[0], best[2]]
                row[best[1]] = best[2]
                masks.remove(best)
            scores[n, c] = total
    return scores


def _batch(lengths, shuffle_slots=False, distinct=False, seed=0):
    """Rows [CLS] a b [MASK]*len c [SEP] (padded to SEQ) for lengths[n][c] (0 = no candidate).

    Candidates of equal length share their input row, as PET's length groups do; `distinct`
    makes every row's input differ instead. `shuffle_slots` lists the mask positions out of
    order (slot 0 is not the leftmost mask).
    """
    rng = np.random.default_rng(seed)
    ids = np.full((NUM_EX, NUM_CAND, SEQ), PAD, np.int32)
    attn = np.zeros_like(ids)
    types = np.zeros_like(ids)
    pos = np.full((NUM_EX, NUM_CAND, K_MAX), -1, np.int32)
    tgt = np.full_like(pos, -1)
    for n in range(NUM_EX):
        a, b, c_tok = rng.integers(4, VOCAB, size=3)
        for c, length in enumerate(lengths[n]):
            if length == 0:
                continue
            row = [CLS, a, b, *[MASK] * length, c_tok, SEP]
            if distinct:
                row[1] = 4 + c
            ids[n, c, : len(row)] = row
            attn[n, c, : len(row)] = 1
            types[n, c, 3 + length:len(row)] = 1
            slots = np.arange(3, 3 + length)
            if shuffle_slots:
                slots = slots[::-1] if length != 3 else slots[[1, 2, 0]]
            pos[n, c, :length] = slots
            tgt[n, c, :length] = rng.integers(4, VOCAB, size=length)
    return ids, attn, pos, tgt, types


# Row-count patterns (M = 8 rows; row_buckets=3 sizes 8, 4, 2): MIXED keeps 6 rows active after
# step 0 and 3 after step 1 (sizes 8 then 4); FEW keeps 2 then 1 (size 2 twice); SHORT ends
# every row by step 1 (step 2 runs no forward). MIXED shares first passes (3 distinct
# lengths per example = K groups); DISTINCT has 4 distinct inputs in example 1 (> K: fallback).
MIXED = [[2, 2, 3, 1], [3, 1, 2, 3]]
FEW = [[1, 2, 1, 3], [1, 1, 0, 1]]
SHORT = [[1, 2, 2, 1], [2, 1, 0, 1]]


def _decode(batch, strategy, cand=None, types=True, **kwargs):
    ids, attn, pos, tgt, tt = batch
    return np.asarray(multi_mask_decode(
        logits_fn, ids, attn, pos, tgt, strategy=strategy, candidate_mask_NxC=cand,
        token_type_ids=tt if types else None, **kwargs,
    ))


def _check(got, expected):
    assert got.shape == expected.shape == (NUM_EX, NUM_CAND)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    finite = np.isfinite(expected)
    # float32 vs float64 over <= 3 steps: catches any wrong slot, token or step (>> 1e-3).
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strategy", ["max_first", "ltr", "parallel"])
@pytest.mark.parametrize("pattern", ["mixed", "few", "short"])
def test_scores_follow_pets_loop(strategy, pattern):
    lengths = {"mixed": MIXED, "few": FEW, "short": SHORT}[pattern]
    batch = _batch(lengths, shuffle_slots=strategy != "parallel", seed=len(pattern))
    cand = np.ones((NUM_EX, NUM_CAND), bool)
    cand[1, 3] = False  # a valid row the caller switched off
    got = _decode(batch, strategy, cand)
    _check(got, _reference(*batch[:4], strategy, batch[4], cand))


@pytest.mark.parametrize("strategy", ["max_first", "ltr"])
def test_distinct_inputs_fall_back_to_one_pass_per_row(strategy):
    # Example 1 has 4 distinct input rows, more than K = 3 shared first passes; example 0
    # keeps MIXED's shared rows (the same seed draws the same tokens and targets).
    ids, attn, pos, tgt, types = _batch(MIXED, distinct=True, seed=3)
    shared = _batch(MIXED, seed=3)
    for arr, same in zip((ids, attn, types), (shared[0], shared[1], shared[4]), strict=True):
        arr[0] = same[0]
    batch = ids, attn, pos, tgt, types
    _check(_decode(batch, strategy), _reference(ids, attn, pos, tgt, strategy, types))


def test_without_token_types_candidate_mask_or_sharing():
    batch = _batch(MIXED, shuffle_slots=True, seed=5)
    expected = _reference(*batch[:4], "max_first")
    _check(_decode(batch, "max_first", types=False), expected)
    _check(_decode(batch, "max_first", types=False, reuse_first_pass=False, row_buckets=1),
           expected)


def test_row_blocks_compact_within_blocks():
    # Two blocks of 4 rows (sizes 4, 2, 1): example 0 keeps 3 rows active after step 0,
    # example 1 one row.
    batch = _batch([[2, 2, 3, 1], [1, 1, 0, 2]], shuffle_slots=True, seed=6)
    got = _decode(batch, "max_first", row_blocks=2)
    _check(got, _reference(*batch[:4], "max_first", batch[4]))


def test_make_decoder_traces_params():
    batch = _batch(MIXED, shuffle_slots=True, seed=8)
    decode = make_multi_mask_decoder(apply_fn, strategy="ltr", row_blocks=2)
    ids, attn, pos, tgt, types = batch
    cand = np.ones((NUM_EX, NUM_CAND), bool)
    cand[0, 0] = False
    got = np.asarray(decode(PARAMS, ids, attn, pos, tgt, cand, types))
    _check(got, _reference(ids, attn, pos, tgt, "ltr", types, cand))
    with pytest.raises(ValueError, match="row_blocks=3 must be >= 1 and divide"):
        make_multi_mask_decoder(apply_fn, row_blocks=3)(PARAMS, ids, attn, pos, tgt)
    with pytest.raises(ValueError, match="unknown decoding strategy 'best'"):
        make_multi_mask_decoder(apply_fn, strategy="best")


def test_inputs_are_checked():
    ids, attn, pos, tgt, _ = _batch(MIXED)
    with pytest.raises(ValueError, match=r"unknown decoding strategy 'best'; expected one of"):
        multi_mask_decode(logits_fn, ids, attn, pos, tgt, strategy="best")
    with pytest.raises(ValueError, match=r"expects input_ids \[N, C, S\].*got \(2, 4\)"):
        multi_mask_decode(logits_fn, ids[..., 0], attn, pos, tgt)
    with pytest.raises(ValueError, match=r"mask_positions \[N, C, K\], got .* and \(2, 4\)"):
        multi_mask_decode(logits_fn, ids, attn, pos[..., 0], tgt[..., 0])
    with pytest.raises(ValueError, match=r"target_ids shape \(2, 4, 2\) differs from "
                                         r"mask_positions shape \(2, 4, 3\)"):
        multi_mask_decode(logits_fn, ids, attn, pos, tgt[..., :2])
    bad = tgt.copy()
    bad[1, 2, 1] = -1  # a mask without a target token
    with pytest.raises(ValueError, match=r"example 1, candidate 2\) slot 1: mask position 4 and "
                                         r"target id -1 disagree; every mask of a candidate row "
                                         r"needs exactly one target token \(use -1 for both in "
                                         r"unused slots\)$"):
        multi_mask_decode(logits_fn, ids, attn, pos, bad)
    # concrete jax arrays are checked as well as numpy arrays
    with pytest.raises(ValueError, match=r"example 1, candidate 2\) slot 1"):
        multi_mask_decode(logits_fn, ids, attn, jnp.asarray(pos), jnp.asarray(bad))
    bad = pos.copy()
    bad[0, 3, 2] = 7  # a target slot without a mask
    with pytest.raises(ValueError, match=r"example 0, candidate 3\) slot 2: mask position 7"):
        multi_mask_decode(logits_fn, ids, attn, bad, tgt)
    for blocks in (0, 3):
        with pytest.raises(ValueError, match=rf"row_blocks={blocks} must be >= 1 and divide the "
                                             r"number of examples \(2\)"):
            multi_mask_decode(logits_fn, ids, attn, pos, tgt, row_blocks=blocks)


def test_traced_inputs_and_one_example_use_the_documented_defaults():
    """Inside a caller's trace the mask values are not checked (they are unknown), and the
    default row_blocks=1 accepts any number of examples; eval_shape traces without compiling."""
    ids, attn, pos, tgt, _ = _batch(MIXED)

    def decode(p, t):
        return multi_mask_decode(logits_fn, ids, attn, p, t)

    out = jax.eval_shape(decode, pos, tgt)
    assert (out.shape, out.dtype) == ((NUM_EX, NUM_CAND), jnp.float32)
    one = [x[:1] for x in (ids, attn, pos, tgt)]
    assert jax.eval_shape(lambda *a: multi_mask_decode(logits_fn, *a), *one).shape == (1, NUM_CAND)
    decoder = make_multi_mask_decoder(apply_fn)
    assert jax.eval_shape(decoder, PARAMS, *one).shape == (1, NUM_CAND)


def test_mask_at_position_zero_and_target_id_zero_are_ordinary_values():
    ids, attn, pos, tgt, types = _batch(MIXED, seed=9)
    # row (0, 2): its first mask moves to position 0; row (1, 0): a slot's target is token 0
    ids[0, 2, 0], pos[0, 2, 0] = MASK, 0
    tgt[1, 0, 1] = 0
    batch = ids, attn, pos, tgt, types
    # parallel sums every slot's first-pass log-prob, the slot with target 0 included
    for strategy in ("max_first", "parallel"):
        _check(_decode(batch, strategy), _reference(ids, attn, pos, tgt, strategy, types))


def test_forward_passes_run_on_the_documented_row_counts():
    """By default the first pass runs once per distinct input row (N * min(C, K) rows when C > K,
    as PET's candidates of one length share it), and each later step on the smallest of M, M/2,
    M/4 rows (row_buckets=3) that holds the rows still holding masks, in one block."""
    rows = []

    def recording_apply(params, input_ids, *args, **kwargs):
        rows.append(input_ids.shape[0])
        return apply_fn(params, input_ids, *args, **kwargs)

    # FEW: 2 * 3 shared first-pass rows; then 2 rows active (size 2 of 8, 4, 2), then 1 (size 2)
    ids, attn, pos, tgt, types = _batch(FEW, seed=4)
    expected = _reference(ids, attn, pos, tgt, "max_first")
    got = multi_mask_decode(partial(recording_apply, PARAMS), ids, attn, pos, tgt)
    _check(np.asarray(got), expected)
    assert rows == [NUM_EX * K_MAX, 2, 2]
    rows.clear()
    got = make_multi_mask_decoder(recording_apply)(PARAMS, ids, attn, pos, tgt)
    _check(np.asarray(got), expected)
    assert rows == [NUM_EX * K_MAX, 2, 2]
    # reuse_first_pass=False: the first pass runs on all N * C rows
    rows.clear()
    got = multi_mask_decode(partial(recording_apply, PARAMS), ids, attn, pos, tgt,
                            reuse_first_pass=False)
    _check(np.asarray(got), expected)
    assert rows == [NUM_EX * NUM_CAND, 2, 2]
    # row_buckets=1: one size, every later step runs on all M = 8 rows
    rows.clear()
    got = make_multi_mask_decoder(recording_apply, row_buckets=1)(PARAMS, ids, attn, pos, tgt)
    _check(np.asarray(got), expected)
    assert rows == [NUM_EX * K_MAX, 8, 8]
    # Two blocks of 4 rows (sizes 4, 2, 1 per block): the busiest block sets the size.
    rows.clear()
    got = make_multi_mask_decoder(recording_apply, row_blocks=2)(PARAMS, ids, attn, pos, tgt)
    _check(np.asarray(got), expected)
    assert rows == [NUM_EX * K_MAX, 2 * 2, 2 * 1]
    # SHORT: 3 rows active after step 0 (size 4), none after step 1: no forward at all.
    rows.clear()
    ids, attn, pos, tgt, types = _batch(SHORT, seed=4)
    got = multi_mask_decode(partial(recording_apply, PARAMS), ids, attn, pos, tgt, strategy="ltr")
    _check(np.asarray(got), _reference(ids, attn, pos, tgt, "ltr"))
    assert rows == [NUM_EX * K_MAX, 4]
