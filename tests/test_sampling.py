"""Few-shot sampling: seeded shuffle-and-take and split_examples_evenly, direct and via loading."""

import random
from pathlib import Path

import pytest

from jaxpet.data.example import Example
from jaxpet.data.sampling import eq_div, shuffle_and_take, take_evenly
from jaxpet.data.tasks import load_examples

DEMO = Path(__file__).parent.parent / "configs" / "data" / "agnews_demo"


def make(labels):
    return [Example(guid=f"g{i}", text_a=f"t{i}", label=lab) for i, lab in enumerate(labels)]


def test_eq_div():
    assert eq_div(12, 3) == [4, 4, 4]
    assert eq_div(10, 3) == [4, 3, 3]
    assert eq_div(2, 4) == [1, 1, 0, 0]
    assert eq_div(5, 0) == []
    for n in range(0, 30):
        for k in range(1, 7):
            parts = eq_div(n, k)
            assert sum(parts) == n and max(parts) - min(parts) <= 1 and parts == sorted(parts)[::-1]


def test_shuffle_and_take_is_seeded_shuffle():
    examples = make(["a"] * 50)
    original = list(examples)
    reference = list(examples)
    random.Random(7).shuffle(reference)
    assert shuffle_and_take(examples, 10, seed=7) == reference[:10]
    assert examples == original  # the input list is not shuffled in place
    assert shuffle_and_take(examples, 10, seed=7) == shuffle_and_take(examples, 10, seed=7)
    assert shuffle_and_take(examples, 10, seed=7) != shuffle_and_take(examples, 10, seed=8)


def test_shuffle_and_take_edge_cases():
    examples = make(["a", "b", "a"])
    assert shuffle_and_take(examples, -1) == examples
    assert shuffle_and_take(examples, 0) == []
    assert shuffle_and_take(examples, 3) == examples  # N >= size: all, in file order
    assert shuffle_and_take(examples, 99) == examples


def test_take_evenly_first_per_label_in_file_order():
    examples = make(["b", "a", "b", "b", "c", "a", "a", "c", "b"])
    chosen = take_evenly(examples, ["a", "b", "c"], 5)  # quotas a=2, b=2, c=1
    assert [e.guid for e in chosen] == ["g0", "g1", "g2", "g4", "g5"]
    assert take_evenly(examples, ["a", "b", "c"], -1) == examples
    assert take_evenly(examples, ["a", "b", "c"], 0) == []
    with pytest.warns(UserWarning, match=r"'c': '2/3'"):
        chosen = take_evenly(examples, ["a", "b", "c"], 9)
    assert [e.label for e in chosen].count("c") == 2
    with pytest.raises(ValueError, match="has no label"):
        take_evenly(make([None]), ["a"], 1)


def test_load_examples_sampling_on_demo_data():
    full = load_examples("agnews", DEMO, "train")
    sample = load_examples("agnews", DEMO, "train", num_examples=10, seed=3)
    reference = list(full)
    random.Random(3).shuffle(reference)
    assert sample == reference[:10]
    assert load_examples("agnews", DEMO, "train", num_examples=10, seed=3) == sample
    assert load_examples("agnews", DEMO, "train", num_examples=10, seed=4) != sample
    assert load_examples("agnews", DEMO, "train", num_examples=0) == []

    even = load_examples("agnews", DEMO, "train", num_examples=10, split_examples_evenly=True)
    expected = []
    for label, quota in zip(["1", "2", "3", "4"], [3, 3, 2, 2], strict=True):
        expected += [e for e in full if e.label == label][:quota]
    assert even == sorted(expected, key=full.index)

    unlabeled = load_examples("agnews", DEMO, "unlabeled", num_examples=25, seed=1)
    assert len(unlabeled) == 25 and all(e.label is None for e in unlabeled)
    with pytest.raises(ValueError, match="cannot be used for the 'unlabeled' split"):
        load_examples("agnews", DEMO, "unlabeled", num_examples=8, split_examples_evenly=True)
    with pytest.raises(TypeError, match="num_examples must be an int"):
        load_examples("agnews", DEMO, "train", num_examples="10")
