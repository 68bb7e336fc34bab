"""The `Example` record that every task reader produces and every pattern consumes."""

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One input example.

    `label` is the task's label string (e.g. "1", "entailment"), or None for unlabeled data.
    `meta` holds task-specific fields (COPA choices, WSC spans, MultiRC ids, ReCoRD candidates).
    """

    guid: str
    text_a: str
    text_b: str | None = None
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
