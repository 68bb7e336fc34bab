"""Merging the label scores of an ensemble of PET models into one set of (soft) labels."""

import warnings

import numpy as np

REDUCTIONS = ("mean", "wmean")


def merge_logits(
    logits_MxNxL: np.ndarray, weights_M: np.ndarray | None = None, reduction: str = "wmean"
) -> np.ndarray:
    """Averages the raw verbalizer scores of M models over N examples -> [N, L].

    `mean` weighs every model equally; `wmean` weighs each model by `weights_M`, which PET
    takes to be the model's accuracy on the labeled set before training. When every weight
    is zero (every pattern scored 0% zero-shot, or the labeled set is empty), the weighted
    mean is undefined; the original implementation crashes there, jaxpet warns and falls
    back to `mean`.
    """
    logits_MxNxL = np.asarray(logits_MxNxL, dtype=np.float64)
    if logits_MxNxL.ndim != 3 or logits_MxNxL.shape[0] == 0:
        raise ValueError(
            f"expected logits of shape [models, examples, labels], got {logits_MxNxL.shape}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if reduction == "mean":
        return logits_MxNxL.mean(axis=0)
    if weights_M is None:
        raise ValueError("reduction 'wmean' needs one weight per model")
    weights_M = np.asarray(weights_M, dtype=np.float64)
    if weights_M.shape != (logits_MxNxL.shape[0],):
        raise ValueError(f"expected {logits_MxNxL.shape[0]} weights, got shape {weights_M.shape}")
    if np.any(weights_M < 0):
        raise ValueError(f"wmean weights must be non-negative, got {weights_M.tolist()}")
    if weights_M.sum() == 0:
        warnings.warn(
            "wmean: every model's weight (labeled-set accuracy before training) is 0; "
            "falling back to an unweighted mean",
            stacklevel=2,
        )
        return logits_MxNxL.mean(axis=0)
    return np.average(logits_MxNxL, axis=0, weights=weights_M)


def softmax(logits_NxL: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis at a temperature."""
    scaled_NxL = np.asarray(logits_NxL, dtype=np.float64) / temperature
    scaled_NxL = scaled_NxL - scaled_NxL.max(axis=-1, keepdims=True)
    exp_NxL = np.exp(scaled_NxL)
    return exp_NxL / exp_NxL.sum(axis=-1, keepdims=True)
