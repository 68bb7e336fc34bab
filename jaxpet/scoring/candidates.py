"""Multi-token candidate scoring (COPA, WSC, ReCoRD, multi-token verbalizers) for a masked LM.

Training runs one forward pass per batch on inputs with the most masks
(jaxpet.scoring.candidates_step); scoring decodes every candidate by K-step multi-mask decoding
(`pet.decoding_strategy`, jaxpet.decoding.multi_mask) into label scores [N, C] (sum of log p per
candidate; -inf for padding candidates), or, for WSC, generates the masks and string-matches
the target (one-hot scores over [False, True]).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxpet.config import Config
from jaxpet.data.batching import DEFAULT_BUCKETS, bucket_length
from jaxpet.data.example import Example
from jaxpet.decoding.wsc_match import wsc_generated_text, wsc_string_match
from jaxpet.engine.sharding import batch_divisor, make_mesh
from jaxpet.models import LoadedModel
from jaxpet.prompts.builtin import RecordPVP, WscPVP
from jaxpet.prompts.multitoken import (
    as_multi_token,
    encode_generation,
    encode_multi_token,
    encode_multi_token_decoding,
)
from jaxpet.prompts.pvp import PVP
from jaxpet.scoring.candidates_step import (
    make_candidate_scores_fn,
    make_generate_fn,
    make_multitoken_loss,
    resolve_loss_variant,
)

SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids")
TRAIN_KEYS = (*SEQUENCE_KEYS, "mask_positions", "target_ids", "candidate_mask", "labels")


def trim_sequences(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cuts the last axis of the sequence arrays ([N, S] or [N, C, S]) to one length bucket."""
    arrays = dict(arrays)
    full = arrays["input_ids"].shape[-1]
    attended = np.asarray(arrays["attention_mask"]).reshape(-1, full).astype(bool)
    needed = int(np.max(np.where(attended, np.arange(1, full + 1), 0), initial=1))
    length = bucket_length(needed, [b for b in DEFAULT_BUCKETS if b <= full] + [full])
    for key in SEQUENCE_KEYS:
        if key in arrays:
            arrays[key] = arrays[key][..., :length]
    return arrays


def batch_shards(config: Config) -> int:
    """The batch shards of the run's mesh (candidate decoding splits its rows in as many)."""
    devices = jax.devices()
    if config.mesh.data > 0:
        devices = devices[: config.mesh.data * config.mesh.fsdp * config.mesh.tensor]
    return batch_divisor(make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp,
                                   tensor=config.mesh.tensor, devices=devices))


def keep(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in arrays.items() if k in TRAIN_KEYS}


