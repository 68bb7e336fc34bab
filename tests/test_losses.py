"""jaxpet.losses against direct numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import losses as eager_losses


class _Jitted:
    """Each loss wrapped in jax.jit: one compile per call site instead of one per primitive."""

    _static = {"seq2seq_loss": (3, 4)}

    def __getattr__(self, name):
        return jax.jit(getattr(eager_losses, name), static_argnums=self._static.get(name, ()))


losses = _Jitted()
RNG = np.random.default_rng(0)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_label_logits_mean_over_words_ignoring_padding():
    logits = RNG.normal(size=(3, 20)).astype(np.float32)
    verbalizer = np.array([[4, -1, -1], [7, 9, -1], [1, 2, 3]])
    got = np.asarray(losses.label_logits(logits, verbalizer))
    expected = np.stack(
        [logits[:, 4], (logits[:, 7] + logits[:, 9]) / 2, logits[:, [1, 2, 3]].mean(-1)], -1
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_cloze_loss_ignores_unlabeled_and_handles_none_labeled():
    scores = RNG.normal(size=(5, 3)).astype(np.float32)
    labels = np.array([0, -1, 2, 1, -1])
    lp = _log_softmax(scores)
    valid = labels >= 0
    expected = -lp[np.arange(5)[valid], labels[valid]].mean()
    np.testing.assert_allclose(losses.cloze_loss(scores, labels), expected, rtol=1e-5)
    none = np.full(5, -1)
    value, grad = jax.jit(jax.value_and_grad(eager_losses.cloze_loss))(jnp.asarray(scores), none)
    assert float(value) == 0.0 and np.isfinite(np.asarray(grad)).all()


def test_classification_losses_hard_and_soft():
    logits = RNG.normal(size=(4, 3)).astype(np.float32)
    labels = np.array([2, 0, -1, 1])
    weights = np.array([1.0, 0.5, 1.0, 0.0])
    lp = _log_softmax(logits)
    ce = -lp[np.arange(4), np.maximum(labels, 0)]
    w = weights * (labels >= 0)
    np.testing.assert_allclose(
        losses.classification_loss(logits, labels, weights), (ce * w).sum() / w.sum(), rtol=1e-5
    )
    probs = np.exp(_log_softmax(RNG.normal(size=(4, 3))))
    soft = -(probs * lp).sum(-1)
    np.testing.assert_allclose(
        losses.soft_classification_loss(logits, probs, weights),
        (soft * weights).sum() / weights.sum(), rtol=1e-5,
    )


def test_mlm_loss_weighted_token_mean():
    logits = RNG.normal(size=(2, 4, 11)).astype(np.float32)
    targets = np.array([[3, 5, -1, 0], [10, 2, 2, -1]])
    weights = np.array([[1, 1, 0, 1], [1, 0, 1, 1]], np.float32)
    lp = _log_softmax(logits)
    w = weights * (targets >= 0)
    ce = -np.take_along_axis(lp, np.maximum(targets, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        losses.mlm_loss(logits, targets, weights), (ce * w).sum() / w.sum(), rtol=1e-5
    )
    value, grad = jax.jit(jax.value_and_grad(eager_losses.mlm_loss))(
        jnp.asarray(logits), targets, np.zeros_like(weights)
    )
    assert float(value) == 0.0 and np.isfinite(np.asarray(grad)).all()


def test_pet_loss_alpha_conventions():
    cloze, mlm = 0.7, 3.0
    # Paper: L = (1 - alpha) L_CE + alpha L_MLM with alpha = 1e-4.
    assert eager_losses.pet_loss(cloze, mlm) == pytest.approx(0.9999 * cloze + 1e-4 * mlm)
    # The original command line's --alpha 0.9999 weighs the cloze loss: the same number.
    cli_alpha = 0.9999
    assert eager_losses.pet_loss(cloze, mlm, alpha=1 - cli_alpha) == pytest.approx(
        cli_alpha * cloze + (1 - cli_alpha) * mlm
    )
    assert eager_losses.pet_loss(cloze, mlm, alpha=0.25) == pytest.approx(0.75 * cloze + 0.25 * mlm)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.5])
def test_distillation_loss_kl_times_t_squared(temperature):
    student = RNG.normal(size=(6, 4)).astype(np.float32)
    teacher = RNG.normal(size=(6, 4)).astype(np.float32) * 3
    q_log = _log_softmax(teacher / temperature)
    p_log = _log_softmax(student / temperature)
    kl = (np.exp(q_log) * (q_log - p_log)).sum(-1)
    expected = kl.mean() * temperature**2
    got = losses.distillation_loss(student, teacher, temperature=temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    weights = np.array([1, 1, 0, 1, 0, 1], np.float32)
    np.testing.assert_allclose(
        losses.distillation_loss(student, teacher, temperature, weights),
        kl[weights > 0].mean() * temperature**2, rtol=1e-5,
    )
    # Same gradient as soft-target cross-entropy scaled by T^2 (KL differs by a constant).
    grad_kl = jax.jit(jax.grad(eager_losses.distillation_loss))(student, teacher, temperature)
    soft_ce = eager_losses.soft_classification_loss
    grad_ce = jax.jit(jax.grad(
        lambda s: soft_ce(s / temperature, np.exp(q_log)) * temperature**2
    ))(student)
    np.testing.assert_allclose(grad_kl, grad_ce, rtol=1e-4, atol=1e-6)


def test_hinge_loss_with_padded_candidates_and_ignored_labels():
    scores = RNG.normal(size=(4, 3)).astype(np.float32)
    labels = np.array([1, 0, -1, 2])
    cand = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 1]], bool)
    padded = np.where(cand, scores, -np.inf).astype(np.float32)
    expected = []
    for b in range(4):
        if labels[b] < 0:
            continue
        expected.append(sum(max(0.0, 1.0 - scores[b, labels[b]] + scores[b, c])
                            for c in range(3) if c != labels[b] and cand[b, c]))
    got, grad = jax.jit(jax.value_and_grad(eager_losses.hinge_loss))(
        jnp.asarray(padded), labels, 1.0, cand
    )
    np.testing.assert_allclose(got, np.mean(expected), rtol=1e-5)
    assert np.isfinite(np.asarray(grad)).all()
    margin_two = losses.hinge_loss(scores, np.array([0, 0, 0, 0]), margin=2.0)
    expected_two = np.mean([sum(max(0.0, 2.0 - s[0] + s[c]) for c in (1, 2)) for s in scores])
    np.testing.assert_allclose(margin_two, expected_two, rtol=1e-5)


def test_multi_token_log_likelihood_sums_valid_slots():
    logits = RNG.normal(size=(2, 3, 9)).astype(np.float32)
    targets = np.array([[[1, 2, 3], [4, -1, -1], [-1, -1, -1]],
                        [[8, 0, -1], [5, 5, 5], [2, -1, -1]]])
    lp = _log_softmax(logits)
    expected = np.zeros((2, 3))
    for b in range(2):
        for c in range(3):
            expected[b, c] = sum(lp[b, k, t] for k, t in enumerate(targets[b, c]) if t >= 0)
    got = losses.multi_token_log_likelihood(logits, targets)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("label_smoothing,z_loss", [(0.0, 0.0), (0.1, 0.0), (0.1, 1e-4)])
def test_seq2seq_loss(label_smoothing, z_loss):
    vocab = 13
    logits = RNG.normal(size=(2, 5, vocab)).astype(np.float32)
    targets = RNG.integers(0, vocab, size=(2, 5))
    targets[1, 3:] = -1
    weights = (targets >= 0).astype(np.float32)
    weights[0, 0] = 0.0
    lp = _log_softmax(logits)
    q = np.full((2, 5, vocab), label_smoothing / (vocab - 1))
    np.put_along_axis(q, np.maximum(targets, 0)[..., None], 1 - label_smoothing, -1)
    entropy = -(q * np.log(np.where(q > 0, q, 1))).sum(-1)
    per_token = -(q * lp).sum(-1) - entropy
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    per_token = per_token + z_loss * log_z**2
    expected = (per_token * weights).sum() / weights.sum()
    got = losses.seq2seq_loss(logits, targets, weights, label_smoothing, z_loss)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(losses.seq2seq_loss(logits, targets, np.zeros_like(weights))) == 0.0


def test_token_id_zero_is_a_real_verbalizer_word_and_target():
    # Id 0 is a vocabulary entry (T5's pad, many tokenizers' first word); only negatives are pads.
    logits_BxV = RNG.normal(size=(2, 6)).astype(np.float32)
    verbalizer_LxW = np.array([[0, -1], [3, 5]])
    expected_BxL = np.stack([logits_BxV[:, 0], (logits_BxV[:, 3] + logits_BxV[:, 5]) / 2], -1)
    # float32 rounding of a two-term mean; dropping id 0 changes label 0 by O(1)
    np.testing.assert_allclose(losses.label_logits(logits_BxV, verbalizer_LxW), expected_BxL,
                               rtol=1e-6)
    logits_BxTxV = RNG.normal(size=(1, 3, 5)).astype(np.float32)
    targets_BxT = np.array([[0, 2, -1]])
    lp = _log_softmax(logits_BxTxV)
    expected = -(lp[0, 0, 0] + lp[0, 1, 2]) / 2
    # float32 log-softmax rounding; skipping the id-0 target moves the mean by O(1)
    np.testing.assert_allclose(
        losses.seq2seq_loss(logits_BxTxV, targets_BxT, np.ones((1, 3), np.float32)), expected,
        rtol=1e-5,
    )


def test_label_logits_keep_the_compute_dtype():
    logits_BxV = jnp.asarray(RNG.normal(size=(2, 6)), jnp.bfloat16)
    got_BxL = eager_losses.label_logits(logits_BxV, np.array([[1, 2], [4, -1]]))
    assert got_BxL.dtype == jnp.bfloat16  # bf16 training keeps bf16 label scores


def test_default_margin_and_seq2seq_options_are_the_plain_losses():
    scores_BxC = RNG.normal(size=(3, 3)).astype(np.float32)
    labels_B = np.array([2, 0, 1])
    # PET's hinge with margin 1: sum over wrong candidates of max(0, 1 - s_y + s_c)
    expected = np.mean([sum(max(0.0, 1.0 - s[y] + s[c]) for c in range(3) if c != y)
                        for s, y in zip(scores_BxC, labels_B, strict=True)])
    # float32 rounding; a margin of 2 adds ~1 per wrong candidate
    np.testing.assert_allclose(losses.hinge_loss(scores_BxC, labels_B), expected, rtol=1e-5)
    logits_BxTxV = RNG.normal(size=(2, 3, 7)).astype(np.float32)
    targets_BxT = np.array([[1, 2, 3], [4, 5, 6]])
    lp = _log_softmax(logits_BxTxV)
    plain_ce = -np.take_along_axis(lp, targets_BxT[..., None], -1).mean()
    got = losses.seq2seq_loss(logits_BxTxV, targets_BxT, np.ones((2, 3), np.float32))
    # float32 rounding; default smoothing or z-loss would add O(1)
    np.testing.assert_allclose(got, plain_ce, rtol=1e-5)


def test_distillation_default_temperature_is_pets_two():
    student_BxL = RNG.normal(size=(3, 4)).astype(np.float32)
    teacher_BxL = RNG.normal(size=(3, 4)).astype(np.float32) * 3
    q_log, p_log = _log_softmax(teacher_BxL / 2.0), _log_softmax(student_BxL / 2.0)
    expected = (np.exp(q_log) * (q_log - p_log)).sum(-1).mean() * 4.0
    # float32 rounding; T = 1 or 3 changes the value by > 10%
    np.testing.assert_allclose(losses.distillation_loss(student_BxL, teacher_BxL), expected,
                               rtol=1e-5)


def test_fractional_weights_give_the_weighted_mean_even_when_they_sum_below_one():
    student_BxL = RNG.normal(size=(2, 3)).astype(np.float32)
    teacher_BxL = RNG.normal(size=(2, 3)).astype(np.float32)
    weights_B = np.array([0.25, 0.125], np.float32)
    q_log, p_log = _log_softmax(teacher_BxL / 2.0), _log_softmax(student_BxL / 2.0)
    kl_B = (np.exp(q_log) * (q_log - p_log)).sum(-1)
    expected = (weights_B * kl_B).sum() / weights_B.sum() * 4.0
    # float32 rounding; dividing by max(sum, 1) instead of the sum would scale it by 0.375
    np.testing.assert_allclose(
        losses.distillation_loss(student_BxL, teacher_BxL, weights_B=weights_B), expected,
        rtol=1e-5)


def test_a_row_with_weight_zero_cannot_poison_the_mean_even_when_it_is_nan():
    # Padding rows of a static-shape batch may hold garbage; weight 0 must mean "not there".
    logits_BxL = np.array([[0.5, -1.0, 2.0], [np.nan, np.nan, np.nan]], np.float32)
    got = losses.classification_loss(logits_BxL, np.array([2, 0]), np.array([1.0, 0.0]))
    lp = _log_softmax(logits_BxL[:1])
    # float32 rounding; a NaN row let through makes the whole loss NaN
    np.testing.assert_allclose(got, -lp[0, 2], rtol=1e-6)
