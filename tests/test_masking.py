"""MLM masking: selection rate, 80/10/10 split, excluded positions, fixed-size target slots."""

from functools import partial

import jax
import numpy as np
import pytest

from jaxpet.data.masking import mask_tokens, mask_tokens_positions

PAD, CLS, SEP, MASK, VOCAB = 0, 1, 2, 3, 1000
BATCH, SEQ = 256, 64


@pytest.fixture(scope="module")
def batch():
    """CLS text [MASK] text SEP PAD...; the special mask marks CLS/SEP/PAD but not the slot."""
    rng = np.random.default_rng(0)
    ids = np.full((BATCH, SEQ), PAD, np.int32)
    attn = np.zeros((BATCH, SEQ), np.int32)
    for b in range(BATCH):
        length = int(rng.integers(20, SEQ + 1))
        ids[b, :length] = rng.integers(5, VOCAB, size=length)
        ids[b, 0], ids[b, length - 1] = CLS, SEP
        ids[b, int(rng.integers(1, length - 1))] = MASK
        attn[b, :length] = 1
    special = np.isin(ids, [CLS, SEP, PAD])
    return ids, attn, special


_mask = jax.jit(partial(mask_tokens, vocab_size=VOCAB, mask_token_id=MASK))
_mask_capped = jax.jit(partial(mask_tokens, vocab_size=VOCAB, mask_token_id=MASK, max_targets=3))
_positions = jax.jit(partial(mask_tokens_positions, vocab_size=VOCAB, mask_token_id=MASK),
                     static_argnames=("max_targets", "probability"))


def test_mask_tokens_statistics_and_exclusions(batch):
    ids, attn, special = batch
    inputs, targets, weights = map(np.asarray, _mask(jax.random.key(0), ids, special))
    assert inputs.shape == targets.shape == weights.shape == ids.shape
    selected = weights > 0
    eligible = ~special & (ids != MASK)
    assert not (selected & ~eligible).any()  # never specials, padding or the pattern's slot
    rate = selected.sum() / eligible.sum()
    assert abs(rate - 0.15) < 0.01, rate
    np.testing.assert_array_equal(targets[selected], ids[selected])
    assert (targets[~selected] == -1).all()
    np.testing.assert_array_equal(inputs[~selected], ids[~selected])
    new, old = inputs[selected], ids[selected]
    to_mask = np.mean(new == MASK)
    kept = np.mean(new == old)
    randomised = np.mean((new != MASK) & (new != old))
    assert abs(to_mask - 0.8) < 0.02, to_mask
    assert abs(kept - 0.1) < 0.015, kept  # a random draw equal to the original counts as kept
    assert abs(randomised - 0.1) < 0.015, randomised
    assert new.min() >= 0 and new.max() < VOCAB


def test_mask_tokens_is_deterministic_and_uses_attention_mask(batch):
    ids, attn, special = batch
    first = _mask(jax.random.key(7), ids, special)
    again = _mask(jax.random.key(7), ids, special)
    other = _mask(jax.random.key(8), ids, special)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (np.asarray(first[2]) != np.asarray(other[2])).any()
    # Without PAD in the special mask, the attention mask still keeps padding out.
    no_pad_special = np.isin(ids, [CLS, SEP])
    _, _, weights = _mask(jax.random.key(7), ids, no_pad_special, attention_mask=attn)
    assert not (np.asarray(weights)[attn == 0] > 0).any()


def test_mask_tokens_max_targets_caps_each_row(batch):
    ids, _, special = batch
    _, targets, weights = map(np.asarray, _mask_capped(jax.random.key(1), ids, special))
    counts = (weights > 0).sum(-1)
    assert counts.max() == 3 and (counts >= 1).mean() > 0.9
    assert ((targets >= 0) == (weights > 0)).all()


def test_mask_tokens_positions_fixed_slots(batch):
    ids, attn, special = batch
    num_slots = 12
    inputs, positions, targets, weights = map(np.asarray, _positions(
        jax.random.key(3), ids, special, max_targets=num_slots, attention_mask=attn))
    assert positions.shape == targets.shape == weights.shape == (BATCH, num_slots)
    kept = weights > 0
    eligible = ~special & (ids != MASK)
    rows = np.repeat(np.arange(BATCH)[:, None], num_slots, 1)
    assert eligible[rows[kept], positions[kept]].all()
    np.testing.assert_array_equal(targets[kept], ids[rows[kept], positions[kept]])
    assert (targets[~kept] == -1).all() and (positions[~kept] == 0).all()
    # Kept slots come first, in ascending position order.
    assert (np.diff(kept.astype(int), axis=-1) <= 0).all()
    assert all((np.diff(positions[b][kept[b]]) > 0).all() for b in range(BATCH))
    # Only kept positions may change in the input.
    changed = inputs != ids
    marked = np.zeros_like(changed)
    marked[rows[kept], positions[kept]] = True
    assert not (changed & ~marked).any()
    rate = kept.sum() / eligible.sum()
    assert abs(rate - 0.15) < 0.015, rate  # 12 slots rarely overflow at 15% of <= 62 tokens


def test_mask_tokens_positions_keeps_random_subset_when_overflowing(batch):
    ids, attn, special = batch
    _, positions, _, weights = map(np.asarray, _positions(
        jax.random.key(4), ids, special, max_targets=4, probability=1.0, attention_mask=attn))
    assert (weights > 0).all()  # every row draws far more than 4 targets
    lengths = attn.sum(-1)
    # A random subset, not the leftmost 4: the largest kept position is spread over the row.
    assert np.mean(positions[:, -1] > lengths / 2) > 0.7
    assert len({tuple(p) for p in positions}) > BATCH * 0.9