class CandidatesScorer:
    """Per-example candidates of several tokens, scored by multi-mask decoding (WSC: generated)."""

    kind = "candidates"
    supports_mlm = False
    supports_parallel_members = False
    supports_priming = False
    scores_training_rows = False
    decoder_positions = None
    constant_pad: dict[str, int] = {}

    def __init__(self, pvp: PVP, lm: LoadedModel, config: Config) -> None:
        self.pvp = as_multi_token(pvp)
        self.lm, self.config = lm, config
        self.pattern_id = pvp.pattern_id
        self.constants: dict[str, np.ndarray] = {}
        settings = config.pet
        self.decoding = settings.decoding_strategy
        self.loss = resolve_loss_variant(pvp.task_name, settings.multitoken_loss)
        self.generate = isinstance(self.pvp, WscPVP)
        if self.generate != (self.loss == "wsc"):
            raise ValueError(
                f"config key 'pet.multitoken_loss' = {settings.multitoken_loss!r} gives loss "
                f"{self.loss!r} for task {pvp.task_name!r}: the 'wsc' loss goes with WSC's "
                "generated answers and only with them; use 'auto'")
        self.candidates_are_labels = not isinstance(self.pvp, RecordPVP)
        self._scores_fn: Callable | None = None

    def describe(self) -> str:
        return f"multi-token pattern {self.pattern_id} ({self.loss} loss)"

    def encode(self, examples: Sequence[Example], purpose: str) -> dict[str, np.ndarray]:
        tok, seq = self.lm.tokenizer, self.config.pet.max_seq_length
        if purpose == "train":
            encode = encode_generation if self.generate else encode_multi_token
            return keep(encode(self.pvp, examples, tok, seq))
        encode = encode_generation if self.generate else encode_multi_token_decoding
        return trim_sequences(keep(encode(self.pvp, examples, tok, seq)))

    def encode_training(self, labeled: Sequence[Example], unlabeled: Sequence[Example],
                        placeholder: Sequence[Example]
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        if not labeled:
            raise ValueError(f"task {self.pvp.task_name!r} has no labeled training examples")
        # labeled and unlabeled rows in one training encoding (same masks K and candidates C),
        # so that iPET can append pseudo-labeled unlabeled rows to the labeled ones
        joint = self.encode([*labeled, *unlabeled], "train")
        num_train = len(labeled)
        return ({k: v[:num_train] for k, v in joint.items()},
                {k: v[num_train:] for k, v in joint.items()} if unlabeled else None)

    def loss_fn(self) -> Callable:
        return make_multitoken_loss(self.lm.module.apply, self.loss,
                                    pad_token_id=self.lm.tokenizer.pad_token_id or 0)

    def member_loss_fn(self) -> Callable:
        raise NotImplementedError("multi-token members train one at a time "
                                  "(supports_parallel_members is False)")

    def scores_fn(self) -> Callable:
        if self._scores_fn is None:
            if self.generate:
                self._scores_fn = make_generate_fn(self.lm.module.apply, self.decoding)
            else:
                self._scores_fn = make_candidate_scores_fn(
                    self.lm.module.apply, self.decoding, row_blocks=batch_shards(self.config))
        return self._scores_fn

    def scoring_inputs(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        dropped = ("labels", "target_ids") if self.generate else ("labels",)
        return {k: v for k, v in arrays.items() if k not in dropped}

    def finalize(self, raw: np.ndarray, examples: Sequence[Example] | None
                 ) -> tuple[np.ndarray, list[str] | None]:
        if not self.generate:
            return np.asarray(raw, np.float32), None
        texts = [wsc_generated_text(self.lm.tokenizer, row) for row in np.asarray(raw)]
        matched = np.array([wsc_string_match(text, self.pvp.candidates(e)[0])
                            for text, e in zip(texts, examples, strict=True)], dtype=int)
        return np.eye(2, dtype=np.float32)[matched], texts

    def gold(self, arrays: Mapping[str, np.ndarray],
             examples: Sequence[Example] | None) -> np.ndarray:
        if self.generate:
            return np.asarray(arrays["labels"])
        return np.array([self.pvp.correct_candidate(e) for e in examples])

    def predicted_labels(self, labels: Sequence[str], examples: Sequence[Example],
                         scores_NxC: np.ndarray) -> list[str]:
        """The predicted label string: WSC "True"/"False", else the top candidate's label or,
        when candidates are not labels (ReCoRD), the candidate text itself."""
        best_N = np.argmax(scores_NxC, axis=-1)
        if self.generate:
            return [labels[i] for i in best_N]
        return [labels[c] if self.candidates_are_labels and c < len(labels)
                else self.pvp.candidates(e)[c] for e, c in zip(examples, best_N, strict=True)]

    def prediction_records(self, examples: Sequence[Example], labels: Sequence[str],
                           scores_NxC: np.ndarray, texts: list[str] | None) -> list[dict]:
        predicted = self.predicted_labels(labels, examples, scores_NxC)
        records = []
        for i, e in enumerate(examples):
            record = {"guid": e.guid, "label": predicted[i], "gold": e.label,
                      "logits": [float(x) if np.isfinite(x) else None for x in scores_NxC[i]]}
            if texts is not None:
                record["generated"] = texts[i]
            if "answers" in e.meta:
                record["answers"] = list(e.meta["answers"])
            records.append(record)
        return records

    def result_fields(self) -> dict[str, Any]:
        return {"loss": self.loss, "decoding_strategy": self.decoding}

    def share_key(self) -> tuple | None:
        return None
