"""Tests of the evaluation metrics against hand computations."""

import numpy as np
import pytest

from jaxpet.metrics import (
    accuracy,
    binary_f1,
    compute_metrics,
    exact_match,
    macro_f1,
    record_accuracy,
    task_metrics,
)


def test_accuracy():
    assert accuracy(np.array([0, 1, 2, 1]), np.array([0, 2, 2, 1])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"need equal, non-empty shapes, got \(2,\), \(1,\)"):
        accuracy(np.array([0, 1]), np.array([0]))


def test_macro_f1_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 0, 2])
    # label 0: tp 1, fp 1, fn 1 -> 1/2; label 1: tp 2, fp 1, fn 0 -> 4/5; label 2: tp 1, fn 1 -> 2/3
    expected = (0.5 + 0.8 + 2 / 3) / 3
    assert macro_f1(labels, preds) == pytest.approx(expected)


def test_binary_f1_is_f1a():
    labels = np.array([1, 1, 0, 0, 1])
    preds = np.array([1, 0, 1, 0, 1])
    # positive class 1: tp 2, fp 1, fn 1 -> precision 2/3, recall 2/3
    assert binary_f1(labels, preds) == pytest.approx(2 / 3)


def test_multirc_exact_match_groups_by_question():
    question_ids = ["q1", "q1", "q2", "q2", "q2", "q3"]
    labels = np.array([1, 0, 1, 1, 0, 0])
    preds = np.array([1, 0, 1, 0, 0, 0])  # q1 right, q2 one answer wrong, q3 right
    assert exact_match(labels, preds, question_ids) == pytest.approx(2 / 3)
    results = compute_metrics(task_metrics("multirc"), labels, preds, question_ids)
    assert set(results) == {"acc", "f1", "em"}
    assert results["acc"] == pytest.approx(5 / 6)
    assert results["em"] == pytest.approx(2 / 3)
    # f1 over answers: tp 2, fp 0, fn 1
    assert results["f1"] == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))


def test_record_accuracy_top_candidate_in_gold():
    scores = np.array([[0.1, 0.9, -np.inf], [2.0, 1.0, 3.0], [-1.0, -2.0, -np.inf]])
    is_gold = np.array([[0, 1, 0], [1, 0, 0], [1, 1, 0]])
    # q1 picks 1 (gold), q2 picks 2 (not gold), q3 picks 0 (gold)
    assert record_accuracy(scores, is_gold) == pytest.approx(2 / 3)


def test_task_metrics_and_unknown_metric():
    assert task_metrics("cb") == ("acc", "f1-macro")
    assert task_metrics("agnews") == ("acc",)
    with pytest.raises(ValueError, match="question id"):
        compute_metrics(["em"], np.array([1]), np.array([1]))
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(["bleu"], np.array([1]), np.array([1]))
