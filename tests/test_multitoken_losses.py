"""Multi-token training losses against numpy ports of the original PET task helpers' math."""

import jax
import numpy as np
import pytest

from jaxpet import losses as mtl

RNG = np.random.default_rng(0)
B, K, V, PAD = 4, 3, 17, 0


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _ce_tokens(lp, targets_BxK):
    """Per-token CE, 0 where the target is -1 (PyTorch's ignore_index with reduction='none')."""
    picked = np.take_along_axis(lp, np.maximum(targets_BxK, 0)[..., None], -1)[..., 0]
    return np.where(targets_BxK >= 0, -picked, 0.0)


@pytest.fixture(scope="module")
def logits():
    return RNG.normal(size=(B, K, V)).astype(np.float32) * 2


def test_generic_multi_mask_hinge(logits):
    targets = np.array([
        [[5, 6, 7], [8, -1, -1], [9, 10, -1]],
        [[1, -1, -1], [2, 3, -1], [4, 4, 4]],
        [[11, 12, -1], [13, -1, -1], [-1, -1, -1]],  # third candidate is padding
        [[14, 15, 16], [3, -1, -1], [6, 6, -1]],
    ])
    labels = np.array([0, 2, 1, -1])
    lp = _log_softmax(logits)
    per_example = []
    for b in range(B):
        if labels[b] < 0:
            continue
        loss_c = [_ce_tokens(lp[b:b + 1], targets[b:b + 1, c])[0].sum() for c in range(3)]
        per_example.append(sum(max(0.0, 1 + loss_c[labels[b]] - loss_c[c]) for c in range(3)
                               if c != labels[b] and (targets[b, c] >= 0).any()))
    got = jax.jit(mtl.multi_mask_hinge_loss)(logits, targets, labels)
    np.testing.assert_allclose(got, np.mean(per_example), rtol=1e-5)


def _pet_token_mean_hinge(lp, correct_BxK, wrongs):
    """As the COPA/ReCoRD helpers: CrossEntropyLoss() means over the batch's valid tokens."""
    def ce(t):
        valid = t >= 0
        return _ce_tokens(lp, t).sum() / valid.sum() if valid.any() else np.nan
    return sum(max(0.0, 1 + ce(correct_BxK) - ce(w)) if not np.isnan(ce(w)) else np.nan
               for w in wrongs)


def test_copa_loss(logits):
    choices = np.array([
        [[5, 6, -1], [7, -1, -1]],
        [[1, 2, 3], [4, 5, -1]],
        [[9, -1, -1], [10, 11, 12]],
        [[13, 14, -1], [15, 16, -1]],
    ])
    labels = np.array([0, 1, 1, 0])
    lp = _log_softmax(logits)
    # PET: correct = choice1 * (1 - label) + choice2 * label, wrong the other one.
    correct = np.where(labels[:, None] == 1, choices[:, 1], choices[:, 0])
    wrong = np.where(labels[:, None] == 1, choices[:, 0], choices[:, 1])
    expected = _pet_token_mean_hinge(lp, correct, [wrong])
    assert expected > 0
    np.testing.assert_allclose(jax.jit(mtl.copa_loss)(logits, choices, labels), expected,
                               rtol=1e-5)


def test_record_loss_skips_slot_padded_for_whole_batch(logits):
    candidates = np.array([
        [[5, 6, -1], [7, -1, -1], [1, 1, -1], [-1, -1, -1]],
        [[1, 2, 3], [4, 5, -1], [-1, -1, -1], [-1, -1, -1]],
        [[9, -1, -1], [10, 11, 12], [2, -1, -1], [-1, -1, -1]],
        [[13, 14, -1], [-1, -1, -1], [3, 8, -1], [-1, -1, -1]],
    ])
    lp = _log_softmax(logits)
    slots = [candidates[:, c] for c in range(1, 4)]
    pet_value = _pet_token_mean_hinge(lp, candidates[:, 0], slots)
    assert np.isnan(pet_value)  # the original code averages slot 3 over zero tokens
    expected = _pet_token_mean_hinge(lp, candidates[:, 0], slots[:2])
    got = jax.jit(mtl.record_loss)(logits, candidates)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.isfinite(np.asarray(jax.jit(jax.grad(mtl.record_loss))(logits, candidates))).all()


def test_wsc_loss_extra_masks_predict_pad(logits):
    mask_positions = np.array([[4, 5, 6], [4, 5, -1], [7, 8, 9], [3, -1, -1]])
    targets = np.array([[5, -1, -1], [8, 9, -1], [1, 2, 3], [6, -1, -1]])
    labels = np.where(targets >= 0, targets, PAD)
    labels = np.where(mask_positions >= 0, labels, -1)
    lp = _log_softmax(logits)
    expected = _ce_tokens(lp, labels).sum() / (labels >= 0).sum()
    got = jax.jit(mtl.wsc_loss, static_argnums=3)(logits, targets, mask_positions, PAD)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def _token_mean_hinge_reference(lp, correct_BxK, wrongs, margin):
    """PET's COPA/ReCoRD hinge at any margin (CE = mean over the batch's valid tokens)."""
    def ce(t):
        return _ce_tokens(lp, t).sum() / (t >= 0).sum()
    return sum(max(0.0, margin + ce(correct_BxK) - ce(w)) for w in wrongs)


