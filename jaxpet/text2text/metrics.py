"""Text-to-text metrics on decoded strings: BLEU, ROUGE, SQuAD EM/F1, accuracy, Pearson/Spearman.

All scores are on a 0-100 scale, as T5 reports them."""

from __future__ import annotations

import collections
import re
import string
import warnings
from collections.abc import Sequence

import numpy as np
import sacrebleu


def _check_lengths(predictions: Sequence, references: Sequence, name: str) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError(f"{name}: no predictions to score")


def bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU with sacrebleu (international tokenisation, exp smoothing, as T5 evaluates)."""
    _check_lengths(predictions, references, "bleu")
    result = sacrebleu.corpus_bleu(list(predictions), [list(references)], smooth_method="exp",
                                   tokenize="intl", lowercase=False)
    return {"bleu": float(result.score)}


# A sentence ends at . ! or ? (optionally followed by closing quotes or brackets) before
# whitespace and a capital letter, digit or opening quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])([\"')\]]*)\s+(?=[A-Z0-9\"'(])")


def sentence_lines(text: str) -> str:
    """One sentence per line. rougeLsum splits summaries at newlines, but T5 tokenizers turn
    newlines into spaces, so generated summaries arrive on one line; the T5 and Hugging Face
    evaluations put their sentences on separate lines before scoring, as this does."""
    return "\n".join(line.strip() for part in text.splitlines()
                     for line in _SENTENCE_END.sub("\\1\n", part).split("\n") if line.strip())


def rouge(predictions: Sequence[str], references: Sequence[str],
          types: Sequence[str] = ("rouge1", "rouge2", "rougeLsum")) -> dict[str, float]:
    """Mean ROUGE F-measures (rouge-score, Porter stemming); for rougeLsum predictions and
    references are split into one sentence per line (sentence_lines)."""
    from rouge_score import rouge_scorer  # loaded on use: it takes seconds (nltk)

    _check_lengths(predictions, references, "rouge")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    totals = collections.defaultdict(float)
    for pred, ref in zip(predictions, references, strict=True):
        for name, score in scorer.score(sentence_lines(ref), sentence_lines(pred)).items():
            totals[name] += score.fmeasure
    return {name: 100.0 * total / len(predictions) for name, total in totals.items()}


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, drop punctuation and the articles
    a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(true_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and token F1, each the max over an example's gold answers, averaged."""
    _check_lengths(predictions, answers, "squad")
    em = f1 = 0.0
    for i, (pred, golds) in enumerate(zip(predictions, answers, strict=True)):
        if not golds:
            raise ValueError(f"squad: example {i} has no gold answers")
        em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
        f1 += max(_f1(pred, g) for g in golds)
    return {"em": 100.0 * em / len(predictions), "f1": 100.0 * f1 / len(predictions)}


def accuracy(predictions: Sequence, references: Sequence) -> dict[str, float]:
    _check_lengths(predictions, references, "accuracy")
    hits = sum(p == r for p, r in zip(predictions, references, strict=True))
    return {"accuracy": 100.0 * hits / len(predictions)}


def to_float(text: str, default: float = -1.0) -> float:
    """A generated number ("3.8"); text that is not a number scores as `default` (T5 uses -1)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def correlations(predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Pearson and Spearman correlation x100 (STS-B); string predictions are parsed as floats."""
    from scipy import stats  # loaded on use: scipy.stats takes seconds

    _check_lengths(predictions, references, "correlations")
    pred = np.array([to_float(p) if isinstance(p, str) else float(p) for p in predictions])
    ref = np.array([to_float(r) if isinstance(r, str) else float(r) for r in references])
    for values, what in ((pred, "predictions"), (ref, "references")):
        if np.ptp(values) == 0.0:
            # scipy would warn "an input array is constant" without saying which one
            warnings.warn(f"correlations: all {len(values)} {what} are {values[0]:g} (text that "
                          "is no number counts as -1); Pearson and Spearman correlation are "
                          "undefined and reported as NaN", stacklevel=2)
            return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": 100.0 * float(stats.pearsonr(pred, ref)[0]),
            "spearman": 100.0 * float(stats.spearmanr(pred, ref)[0])}
