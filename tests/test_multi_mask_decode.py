"""multi_mask_decode / multi_mask_generate against a step-by-step Python port of PET's loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxpet.decoding import (
    multi_mask_decode,
    multi_mask_generate,
    wsc_generated_text,
    wsc_string_match,
)
from jaxpet.decoding.multi_mask import make_multi_mask_decoder

VOCAB, SEQ, WIDTH, K_MAX, NUM_EX, NUM_CAND = 40, 12, 16, 4, 8, 5
PAD, CLS, SEP, MASK = 0, 1, 2, 3
MASK_START = 5


def _init_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "embed": rng.normal(size=(VOCAB, WIDTH)).astype(np.float32),
        "pos": rng.normal(size=(SEQ, WIDTH)).astype(np.float32),
        "types": rng.normal(size=(2, WIDTH)).astype(np.float32),
        "mix": rng.normal(size=(WIDTH, WIDTH)).astype(np.float32) / math.sqrt(WIDTH),
        "out": rng.normal(size=(WIDTH, WIDTH)).astype(np.float32) / math.sqrt(WIDTH),
    }


def _apply(params, input_ids, attention_mask, positions, token_type_ids=None):
    """A tiny deterministic 'MLM': every output depends on all attended tokens and on position."""
    h = params["embed"][input_ids] + params["pos"][None, : input_ids.shape[1]]
    if token_type_ids is not None:
        h = h + params["types"][token_type_ids]
    weights = attention_mask[..., None].astype(h.dtype)
    context = jnp.sum(jnp.tanh(h @ params["mix"]) * weights, 1) / jnp.sum(weights, 1)
    at_pos = jnp.take_along_axis(h, positions[..., None], axis=1)
    hidden = jnp.tanh(at_pos @ params["out"] + 2.0 * context[:, None, :])
    return 3.0 * hidden @ params["embed"].T


PARAMS = jax.tree.map(jnp.asarray, _init_params())


def logits_fn(input_ids, attention_mask, positions, token_type_ids=None):
    return _apply(PARAMS, input_ids, attention_mask, positions, token_type_ids)


_jitted_logits_fn = jax.jit(logits_fn)


def _row_probs(row_ids, row_attn, row_pos, row_types=None):
    """Softmax over the vocabulary at the mask slots of one row, in float32 numpy."""
    tt = None if row_types is None else row_types[None]
    logits = np.asarray(_jitted_logits_fn(row_ids[None], row_attn[None],
                                          np.maximum(row_pos, 0)[None], tt))[0]
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def _make_batch(seed: int, distinct_inputs: bool = False):
    """N examples x C candidates of lengths 1..4 (repeats included), some candidates padding."""
    rng = np.random.default_rng(seed)
    ids = np.full((NUM_EX, NUM_CAND, SEQ), PAD, np.int32)
    attn = np.zeros((NUM_EX, NUM_CAND, SEQ), np.int32)
    types = np.zeros((NUM_EX, NUM_CAND, SEQ), np.int32)
    pos = np.full((NUM_EX, NUM_CAND, K_MAX), -1, np.int32)
    tgt = np.full((NUM_EX, NUM_CAND, K_MAX), -1, np.int32)
    for n in range(NUM_EX):
        prefix = rng.integers(4, VOCAB, size=MASK_START - 1)
        suffix = rng.integers(4, VOCAB, size=2)
        lengths = rng.integers(1, K_MAX + 1, size=NUM_CAND)
        lengths[:2] = lengths[0]  # two candidates of one length share their first pass
        if n % 3 == 2:
            lengths[-1] = 0  # a padded candidate slot
        for c, length in enumerate(lengths):
            if length == 0:
                continue
            row = [CLS, *prefix, *[MASK] * length, *suffix, SEP]
            if distinct_inputs:
                row[1] = 4 + c  # every row differs: no first pass can be shared
            ids[n, c, : len(row)] = row
            attn[n, c, : len(row)] = 1
            types[n, c, MASK_START + length:len(row)] = 1
            pos[n, c, :length] = np.arange(MASK_START, MASK_START + length)
            tgt[n, c, :length] = rng.integers(4, VOCAB, size=length)
    return ids, attn, pos, tgt, types


def _reference_scores(ids, attn, pos, tgt, strategy, types=None):
    """PET's eval loop: one row at a time, re-run the model after every filled mask."""
    scores = np.full(ids.shape[:2], -np.inf)
    for n in range(ids.shape[0]):
        for c in range(ids.shape[1]):
            masks = [(k, int(pos[n, c, k]), int(tgt[n, c, k])) for k in range(K_MAX)
                     if pos[n, c, k] >= 0]
            if not masks:
                continue
            row = ids[n, c].copy()
            log_probs = []
            while masks:
                probs = _row_probs(row, attn[n, c], pos[n, c],
                                   None if types is None else types[n, c])
                if strategy == "parallel":
                    log_probs += [math.log(probs[k, t]) for k, _, t in masks]
                    break
                candidates = masks[:1] if strategy == "ltr" else masks
                best = None
                for k, p, t in candidates:
                    if best is None or probs[k, t] > probs[best[0], best[2]]:
                        best = (k, p, t)
                log_probs.append(math.log(probs[best[0], best[2]]))
                row[best[1]] = best[2]
                masks.remove(best)
            scores[n, c] = sum(log_probs)
    return scores


