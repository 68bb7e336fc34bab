"""Batch array names: the encoder's inputs, and which arrays have a sequence axis (axis 1)."""

from __future__ import annotations

# The inputs an encoder model takes from a batch (its forward pass reads no other key).
MODEL_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")

# Arrays with a sequence axis, which bucketing trims and member stacking pads; prefixed keys
# (e.g. "unlabeled_input_ids") match too.
SEQUENCE_KEYS: tuple[str, ...] = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "special_tokens_mask",
)


def is_sequence_key(key: str) -> bool:
    return any(key == name or key.endswith("_" + name) for name in SEQUENCE_KEYS)
