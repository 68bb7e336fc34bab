"""iPET set sizes and sampling edge cases against PET's rules written out by hand (pet.md)."""

import random
import warnings

import numpy as np
import pytest

from jaxpet.data.sampling import eq_div
from jaxpet.pipelines.ipet_sets import generate_train_set, generate_train_sets, num_new_examples


def test_eq_div_into_one_part_and_zero_parts():
    assert eq_div(7, 1) == [7]
    assert eq_div(2, 4) == [1, 1, 0, 0]
    assert eq_div(7, 0) == []  # PET's eq_div: no buckets, nothing to divide into


@pytest.mark.parametrize(
    ("num_train", "generation", "scale", "expected"),
    # PET: int(|T| * d^(g+1) - |T|); with |T| = 0 it pretends |T| = 10 / d.
    [(1, 0, 5.0, 4), (1, 1, 5.0, 24), (3, 0, 2.0, 3), (0, 0, 2.0, 10), (0, 1, 2.0, 20)],
)
def test_new_examples_per_generation(num_train, generation, scale, expected):
    assert num_new_examples(num_train, generation, scale) == expected


def _sample(logits_MxNxL, quota, pct=1.0, n_most_likely=-1, seed=0, weights_M=None):
    weights_M = np.ones(len(logits_MxNxL)) if weights_M is None else weights_M
    return generate_train_set(
        logits_MxNxL, weights_M, quota, logits_percentage=pct, reduction="mean",
        n_most_likely=n_most_likely, rng=random.Random(seed), rng_np=np.random.RandomState(seed),
    )


def test_one_model_is_chosen_when_the_percentage_rounds_to_one():
    # round(3 * 0.25) = 1: PET merges exactly one model, drawn by random.sample.
    logits_MxNxL = np.zeros((3, 6, 2))
    for m in range(3):
        logits_MxNxL[m, :, 1] = 5.0 if m == 1 else -5.0  # only model 1 predicts label 1
    chosen = random.Random(0).sample(range(3), k=1)[0]
    out = _sample(logits_MxNxL, [0, 2], pct=0.25)
    expected_label = 1 if chosen == 1 else 0
    assert np.all(np.argmax(logits_MxNxL[chosen], -1) == expected_label)
    # a merge over two or more models would predict label 0 for every row
    assert len(out.label_ids) == (2 if chosen == 1 else 0)


def test_quota_of_one_with_n_most_likely_one_is_allowed():
    # n_most_likely must cover the largest quota; equal is enough.
    logits_1xNxL = np.array([[[0.0, 3.0], [2.0, 0.0], [0.0, 1.0]]])
    out = _sample(logits_1xNxL, [1, 1], n_most_likely=1)
    # the single most probable example per label: row 1 for label 0, row 0 for label 1
    assert out.unlabeled_indices.tolist() == [1, 0] and out.label_ids.tolist() == [0, 1]
    with pytest.raises(ValueError, match="^n_most_likely=1 is smaller than .* quota 2;"):
        _sample(logits_1xNxL, [2, 1], n_most_likely=1)


def test_n_most_likely_weights_by_the_labels_probability_not_the_max():
    # Row 0 is certain of label 0, rows 1-3 lean to label 1. With n_most_likely the label-0
    # candidates are the 3 rows most probable for label 0 and each is drawn with probability
    # proportional to p(label 0); PET's weight is that probability, not the row's max.
    logits_1xNxL = np.array([[[9.0, 0.0], [0.0, 0.1], [0.0, 3.0], [0.0, 6.0]]])
    p0_N = np.exp(logits_1xNxL[0, :, 0]) / np.exp(logits_1xNxL[0]).sum(-1)
    top3 = sorted(range(4), key=lambda i: (p0_N[i], i), reverse=True)[:3]
    expected = np.random.RandomState(5).choice(3, size=2, replace=False,
                                               p=p0_N[top3] / p0_N[top3].sum())
    out = _sample(logits_1xNxL, [2, 0], n_most_likely=3, seed=5)
    assert out.unlabeled_indices.tolist() == [top3[i] for i in expected]


