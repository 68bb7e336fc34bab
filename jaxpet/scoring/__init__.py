"""Scoring: how one pattern's answers are encoded, trained and scored (cloze, candidates, T5)."""