@pytest.fixture(scope="module")
def batch():
    ids, attn, pos, tgt, types = _make_batch(seed=0)
    # Rows still active at steps 1, 2, 3 must hit each row bucket (40, 20, 10 rows).
    active = [((pos >= 0).sum(-1) > step).sum() for step in (1, 2, 3)]
    assert active[0] > 20 and 10 < active[1] <= 20 and 0 < active[2] <= 10, active
    return ids, attn, pos, tgt, types


def _decode(ids, attn, pos, tgt, types, strategy, cand=None, **kwargs):
    """Every call passes the same argument kinds, so each configuration compiles once."""
    cand = np.ones(ids.shape[:2], bool) if cand is None else cand
    return np.asarray(multi_mask_decode(logits_fn, ids, attn, pos, tgt, strategy=strategy,
                                        candidate_mask_NxC=cand, token_type_ids=types,
                                        **kwargs))


def _assert_scores_equal(got, expected, tol=1e-4):
    assert got.shape == expected.shape == (NUM_EX, NUM_CAND)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=tol, atol=tol)


@pytest.mark.parametrize("strategy", ["max_first", "ltr", "parallel"])
def test_decode_matches_python_reference(batch, strategy):
    expected = _reference_scores(*batch[:4], strategy, batch[4])
    got = _decode(*batch, strategy)
    _assert_scores_equal(got, expected)
    if strategy == "max_first":  # shared first pass and row buckets off: the same scores
        plain = _decode(*batch, strategy, reuse_first_pass=False, row_buckets=1)
        _assert_scores_equal(plain, got, tol=1e-6)


def test_strategies_differ_and_filled_tokens_matter(batch):
    results = {s: _decode(*batch, s) for s in ["max_first", "ltr", "parallel"]}
    pos = batch[2]
    multi = (pos >= 0).sum(-1) > 1
    # On multi-token candidates the conditional scores differ from the one-pass scores.
    assert np.abs(results["max_first"][multi] - results["parallel"][multi]).max() > 1e-3
    assert np.abs(results["max_first"][multi] - results["ltr"][multi]).max() > 1e-3
    single = (pos >= 0).sum(-1) == 1
    np.testing.assert_allclose(results["ltr"][single], results["parallel"][single], rtol=1e-5)


def test_reuse_fallback_with_distinct_inputs_and_candidate_mask():
    """5 distinct inputs per example exceed the 4 shared first passes: the fallback branch."""
    distinct = _make_batch(seed=2, distinct_inputs=True)
    cand = np.ones((NUM_EX, NUM_CAND), bool)
    cand[0, 1] = False
    got = _decode(*distinct, "max_first", cand)
    expected = _reference_scores(*distinct[:4], "max_first", distinct[4])
    expected[0, 1] = -np.inf
    _assert_scores_equal(got, expected)
    plain = _decode(*distinct, "max_first", cand, reuse_first_pass=False, row_buckets=1)
    _assert_scores_equal(plain, got, tol=1e-6)


