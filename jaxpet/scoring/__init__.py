"""Scoring: how one pattern's answers are encoded, trained and scored (cloze, candidates, T5)."""

from jaxpet._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Scorer": "scorer",
        "make_scorer": "scorer",
        "ClozeScorer": "cloze",
        "CandidatesScorer": "candidates",
        "Seq2SeqScorer": "seq2seq",
    },
)

__all__ = __dir__()  # the lazily exported names above
