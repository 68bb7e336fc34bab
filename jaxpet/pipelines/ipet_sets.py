"""iPET: how many pseudo-labeled examples each generation adds, and which ones."""

import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from jaxpet.data.sampling import eq_div
from jaxpet.pipelines.merge import merge_logits, softmax


def num_new_examples(num_train: int, generation: int, scale_factor: float = 5.0) -> int:
    """Examples that generation `generation` (0-based) adds for the next one.

    The training set grows by `scale_factor` per generation: int(|T| d^(g+1) - |T|). With no
    labeled examples, PET pretends |T| = 10 / d, so the zero-shot setting adds 10, 50, 250...
    """
    base_size = num_train if num_train > 0 else 10 / scale_factor
    return int(base_size * scale_factor ** (generation + 1) - num_train)


def examples_per_label(
    train_labels: Sequence[str], labels: Sequence[str], num_new: int
) -> list[int]:
    """Per-label quotas that keep the labeled set's label ratio (an even split when it is empty)."""
    if not train_labels:
        return eq_div(num_new, len(labels))
    multiplier = num_new / len(train_labels)
    return [int(sum(1 for y in train_labels if y == label) * multiplier) for label in labels]


@dataclass(frozen=True)
class PseudoLabeledSet:
    """A next-generation training set: rows of the unlabeled set and the label each was given."""

    unlabeled_indices: np.ndarray  # [M] int, may repeat when a label had too few candidates
    label_ids: np.ndarray  # [M] int, index into the task's labels


def generate_train_set(
    other_logits_MxNxL: np.ndarray,
    other_weights_M: np.ndarray,
    quota_per_label: Sequence[int],
    *,
    logits_percentage: float,
    reduction: str,
    n_most_likely: int,
    rng: random.Random,
    rng_np: np.random.RandomState,
) -> PseudoLabeledSet:
    """Labels the unlabeled set with a random fraction of the other models and samples from it.

    Mirrors PET: choose round(logits_percentage * M) of the M other models, merge their raw
    scores, softmax, label = argmax; per label draw the quota without replacement with
    probability proportional to the confidence (the max class probability), duplicating the
    candidates when a label has fewer than its quota. With `n_most_likely > 0` (the zero-shot
    first generation) the candidates for a label are the n examples most probable for it,
    whatever their argmax, weighted by that label's probability.

    Deliberate differences: at least one model is always chosen (PET averages an empty list
    when round() gives 0), and a label that no example is predicted as gets a warning and no
    examples (PET loops forever).
    """
    if 0 < n_most_likely < max(quota_per_label, default=0):
        raise ValueError(
            f"n_most_likely={n_most_likely} is smaller than the largest per-label quota "
            f"{max(quota_per_label)}; raise n_most_likely or lower the number of new examples"
        )
    num_models = other_logits_MxNxL.shape[0]
    num_chosen = max(1, round(num_models * logits_percentage))
    chosen = rng.sample(range(num_models), k=num_chosen)
    merged_NxL = merge_logits(
        other_logits_MxNxL[chosen], np.asarray(other_weights_M)[chosen], reduction
    )
    probs_NxL = softmax(merged_NxL)
    predicted_N = probs_NxL.argmax(axis=1)

    indices, label_ids = [], []
    for label_id, quota in enumerate(quota_per_label):
        if n_most_likely > 0:
            # Descending; ties go to the larger example index, as PET's tuple sort does.
            order = sorted(
                range(len(probs_NxL)), key=lambda i: (probs_NxL[i, label_id], i), reverse=True
            )
            candidates = np.array(order[:n_most_likely], dtype=np.int64)
            confidence = probs_NxL[candidates, label_id]
        else:
            candidates = np.flatnonzero(predicted_N == label_id)
            if len(candidates) == 0:
                if quota > 0:
                    warnings.warn(
                        f"iPET: no unlabeled example is predicted as label {label_id}; "
                        f"its quota of {quota} examples stays empty",
                        stacklevel=2,
                    )
                continue
            repeats = -(-quota // len(candidates)) if quota > len(candidates) else 1
            candidates = np.tile(candidates, repeats)
            confidence = probs_NxL[candidates].max(axis=1)
        drawn = rng_np.choice(
            len(candidates), size=quota, replace=False, p=confidence / confidence.sum()
        )
        indices.extend(candidates[drawn].tolist())
        label_ids.extend([label_id] * quota)
    return PseudoLabeledSet(
        np.asarray(indices, dtype=np.int64), np.asarray(label_ids, dtype=np.int64)
    )


def generate_train_sets(
    member_logits: Mapping[str, np.ndarray],
    member_weights: Mapping[str, float],
    quota_per_label: Sequence[int],
    *,
    logits_percentage: float = 0.25,
    reduction: str = "wmean",
    n_most_likely: int = -1,
    seed: int = 42,
) -> dict[str, PseudoLabeledSet]:
    """One next-generation training set per member, each labeled only by the *other* members.

    Members are visited in sorted name order with one shared random stream, so the result is a
    pure function of the inputs and the seed.
    """
    names = sorted(member_logits)
    if len(names) < 2:
        raise ValueError("iPET needs at least two ensemble members (patterns x repetitions)")
    rng, rng_np = random.Random(seed), np.random.RandomState(seed)
    sets = {}
    for name in names:
        others = [other for other in names if other != name]
        sets[name] = generate_train_set(
            np.stack([member_logits[o] for o in others]),
            np.array([member_weights[o] for o in others]),
            quota_per_label,
            logits_percentage=logits_percentage,
            reduction=reduction,
            n_most_likely=n_most_likely,
            rng=rng,
            rng_np=rng_np,
        )
    return sets
