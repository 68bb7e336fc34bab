"""The Scorer of one pattern, and make_scorer: the one place that picks it by backbone and answers.

A pattern's answers are scored one of three ways: a masked LM's logits at a single mask slot
averaged over each label's verbalizer ids (jaxpet.scoring.cloze), a masked LM decoding each
example's multi-token candidates mask by mask (jaxpet.scoring.candidates), or T5 scoring each
label's words after the sentinel by teacher forcing (jaxpet.scoring.seq2seq). The pipelines
(jaxpet.pipelines) train, score and save a member through this interface only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from jaxpet.config import Config
from jaxpet.data.example import Example
from jaxpet.models import LoadedModel
from jaxpet.prompts.pvp import PVP
from jaxpet.scoring.candidates import CandidatesScorer
from jaxpet.scoring.cloze import ClozeScorer
from jaxpet.scoring.seq2seq import Seq2SeqScorer

Arrays = dict[str, np.ndarray]

__all__ = ["Scorer", "make_scorer", "needs_multi_token", "pad_member_constants"]


class Scorer(Protocol):
    """How one pattern's answers are encoded, trained and scored.

    `constants`: the pattern's arrays that the loss and scores close over (verbalizer ids
    [L, W], or T5 label targets [L, W, T]; none for per-example candidates); parallel members
    stack them, padded by `constant_pad`. `kind` is the saved model card's scorer name.
    """

    kind: str  # "cloze" | "candidates" | "seq2seq"
    pattern_id: int
    pvp: PVP
    constants: dict[str, np.ndarray]
    constant_pad: dict[str, int]  # pad value of each constant that may be padded
    supports_mlm: bool  # the auxiliary MLM loss on unlabeled rows (pet.lm_training)
    supports_parallel_members: bool  # members may train together (pet.parallel_members)
    supports_priming: bool  # eval.priming
    # the training encoding is also the one scored (the labeled-set accuracy and the unlabeled
    # scores read the training arrays); otherwise encode(..., "eval") gives a separate layout
    scores_training_rows: bool
    candidates_are_labels: bool  # score c is label c (ReCoRD: the c-th candidate entity)
    decoding: str | None  # the decoding strategy a saved model card records
    decoder_positions: int | None  # decoder positions per example (memory check of T5)

    def describe(self) -> str: ...

    def encode(self, examples: Sequence[Example], purpose: str) -> Arrays:
        """Arrays of `examples` for `purpose` "train" (the training layout) or "eval" (scoring)."""

    def encode_training(self, labeled: Sequence[Example], unlabeled: Sequence[Example],
                        placeholder: Sequence[Example]) -> tuple[Arrays, Arrays | None]:
        """(labeled, unlabeled or None) training arrays in one layout; `placeholder` examples
        shape an empty labeled set (zero-shot iPET)."""

    def loss_fn(self) -> Callable:
        """loss_fn(params, batch, rng) -> (loss, aux) of one member."""

    def member_loss_fn(self) -> Callable:
        """loss_fn that reads the member's `constants` from its batch (parallel members)."""

    def scores_fn(self) -> Callable:
        """fn(params, batch) -> [B, C] label scores (WSC: [B, K] generated tokens, which
        `finalize` turns into scores), built once per scorer."""

    def scoring_inputs(self, arrays: Mapping[str, np.ndarray]) -> Arrays:
        """The model inputs of scoring arrays (labels and training-only keys dropped)."""

    def finalize(self, raw: np.ndarray, examples: Sequence[Example] | None
                 ) -> tuple[np.ndarray, list[str] | None]:
        """([N, C] float32 scores, generated texts or None) from scores_fn's outputs."""

    def gold(self, arrays: Mapping[str, np.ndarray],
             examples: Sequence[Example] | None) -> np.ndarray:
        """[N] index of the right answer of scored rows (the labeled-set accuracy)."""

    def prediction_records(self, examples: Sequence[Example], labels: Sequence[str],
                           scores_NxC: np.ndarray, texts: list[str] | None) -> list[dict]:
        """predictions.jsonl's records of one member."""

    def result_fields(self) -> dict[str, Any]:
        """Keys a member's results.json adds after its seed."""

    def share_key(self) -> tuple | None:
        """Scorers with equal keys may share one scores_fn (one compiled program); None: never."""


def needs_multi_token(pvp: PVP, tokenizer: Any) -> bool:
    """True for multi-token PVPs and for verbalizers with a word of several tokens."""
    if pvp.multi_token:
        return True
    words = [w for label in pvp.labels for w in pvp.verbalize(label)]
    return any(len(ids) != 1 for ids in pvp.word_ids(words, tokenizer))


def make_scorer(pvp: PVP, lm: LoadedModel, config: Config) -> Scorer:
    """The Scorer of `pvp` on the loaded model `lm` under the run's `config`.

    T5 scores label words of any length in one decoder pass (never multi-token); a masked LM
    decodes mask by mask when a PVP's answers, or a label word, span several tokens.
    """
    if lm.head == "seq2seq":
        return Seq2SeqScorer(pvp, lm, config)
    if needs_multi_token(pvp, lm.tokenizer):  # COPA, WSC, ReCoRD, multi-token verbalizers
        return CandidatesScorer(pvp, lm, config)
    return ClozeScorer(pvp, lm, config)


def pad_member_constants(constants: Sequence[Mapping[str, np.ndarray]],
                         pad: Mapping[str, int]) -> list[dict[str, np.ndarray]]:
    """Each member's constants padded to the largest shape of any member, so that stacked
    members share shapes; a key without a value in `pad` must have one shape already."""
    padded = []
    for member in constants:
        arrays = {}
        for key, array in member.items():
            array = np.asarray(array)
            shape = np.max([np.shape(m[key]) for m in constants], axis=0)
            if tuple(shape) != array.shape:
                if key not in pad:
                    raise ValueError(f"members' {key!r} differ in shape "
                                     f"({sorted({np.shape(m[key]) for m in constants})}); they "
                                     "cannot train together")
                widths = [(0, int(n) - d) for n, d in zip(shape, array.shape, strict=True)]
                array = np.pad(array, widths, constant_values=pad[key])
            arrays[key] = array
        padded.append(arrays)
    return padded
