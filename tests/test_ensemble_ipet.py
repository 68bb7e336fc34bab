"""Ensemble merging and iPET training sets against direct implementations of PET's rules."""

import random
import warnings
from copy import deepcopy

import numpy as np
import pytest

from jaxpet.ensemble import merge_logits, softmax
from jaxpet.ipet import (
    eq_div,
    examples_per_label,
    generate_train_set,
    generate_train_sets,
    num_new_examples,
)


def test_mean_and_wmean_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7, 3))
    weights = np.array([0.5, 0.25, 0.0, 1.0])
    np.testing.assert_allclose(merge_logits(logits, reduction="mean"), logits.sum(0) / 4)
    expected = sum(w * x for w, x in zip(weights, logits, strict=True)) / weights.sum()
    np.testing.assert_allclose(merge_logits(logits, weights, "wmean"), expected)


def test_wmean_with_all_zero_weights_falls_back_to_mean_with_a_warning():
    logits = np.arange(12, dtype=float).reshape(2, 3, 2)
    with pytest.warns(UserWarning, match="falling back"):
        merged = merge_logits(logits, np.zeros(2), "wmean")
    np.testing.assert_allclose(merged, logits.mean(0))


@pytest.mark.parametrize(
    "bad",
    [dict(reduction="median"), dict(reduction="wmean"), dict(reduction="wmean", weights_M=[1.0])],
)
def test_merge_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        merge_logits(np.zeros((2, 3, 2)), **bad)


def test_softmax_at_temperature():
    x = np.array([[1.0, 3.0, -2.0]])
    e = np.exp(x / 2.0)
    np.testing.assert_allclose(softmax(x, 2.0), e / e.sum())


@pytest.mark.parametrize(
    ("num_train", "expected"),
    [(0, [10, 50, 250]), (10, [40, 240, 1240]), (50, [200, 1200, 6200])],
)
def test_generation_sizes(num_train, expected):
    assert [num_new_examples(num_train, g) for g in range(3)] == expected


def test_label_quotas_keep_the_ratio_or_split_evenly():
    assert examples_per_label(["a", "a", "a", "b"], ["a", "b", "c"], 40) == [30, 10, 0]
    assert examples_per_label([], ["a", "b", "c"], 10) == [4, 3, 3] == eq_div(10, 3)


class _Ex:
    def __init__(self, idx):
        self.idx, self.label, self.logits = idx, None, None


def _pet_reference(logits_lists, scores, quota, pct, reduction, n_most_likely, rng, rng_np):
    """PET's generate_ipet_train_set, written out over example objects."""
    chosen = rng.sample(list(range(len(logits_lists))), k=round(len(logits_lists) * pct))
    logits = np.array([logits_lists[i] for i in chosen])
    weights = np.array([scores[i] for i in chosen])
    merged = np.mean(logits, 0) if reduction == "mean" else np.average(logits, 0, weights=weights)
    probs = np.exp(merged - merged.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    data = [_Ex(i) for i in range(len(probs))]
    for p, ex in zip(probs, data, strict=True):
        ex.logits, ex.label = list(p), int(np.argmax(p))
    out = []
    for label, q in enumerate(quota):
        if n_most_likely <= 0:
            pool = [ex for ex in data if ex.label == label]
            while len(pool) < q:
                pool.extend(ex for ex in data if ex.label == label)
        else:
            ranked = sorted(
                ((ex.logits[label], i, ex) for i, ex in enumerate(data)),
                key=lambda t: (t[0], t[1]),
                reverse=True,
            )
            pool = [deepcopy(ex) for _, _, ex in ranked[:n_most_likely]]
            for ex in pool:
                ex.logits, ex.label = [ex.logits[label]], label
        conf = np.array([max(ex.logits) for ex in pool])
        picked = rng_np.choice(len(pool), size=q, replace=False, p=conf / conf.sum())
        out.extend((pool[i].idx, label) for i in picked)
    return out


@pytest.mark.parametrize(("reduction", "n_most_likely"), [("mean", -1), ("wmean", -1), ("mean", 5)])
def test_train_set_equals_pets_rules(reduction, n_most_likely):
    gen = np.random.default_rng(3)
    logits = gen.normal(scale=2.0, size=(8, 40, 3))
    scores = gen.uniform(0.1, 1.0, size=8)
    quota = [6, 4, 3] if n_most_likely < 0 else [3, 2, 4]
    ours = generate_train_set(
        logits,
        scores,
        quota,
        logits_percentage=0.25,
        reduction=reduction,
        n_most_likely=n_most_likely,
        rng=random.Random(7),
        rng_np=np.random.RandomState(7),
    )
    ref = _pet_reference(
        list(logits),
        list(scores),
        quota,
        0.25,
        reduction,
        n_most_likely,
        random.Random(7),
        np.random.RandomState(7),
    )
    assert list(zip(ours.unlabeled_indices.tolist(), ours.label_ids.tolist(), strict=True)) == ref
    assert np.bincount(ours.label_ids, minlength=3).tolist() == quota


def test_n_most_likely_smaller_than_the_quota_is_an_error():
    with pytest.raises(ValueError, match="n_most_likely"):
        generate_train_set(
            np.zeros((1, 9, 2)),
            np.ones(1),
            [4, 4],
            logits_percentage=1.0,
            reduction="mean",
            n_most_likely=3,
            rng=random.Random(0),
            rng_np=np.random.RandomState(0),
        )


def test_sampling_is_without_replacement_unless_upsampled():
    logits = np.zeros((2, 30, 2))
    logits[:, :20, 0] = 3.0  # 20 examples predicted as label 0, 10 as label 1
    logits[:, 20:, 1] = 3.0
    out = generate_train_set(
        logits,
        np.ones(2),
        [15, 25],
        logits_percentage=1.0,
        reduction="mean",
        n_most_likely=-1,
        rng=random.Random(0),
        rng_np=np.random.RandomState(0),
    )
    label0 = out.unlabeled_indices[out.label_ids == 0]
    label1 = out.unlabeled_indices[out.label_ids == 1]
    assert len(set(label0.tolist())) == 15 and set(label0.tolist()) <= set(range(20))
    assert len(label1) == 25 and set(label1.tolist()) == set(range(20, 30))  # 10 candidates, tiled


def test_a_label_nobody_predicts_warns_instead_of_hanging():
    logits = np.zeros((2, 10, 2))
    logits[..., 0] = 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = generate_train_set(
            logits,
            np.ones(2),
            [3, 2],
            logits_percentage=1.0,
            reduction="mean",
            n_most_likely=-1,
            rng=random.Random(0),
            rng_np=np.random.RandomState(0),
        )
    assert any("no unlabeled example" in str(w.message) for w in caught)
    assert out.label_ids.tolist() == [0, 0, 0]


def test_each_member_is_labeled_only_by_the_others():
    logits = {f"p{p}-s{s}": np.tile([0.0, 1.0], (12, 1)) for p in range(2) for s in range(2)}
    logits["p0-s0"][:, 0] = 100.0  # only p0-s0 believes in label 0
    sets = generate_train_sets(
        logits, dict.fromkeys(logits, 1.0), [0, 4], logits_percentage=1.0, reduction="mean"
    )
    assert sets["p0-s0"].label_ids.tolist() == [1, 1, 1, 1]
    assert set(sets) == set(logits)
    again = generate_train_sets(
        logits, dict.fromkeys(logits, 1.0), [0, 4], logits_percentage=1.0, reduction="mean"
    )
    assert all(np.array_equal(sets[k].unlabeled_indices, again[k].unlabeled_indices) for k in sets)
