"""Evaluation metrics as PET reports them: accuracy, macro-F1, MultiRC F1a/EM, ReCoRD accuracy."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

# Metrics per task, as the original PET evaluates them; every other task reports accuracy.
# x-stance: the PET paper reports macro-F1 (its Table 3), so the run reports it too.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cb": ("acc", "f1-macro"),
    **{name: ("acc", "f1-macro") for name in ("xstance", "xstance-de", "xstance-fr")},
    "multirc": ("acc", "f1", "em"),
    "record": ("acc",),
}


def task_metrics(task_name: str) -> tuple[str, ...]:
    """The metric names reported for `task_name`."""
    return TASK_METRICS.get(task_name.lower(), ("acc",))


def accuracy(labels_N: np.ndarray, predictions_N: np.ndarray) -> float:
    """Share of predictions equal to the label."""
    labels_N, predictions_N = np.asarray(labels_N), np.asarray(predictions_N)
    if labels_N.shape != predictions_N.shape or labels_N.size == 0:
        raise ValueError(
            f"need equal, non-empty shapes, got {labels_N.shape}, {predictions_N.shape}")
    return float(np.mean(labels_N == predictions_N))


def macro_f1(labels_N: np.ndarray, predictions_N: np.ndarray) -> float:
    """Unweighted mean of the per-label F1 scores (labels seen in either array)."""
    from sklearn.metrics import f1_score  # imported here: sklearn takes seconds to import

    return float(f1_score(labels_N, predictions_N, average="macro"))


def binary_f1(labels_N: np.ndarray, predictions_N: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive label; for MultiRC this is F1a, the F1 over all answer options."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels_N, predictions_N, pos_label=positive, average="binary"))


def exact_match(labels_N: np.ndarray, predictions_N: np.ndarray, question_ids: Sequence) -> float:
    """MultiRC EM: share of questions whose answer options are all predicted correctly."""
    all_correct: dict = defaultdict(lambda: True)
    for question, label, prediction in zip(question_ids, labels_N, predictions_N, strict=True):
        all_correct[question] = all_correct[question] and bool(label == prediction)
    return float(np.mean(list(all_correct.values())))


def record_accuracy(scores_NxC: np.ndarray, is_gold_NxC: np.ndarray) -> float:
    """ReCoRD as PET scores it: share of questions whose top-scored candidate is a gold answer.

    Padding candidate slots must carry a score of -inf so that they are never picked.
    """
    scores_NxC, is_gold_NxC = np.asarray(scores_NxC), np.asarray(is_gold_NxC, dtype=bool)
    best_N = np.argmax(scores_NxC, axis=-1)
    return float(np.mean(is_gold_NxC[np.arange(len(best_N)), best_N]))


def compute_metrics(
    names: Sequence[str],
    labels_N: np.ndarray,
    predictions_N: np.ndarray,
    question_ids: Sequence | None = None,
) -> dict[str, float]:
    """Computes the named metrics ("acc", "f1-macro", "f1", "em") on label indices."""
    results: dict[str, float] = {}
    for name in names:
        if name == "acc":
            results[name] = accuracy(labels_N, predictions_N)
        elif name == "f1-macro":
            results[name] = macro_f1(labels_N, predictions_N)
        elif name == "f1":
            results[name] = binary_f1(labels_N, predictions_N)
        elif name == "em":
            if question_ids is None:
                raise ValueError("metric 'em' needs the question id of every example")
            results[name] = exact_match(labels_N, predictions_N, question_ids)
        else:
            raise ValueError(f"unknown metric {name!r}; known: acc, f1-macro, f1, em")
    return results
