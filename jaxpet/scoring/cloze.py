"""Single-token cloze scoring: a masked LM's logits at the mask slot, per label's verbalizer ids.

ClozeScorer wraps jaxpet.scoring.cloze_step (PET loss with the auxiliary MLM term, label logits);
LabelWordScorer holds what it shares with T5's scorer (jaxpet.scoring.seq2seq): fixed label
words, one encoding for training and scoring, label-indexed predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxpet.config import Config
from jaxpet.data.batching import DEFAULT_BUCKETS, trim_to_bucket
from jaxpet.data.example import Example
from jaxpet.engine.batch_keys import MODEL_INPUTS
from jaxpet.models import LoadedModel
from jaxpet.prompts.pvp import PVP
from jaxpet.scoring.cloze_step import make_label_logits_fn, make_member_pet_loss, make_pet_loss

CLOZE_KEYS = (*MODEL_INPUTS, "mask_positions", "labels")


class LabelWordScorer:
    """Scores fixed label words: label c is score c; one encoding is trained and scored."""

    kind = ""
    supports_parallel_members = True
    scores_training_rows = True
    candidates_are_labels = True
    decoding = None
    decoder_positions: int | None = None
    constant_pad: dict[str, int] = {}

    def __init__(self, pvp: PVP, lm: LoadedModel, config: Config) -> None:
        self.pvp, self.lm, self.config = pvp, lm, config
        self.pattern_id = pvp.pattern_id
        self.constants: dict[str, np.ndarray] = {}
        self._scores_fn: Callable | None = None

    def describe(self) -> str:
        return f"pattern {self.pattern_id}"

    def encode_rows(self, examples: Sequence[Example]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def encode(self, examples: Sequence[Example], purpose: str) -> dict[str, np.ndarray]:
        arrays = self.encode_rows(examples)
        return trim_to_bucket(arrays, DEFAULT_BUCKETS) if purpose == "eval" else arrays

    def encode_training(self, labeled: Sequence[Example], unlabeled: Sequence[Example],
                        placeholder: Sequence[Example]
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        # |T| = 0 (zero-shot iPET): an empty labeled set shaped like the others
        train = self.encode_rows(labeled) if labeled else {
            k: v[:0] for k, v in self.encode_rows(placeholder).items()}
        return train, self.encode_rows(unlabeled) if unlabeled else None

    def build_scores_fn(self) -> Callable:
        raise NotImplementedError

    def scores_fn(self) -> Callable:
        if self._scores_fn is None:
            self._scores_fn = self.build_scores_fn()
        return self._scores_fn

    def scoring_inputs(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return trim_to_bucket({k: v for k, v in arrays.items() if k != "labels"},
                              DEFAULT_BUCKETS)

    def finalize(self, raw: np.ndarray, examples: Sequence[Example] | None
                 ) -> tuple[np.ndarray, list[str] | None]:
        return np.asarray(raw, np.float32), None

    def gold(self, arrays: Mapping[str, np.ndarray],
             examples: Sequence[Example] | None) -> np.ndarray:
        return np.asarray(arrays["labels"])

    def prediction_records(self, examples: Sequence[Example], labels: Sequence[str],
                           scores_NxC: np.ndarray, texts: list[str] | None) -> list[dict]:
        return [{"guid": e.guid, "label": labels[int(np.argmax(row))], "gold": e.label,
                 "logits": row} for e, row in zip(examples, scores_NxC, strict=True)]

    def result_fields(self) -> dict[str, Any]:
        return {}

    def share_key(self) -> tuple | None:
        return (self.kind, *((k, a.shape, str(a.dtype), a.tobytes())
                             for k, a in sorted(self.constants.items())))


def pet_loss_kwargs(config: Config, lm: LoadedModel) -> dict[str, Any]:
    """make_pet_loss's keyword arguments (all but the verbalizer) from the config and model."""
    settings = config.pet
    return dict(alpha=settings.alpha, mask_token_id=lm.tokenizer.mask_token_id,
                vocab_size=lm.config.vocab_size,
                max_mlm_targets=settings.max_mlm_targets or max(
                    1, int(np.ceil(settings.mlm_probability * settings.max_seq_length))),
                pad_id=lm.tokenizer.pad_token_id, special_token_ids=lm.tokenizer.all_special_ids,
                mlm_probability=settings.mlm_probability)


class ClozeScorer(LabelWordScorer):
    """One mask slot; a label's score is the mean of its verbalizer words' logits there."""

    kind = "cloze"
    supports_mlm = True
    supports_priming = True

    def __init__(self, pvp: PVP, lm: LoadedModel, config: Config) -> None:
        super().__init__(pvp, lm, config)
        self.verbalizer_ids_LxW = np.asarray(pvp.verbalizer_ids(lm.tokenizer))
        self.constants = {"verbalizer_ids": self.verbalizer_ids_LxW}

    def encode_rows(self, examples: Sequence[Example]) -> dict[str, np.ndarray]:
        encoded = self.pvp.encode(examples, self.lm.tokenizer, self.config.pet.max_seq_length)
        return {k: np.asarray(v) for k, v in encoded.items() if k in CLOZE_KEYS}

    def loss_fn(self) -> Callable:
        return make_pet_loss(self.lm.module.apply, self.verbalizer_ids_LxW,
                             **pet_loss_kwargs(self.config, self.lm))

    def member_loss_fn(self) -> Callable:
        return make_member_pet_loss(self.lm.module.apply, **pet_loss_kwargs(self.config, self.lm))

    def build_scores_fn(self) -> Callable:
        return make_label_logits_fn(self.lm.module.apply, self.verbalizer_ids_LxW)
