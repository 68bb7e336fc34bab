"""Ensemble merge edge cases against numpy: one model, weights summing to 1, stability, messages."""

import warnings

import numpy as np
import pytest

from jaxpet.pipelines.merge import merge_logits, softmax


def test_a_single_model_merges_to_its_own_scores():
    logits_1xNxL = np.random.default_rng(0).normal(size=(1, 4, 3))
    np.testing.assert_array_equal(merge_logits(logits_1xNxL, reduction="mean"), logits_1xNxL[0])
    np.testing.assert_array_equal(merge_logits(logits_1xNxL, np.array([0.5])), logits_1xNxL[0])


def test_wmean_is_the_default_and_weights_summing_to_one_are_used_as_given():
    logits_MxNxL = np.random.default_rng(1).normal(size=(2, 5, 3))
    weights_M = np.array([0.25, 0.75])
    expected_NxL = 0.25 * logits_MxNxL[0] + 0.75 * logits_MxNxL[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weights that sum to 1 are not "all zero"
        merged_NxL = merge_logits(logits_MxNxL, weights_M)
    # float64 rounding only; a plain mean would be off by ~0.5
    np.testing.assert_allclose(merged_NxL, expected_NxL, rtol=1e-12)


def test_merge_averages_in_float64():
    # Two float32 members whose scores differ in the last float32 bit: their mean is only
    # representable in float64, which the soft labels are computed in.
    a = np.float32(1.0)
    b = np.nextafter(a, np.float32(2.0))
    logits_MxNxL = np.array([[[a]], [[b]]], dtype=np.float32)
    merged = merge_logits(logits_MxNxL, reduction="mean")
    assert merged.dtype == np.float64
    assert merged[0, 0] == (np.float64(a) + np.float64(b)) / 2


def test_a_zero_weight_is_allowed_and_drops_the_model():
    logits_MxNxL = np.random.default_rng(2).normal(size=(3, 2, 2))
    merged_NxL = merge_logits(logits_MxNxL, np.array([0.0, 2.0, 2.0]))
    # float64 rounding only; including model 0 would move the mean by ~0.3
    np.testing.assert_allclose(merged_NxL, logits_MxNxL[1:].mean(0), rtol=1e-12)


@pytest.mark.parametrize(
    ("logits", "kwargs", "message"),
    [
        (np.zeros((3, 2)), {},
         r"^expected logits of shape \[models, examples, labels\], got \(3, 2\)$"),
        (np.zeros((0, 3, 2)), {}, r"^expected logits of shape .*got \(0, 3, 2\)$"),
        (np.zeros((2, 3, 2)), {"reduction": "max"},
         r"^unknown reduction 'max'; expected one of \('mean', 'wmean'\)$"),
        (np.zeros((2, 3, 2)), {}, r"^reduction 'wmean' needs one weight per model$"),
        (np.zeros((2, 3, 2)), {"weights_M": [1.0, 1.0, 1.0]},
         r"^expected 2 weights, got shape \(3,\)$"),
        (np.zeros((2, 3, 2)), {"weights_M": [1.0, -0.5]},
         r"^wmean weights must be non-negative, got \[1.0, -0.5\]$"),
    ],
)
def test_bad_inputs_are_refused_with_the_whole_message(logits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        merge_logits(logits, **kwargs)


def test_all_zero_weights_warn_and_fall_back_to_the_unweighted_mean():
    logits_MxNxL = np.array([[[1.0, 4.0]], [[3.0, 0.0]]])
    with pytest.warns(UserWarning, match="^wmean: every model's weight .* unweighted mean$"):
        merged_NxL = merge_logits(logits_MxNxL, np.zeros(2))
    np.testing.assert_array_equal(merged_NxL, [[2.0, 2.0]])


@pytest.mark.caller_frame
def test_the_all_zero_weights_warning_points_at_the_caller():
    with pytest.warns(UserWarning) as rec:
        merge_logits(np.ones((2, 1, 2)), np.zeros(2))
    assert rec[0].filename == __file__  # stacklevel: the caller's line, not ensemble.py


def test_softmax_defaults_to_temperature_one_and_is_stable_for_large_scores():
    logits_NxL = np.array([[1000.0, 999.0, 990.0], [-3.0, 0.0, 2.0]])
    shifted_NxL = logits_NxL - logits_NxL.max(-1, keepdims=True)
    expected_NxL = np.exp(shifted_NxL) / np.exp(shifted_NxL).sum(-1, keepdims=True)
    # float64 rounding only; an unshifted exp(1000) is inf -> NaN rows
    np.testing.assert_allclose(softmax(logits_NxL), expected_NxL, rtol=1e-12)


def test_softmax_of_float32_scores_is_float64():
    # Saved member logits are float32; the soft labels are computed in float64 as PET's are.
    probs_NxL = softmax(np.array([[0.1, 0.2]], np.float32), 2.0)
    assert probs_NxL.dtype == np.float64