def test_token_id_zero_is_a_real_target_and_candidates_are_not_mask_slots():
    # Token id 0 is a word piece like any other (<s> in RoBERTa's vocabulary); C = 3 candidates
    # over K = 2 mask slots and B = 2 examples keep the three axes apart.
    # a local stream: the values must not depend on which tests ran before
    logits_BxKxV = np.random.default_rng(1).normal(size=(2, 2, 5)).astype(np.float32) * 2
    targets_BxCxK = np.array([[[0, -1], [3, 4], [2, -1]], [[1, 0], [0, -1], [-1, -1]]])
    labels_B = np.array([1, 0])
    lp = _log_softmax(logits_BxKxV)
    per_example = []
    for b in range(2):
        loss_c = [_ce_tokens(lp[b:b + 1], targets_BxCxK[b:b + 1, c])[0].sum() for c in range(3)]
        per_example.append(sum(max(0.0, 1 + loss_c[labels_B[b]] - loss_c[c]) for c in range(3)
                               if c != labels_B[b] and (targets_BxCxK[b, c] >= 0).any()))
    got = jax.jit(mtl.multi_mask_hinge_loss)(logits_BxKxV, targets_BxCxK, labels_B)
    # float32 rounding; dropping candidate [0, -1] as padding changes example 0 by O(1)
    np.testing.assert_allclose(got, np.mean(per_example), rtol=1e-5)

    # ReCoRD: candidate 0 is the answer for each of the B = 2 examples (C = 3 differs from B).
    expected = _token_mean_hinge_reference(lp, targets_BxCxK[:, 0], [targets_BxCxK[:, 1],
                                                                       targets_BxCxK[:, 2]], 1.0)
    # float32 rounding; treating token 0 as padding removes tokens from every mean
    np.testing.assert_allclose(jax.jit(mtl.record_loss)(logits_BxKxV, targets_BxCxK), expected,
                               rtol=1e-5)
    wide = _token_mean_hinge_reference(lp, targets_BxCxK[:, 0], [targets_BxCxK[:, 1],
                                                                   targets_BxCxK[:, 2]], 5.0)
    # float32 rounding; a margin of 5 adds 4 per active slot over the default
    np.testing.assert_allclose(mtl.record_loss(logits_BxKxV, targets_BxCxK, 5.0), wide, rtol=1e-5)


def test_a_batch_with_one_correct_token_and_the_default_and_given_margins():
    logits_BxKxV = np.random.default_rng(4).normal(size=(1, 2, 6)).astype(np.float32) * 3
    choices_Bx2xK = np.array([[[0, -1], [3, 5]]])  # the correct choice has one token, id 0
    labels_B = np.array([0])
    lp = _log_softmax(logits_BxKxV)
    wrong = [choices_Bx2xK[:, 1]]
    for margin in (1.0, 2.0, 9.0):
        expected = _token_mean_hinge_reference(lp, choices_Bx2xK[:, 0], wrong, margin)
        assert expected > 0  # the hinge is active, so the margin shows in the value
        # float32 rounding; a mean over max(count, 2) tokens or a dropped margin moves it O(1)
        np.testing.assert_allclose(mtl.copa_loss(logits_BxKxV, choices_Bx2xK, labels_B, margin),
                                   expected, rtol=1e-5)
    default = _token_mean_hinge_reference(lp, choices_Bx2xK[:, 0], wrong, 1.0)
    # float32 rounding; PET's margin is 1
    np.testing.assert_allclose(mtl.token_mean_hinge_loss(logits_BxKxV, choices_Bx2xK, labels_B),
                               default, rtol=1e-5)


def test_copa_refuses_a_third_choice():
    with pytest.raises(ValueError, match="^copa_loss expects 2 choices per example, got 3$"):
        mtl.copa_loss(np.zeros((1, 2, 4)), np.zeros((1, 3, 2), np.int32), np.array([0]))


def test_wsc_slot_at_position_zero_and_target_token_zero_count():
    logits_BxKxV = np.random.default_rng(3).normal(size=(2, 2, 5)).astype(np.float32) * 2
    mask_positions_BxK = np.array([[0, 1], [3, -1]])
    targets_BxK = np.array([[0, -1], [0, -1]])
    pad = 4
    labels_BxK = np.array([[0, pad], [0, -1]])  # slot 1 of example 0 is a mask: it predicts pad
    expected = _ce_tokens(_log_softmax(logits_BxKxV), labels_BxK).sum() / 3
    got = mtl.wsc_loss(logits_BxKxV, targets_BxK, mask_positions_BxK, pad)
    # float32 rounding; skipping the slot at position 0 or target 0 changes the mean by O(1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