def test_upsampling_tiles_just_enough_copies():
    # 2 candidates, quota 5: PET extends the pool until it holds >= 5 rows (3 copies = 6 rows)
    # and draws 5 of them without replacement, weighted by confidence.
    logits_1xNxL = np.array([[[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])
    probs_NxL = np.exp(logits_1xNxL[0]) / np.exp(logits_1xNxL[0]).sum(-1, keepdims=True)
    pool = [0, 1] * 3
    conf = probs_NxL[pool].max(-1)
    drawn = np.random.RandomState(0).choice(6, size=5, replace=False, p=conf / conf.sum())
    out = _sample(logits_1xNxL, [5, 0])
    assert out.unlabeled_indices.tolist() == [pool[i] for i in drawn]


def test_sets_are_drawn_in_sorted_member_order_from_one_stream():
    gen = np.random.default_rng(4)
    logits = {name: gen.normal(size=(12, 2)) for name in ("b", "a", "c")}
    sets = generate_train_sets(logits, dict.fromkeys(logits, 1.0), [2, 2],
                               logits_percentage=0.5, reduction="mean", seed=9)
    rng, rng_np = random.Random(9), np.random.RandomState(9)
    for name in ("a", "b", "c"):  # sorted, sharing the two generators
        others = [o for o in ("a", "b", "c") if o != name]
        expected = generate_train_set(
            np.stack([logits[o] for o in others]), np.ones(2), [2, 2], logits_percentage=0.5,
            reduction="mean", n_most_likely=-1, rng=rng, rng_np=rng_np,
        )
        assert sets[name].unlabeled_indices.tolist() == expected.unlabeled_indices.tolist()
    with pytest.raises(ValueError, match="^iPET needs at least two ensemble members"):
        generate_train_sets({"a": logits["a"]}, {"a": 1.0}, [1, 1])


def test_defaults_are_pets_quarter_of_the_models_wmean_and_seed_42():
    gen = np.random.default_rng(6)
    logits = {f"m{i}": gen.normal(size=(20, 2)) for i in range(5)}
    weights = {f"m{i}": float(w) for i, w in enumerate(gen.uniform(0.2, 1.0, 5))}
    got = generate_train_sets(logits, weights, [3, 3])
    rng, rng_np = random.Random(42), np.random.RandomState(42)
    for name in sorted(logits):
        others = [o for o in sorted(logits) if o != name]
        # round(4 * 0.25) = 1 model, merged by wmean (a single model's weight cancels out)
        k = rng.sample(range(4), k=1)[0]
        probs_NxL = np.exp(logits[others[k]])
        probs_NxL /= probs_NxL.sum(-1, keepdims=True)
        predicted_N = probs_NxL.argmax(-1)
        indices = []
        for label in (0, 1):
            pool = np.flatnonzero(predicted_N == label)
            conf = probs_NxL[pool].max(-1)
            drawn = rng_np.choice(len(pool), 3, replace=False, p=conf / conf.sum())
            indices += pool[drawn].tolist()
        assert got[name].unlabeled_indices.tolist() == indices
        assert got[name].label_ids.tolist() == [0, 0, 0, 1, 1, 1]


def test_two_members_are_enough_and_each_is_labeled_by_the_other():
    logits_NxL = {"a": np.array([[4.0, 0.0], [0.0, 4.0]]), "b": np.array([[0.0, 4.0], [4.0, 0.0]])}
    sets = generate_train_sets(logits_NxL, {"a": 1.0, "b": 1.0}, [1, 1], logits_percentage=1.0)
    # PET's rule: a's set comes from b's argmax and b's from a's (example 0 is label 1 for b)
    def labeled(name):
        pairs = zip(sets[name].unlabeled_indices.tolist(), sets[name].label_ids.tolist(),
                    strict=True)
        return dict(pairs)

    assert labeled("a") == {1: 0, 0: 1}
    assert labeled("b") == {0: 0, 1: 1}


def test_n_most_likely_zero_means_off_like_minus_one():
    logits_MxNxL = np.array([[[3.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 1.0]]])
    off = _sample(logits_MxNxL, [2, 2], n_most_likely=-1)
    zero = _sample(logits_MxNxL, [2, 2], n_most_likely=0)
    np.testing.assert_array_equal(zero.unlabeled_indices, off.unlabeled_indices)
    np.testing.assert_array_equal(zero.label_ids, off.label_ids)


def test_no_labels_or_zero_quotas_give_an_empty_set_of_integer_arrays():
    logits_MxNxL = np.zeros((1, 3, 2))
    for quota, n_most_likely in (([], 3), ([0, 0], -1)):
        empty = _sample(logits_MxNxL, quota, n_most_likely=n_most_likely)
        assert empty.unlabeled_indices.shape == empty.label_ids.shape == (0,)
        # the sets index the unlabeled examples: an empty set must still be integer arrays
        assert empty.unlabeled_indices.dtype == empty.label_ids.dtype == np.int64


def test_an_empty_label_warns_only_when_it_has_a_quota():
    logits_MxNxL = np.zeros((1, 3, 2))
    logits_MxNxL[0, :, 0] = 1.0  # every example is label 0; label 1 has no candidate
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a quota of 0 for the empty label is no loss: no warning
        quiet = _sample(logits_MxNxL, [2, 0])
    assert sorted(quiet.label_ids.tolist()) == [0, 0]
    with pytest.warns(UserWarning, match="^iPET: no unlabeled example is predicted as label 1; "
                                         "its quota of 1 examples stays empty$"):
        _sample(logits_MxNxL, [2, 1])
