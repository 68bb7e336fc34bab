"""PET members for multi-token answers: the names the pipelines had before the Scorer interface.

A multi-token pattern (COPA, WSC, ReCoRD, multi-token verbalizers) is a PatternData whose scorer
is jaxpet.scoring.candidates.CandidatesScorer (chosen by jaxpet.scoring.scorer.make_scorer); it
trains, scores and saves through the one member path, jaxpet.pipelines.pet.train_member.
"""

from __future__ import annotations

from typing import Any

from jaxpet.pipelines.pet import PatternData, evaluate_member, prepare_pattern, train_member
from jaxpet.pipelines.setup import evaluate_scores
from jaxpet.scoring.scorer import needs_multi_token

__all__ = ["evaluate_multitoken_member", "evaluate_scores", "needs_multi_token",
           "prepare_multitoken_pattern", "train_multitoken_model"]

train_multitoken_model = train_member
evaluate_multitoken_member = evaluate_member


def prepare_multitoken_pattern(config: Any, lm: Any, data: Any, pattern_id: int) -> PatternData:
    """prepare_pattern of a multi-token pattern (its scorer decodes the candidates)."""
    return prepare_pattern(config, lm, data, pattern_id)