def test_sharded_rows_on_eight_devices(batch):
    assert jax.device_count() == 8, "tests/conftest.py should provide 8 fake CPU devices"
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    args = [jax.device_put(x, sharding) for x in batch[:4]]
    # One compaction block per device: rows that finish early never move across devices.
    decode = make_multi_mask_decoder(_apply, strategy="max_first", row_blocks=8)
    params = jax.device_put(PARAMS, NamedSharding(mesh, PartitionSpec()))
    types = jax.device_put(batch[4], sharding)
    hlo = decode.lower(params, *args, token_type_ids=types).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    got = decode(params, *args, token_type_ids=types)
    assert got.sharding.spec[0] == "data"
    # against PET's step-by-step loop, not the unsharded decoder: a sharding bug that the
    # unsharded program shares (or masks) would otherwise compare equal to itself
    expected = _reference_scores(*batch[:4], "max_first", batch[4])
    _assert_scores_equal(np.asarray(got), expected, tol=1e-5)


def test_decode_rejects_inconsistent_targets(batch):
    ids, attn, pos, tgt, _ = batch
    bad = tgt.copy()
    bad[0, 0, 0] = -1
    with pytest.raises(ValueError, match="example 0, candidate 0"):
        multi_mask_decode(logits_fn, ids, attn, pos, bad)
    with pytest.raises(ValueError, match="strategy"):
        multi_mask_decode(logits_fn, ids, attn, pos, tgt, strategy="best")
    with pytest.raises(ValueError, match="row_blocks=3"):
        multi_mask_decode(logits_fn, ids, attn, pos, tgt, row_blocks=3)


def _reference_generate(ids, attn, pos, strategy):
    """PET's WSC loop: fill the argmax token of the most confident (or leftmost, or all) mask."""
    tokens = np.full(pos.shape, -1)
    for n in range(ids.shape[0]):
        row = ids[n].copy()
        remaining = [k for k in range(pos.shape[1]) if pos[n, k] >= 0]
        while remaining:
            probs = _row_probs(row, attn[n], pos[n])
            considered = remaining[:1] if strategy == "ltr" else remaining
            best, best_score = None, -1.0
            for k in considered:
                top = int(np.argmax(probs[k]))
                if strategy == "parallel":
                    row[pos[n, k]], tokens[n, k] = top, top
                elif probs[k, top] > best_score:
                    best, best_score = (k, top), probs[k, top]
            if strategy == "parallel":
                break
            row[pos[n, best[0]]], tokens[n, best[0]] = best[1], best[1]
            remaining.remove(best[0])
    return tokens


@pytest.mark.parametrize("strategy", ["max_first", "ltr", "parallel"])
def test_generate_matches_python_reference(batch, strategy):
    ids, attn, pos, _, _ = batch
    rows = (np.arange(NUM_EX), np.arange(NUM_EX) % 3)  # one row per example, lengths vary
    ids2, attn2, pos2 = ids[rows], attn[rows], pos[rows]
    got = np.asarray(multi_mask_generate(logits_fn, ids2, attn2, pos2, strategy=strategy))
    np.testing.assert_array_equal(got, _reference_generate(ids2, attn2, pos2, strategy))
    assert ((got >= 0) == (pos2 >= 0)).all()


def test_wsc_string_match():
    assert wsc_string_match("The Trophy", "trophy")
    assert wsc_string_match("trophy", "the trophy!")
    assert wsc_string_match("Mr. Smith", "mr smith's")  # "s" of "smith's" is a separate word
    assert not wsc_string_match("the suitcase", "the trophy")
    assert wsc_string_match("", "anything")  # an empty generation matches, as in PET


def test_wsc_generated_text_drops_unused_slots_and_special_tokens():
    class WordTokenizer:
        all_special_ids = [PAD, CLS, SEP, MASK]
        vocab = {PAD: "[PAD]", 7: "the", 8: "trophy"}

        def decode(self, ids):
            return " ".join(self.vocab[i] for i in ids)

    text = wsc_generated_text(WordTokenizer(), np.array([7, PAD, 8, -1]))
    assert text == "the trophy"
    assert wsc_string_match(text, "The trophy")
