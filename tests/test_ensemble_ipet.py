"""Ensemble merging and iPET training sets against direct implementations of PET's rules."""

import random
import warnings
from copy import deepcopy

import numpy as np
import pytest

from jaxpet.data.sampling import eq_div
from jaxpet.pipelines.ipet_sets import (
    examples_per_label,
    generate_train_set,
    generate_train_sets,
    num_new_examples,
)
from jaxpet.pipelines.merge import merge_logits, softmax


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
    ("bad", "message"),
    [
        (dict(reduction="median"), "unknown reduction 'median'"),
        (dict(reduction="wmean"), "needs one weight per model"),
        (dict(reduction="wmean", weights_M=[1.0]), "expected 2 weights"),
    ],
)
def test_merge_rejects_bad_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
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


def pet_reference_train_set(logits_lists, scores, quota, pct, reduction, n_most_likely, rng,
                            rng_np, at_least_one=False):
    """PET's generate_ipet_train_set, written out over example objects: [(unlabeled index,
    label id)] in PET's order. at_least_one: jaxpet's documented deviation, one model is chosen
    when round(pct * models) is 0 (PET would average no model); all-zero wmean weights give the
    plain mean (PET would divide by zero)."""
    k = round(len(logits_lists) * pct)
    chosen = rng.sample(list(range(len(logits_lists))), k=max(k, 1) if at_least_one else k)
    logits = np.array([logits_lists[i] for i in chosen])
    weights = np.array([scores[i] for i in chosen])
    if reduction == "mean" or (at_least_one and weights.sum() == 0):
        merged = np.mean(logits, 0)
    else:
        merged = np.average(logits, 0, weights=weights)
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
    ref = pet_reference_train_set(
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


def test_generate_train_sets_follow_pets_loop_over_the_members():
    """Four members, each labeled by round(0.5 * 3) = 2 of the other three, drawn from one
    random stream shared by all members in name order, as PET's loop over the model folders."""
    gen = np.random.default_rng(5)
    names = ["p0-s0", "p0-s1", "p1-s0", "p1-s1"]
    logits = {n: gen.normal(scale=2.0, size=(30, 3)) for n in names}
    weights = {n: float(w) for n, w in zip(names, gen.uniform(0.1, 1.0, size=4), strict=True)}
    quota = [4, 2, 3]
    sets = generate_train_sets(logits, weights, quota, logits_percentage=0.5, reduction="wmean",
                               seed=11)
    rng, rng_np = random.Random(11), np.random.RandomState(11)
    for name in names:
        others = [o for o in names if o != name]
        expected = pet_reference_train_set([logits[o] for o in others],
                                           [weights[o] for o in others], quota, 0.5, "wmean",
                                           -1, rng, rng_np)
        got = sets[name]
        assert list(zip(got.unlabeled_indices.tolist(), got.label_ids.tolist(),
                        strict=True)) == expected
    # the members' sets differ: each comes from other models and later draws of the stream
    assert len({tuple(s.unlabeled_indices.tolist()) for s in sets.values()}) == 4


def test_member_train_arrays_append_the_pseudo_labeled_rows():
    """The next generation trains on T's rows, then the drawn unlabeled rows (repeats kept)
    carrying the labels the other members gave them; dtypes stay those of T."""
    from jaxpet.pipelines.ipet import member_train_arrays
    from jaxpet.pipelines.ipet_sets import PseudoLabeledSet

    labeled = {"input_ids": np.array([[1, 5, 2], [1, 6, 2]], np.int32),
               "attention_mask": np.ones((2, 3), np.int32),
               "mask_positions": np.array([[1], [1]], np.int32),
               "labels": np.array([3, 0], np.int32)}
    unlabeled = {"input_ids": np.array([[1, 7, 2], [1, 8, 2], [1, 9, 0]], np.int64),
                 "attention_mask": np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]], np.int64),
                 "mask_positions": np.array([[1], [2], [1]], np.int64),
                 "labels": np.array([-1, -1, -1], np.int64)}
    pseudo = PseudoLabeledSet(np.array([2, 0, 2]), np.array([1, 2, 3]))
    arrays = member_train_arrays(labeled, unlabeled, pseudo)
    np.testing.assert_array_equal(arrays["labels"], [3, 0, 1, 2, 3])
    np.testing.assert_array_equal(arrays["input_ids"], [[1, 5, 2], [1, 6, 2], [1, 9, 0],
                                                        [1, 7, 2], [1, 9, 0]])
    np.testing.assert_array_equal(arrays["attention_mask"][2:], [[1, 1, 0], [1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(arrays["mask_positions"][:, 0], [1, 1, 1, 1, 1])
    assert set(arrays) == set(labeled)
    assert all(arrays[k].dtype == labeled[k].dtype for k in labeled)
