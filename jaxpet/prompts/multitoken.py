"""Multi-mask encodings: training inputs with the most masks, per-candidate decoding inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxpet.data.example import Example
from jaxpet.prompts.encoding import assemble
from jaxpet.prompts.pvp import PVP


class MultiTokenPVP(PVP):
    """A PVP whose answers (candidates) may span several tokens; its pattern holds n masks.

    Subclasses say what the candidates of an example are; n defaults to the longest one.
    """

    multi_token = True

    def candidates(self, example: Example) -> list[str]:
        raise NotImplementedError

    def masks_for(self, example: Example, lengths: Sequence[int]) -> int:
        """Masks in the pattern given the token lengths of the example's candidates."""
        return max(lengths)

    def correct_candidate(self, example: Example) -> int:
        """Index of the right candidate (-1 when unlabeled); by default the label's index."""
        return int(self.label_index([example])[0])

    def num_masks(self, example: Example, tokenizer: Any) -> int:
        return self.masks_per_example([example], tokenizer)[0]

    def masks_per_example(self, examples: Sequence[Example], tokenizer: Any) -> list[int]:
        cands = [self.candidates(e) for e in examples]
        flat = self.word_ids([c for cs in cands for c in cs], tokenizer)  # one batch call
        out, k = [], 0
        for e, cs in zip(examples, cands, strict=True):
            out.append(self.masks_for(e, [len(ids) for ids in flat[k: k + len(cs)]]))
            k += len(cs)
        return out


class MultiTokenVerbalizerPVP(MultiTokenPVP):
    """Any PVP whose label words span several tokens: candidate i is label i's first word,
    and every input holds as many masks as the longest word (as the original PET does)."""

    def __init__(self, base: PVP) -> None:
        super().__init__(base.task_name, base.pattern_id, base.labels, base.verbalizer)
        self.base = base

    def candidates(self, example: Example) -> list[str]:
        return [self.verbalize(label)[0] for label in self.labels]

    def get_parts(self, example: Example, num_masks: int = 1) -> tuple[list, list]:
        return self.base.get_parts(example, num_masks)


def as_multi_token(pvp: PVP) -> MultiTokenPVP:
    """The multi-token view of a PVP (itself when it already is one)."""
    return pvp if isinstance(pvp, MultiTokenPVP) else MultiTokenVerbalizerPVP(pvp)


def _candidate_ids(
    pvp: MultiTokenPVP, examples: Sequence[Example], tokenizer: Any, num_candidates: int | None
) -> tuple[list[list[list[int]]], int]:
    cands = [pvp.candidates(e) for e in examples]
    flat = pvp.word_ids([c for cs in cands for c in cs], tokenizer)
    out, k = [], 0
    for cs in cands:
        out.append(flat[k: k + len(cs)])
        k += len(cs)
    most = max((len(cs) for cs in cands), default=1)
    if num_candidates is None:
        num_candidates = most
    elif most > num_candidates:
        i = next(i for i, cs in enumerate(cands) if len(cs) > num_candidates)
        raise ValueError(
            f"example {examples[i].guid!r} has {len(cands[i])} candidates, more than "
            f"num_candidates={num_candidates}"
        )
    for e, ids in zip(examples, out, strict=True):
        empty = [c for c, t in zip(pvp.candidates(e), ids, strict=True) if not t]
        if empty:
            raise ValueError(f"example {e.guid!r}: candidate {empty[0]!r} has no tokens")
    return out, num_candidates


def encode_multi_token(
    pvp: PVP, examples: Sequence[Example], tokenizer: Any, max_seq_length: int,
    num_candidates: int | None = None, max_masks: int | None = None,
) -> dict[str, np.ndarray]:
    """Training encoding: every input holds its example's most masks; a candidate's tokens
    fill the first masks (`target_ids`, -1 beyond), as the original PET trains.

    Returns input_ids/attention_mask/token_type_ids [N,S], mask_positions [N,K],
    target_ids [N,C,K], candidate_mask [N,C], labels [N] (index of the right candidate).
    """
    mt = as_multi_token(pvp)
    examples = list(examples)
    cand_ids, num_c = _candidate_ids(mt, examples, tokenizer, num_candidates)
    num_masks = [mt.masks_for(e, [len(t) for t in ids]) for e, ids in zip(examples, cand_ids,
                                                                           strict=True)]
    k = max(num_masks, default=1) if max_masks is None else max_masks
    if max(num_masks, default=1) > k:
        raise ValueError(f"an example needs {max(num_masks)} masks, more than max_masks={k}")
    guids = [e.guid for e in examples]
    segments = mt.encode_ids(examples, tokenizer, max_seq_length, num_masks)
    enc = assemble(tokenizer, segments, max_seq_length, guids, k)
    n = len(examples)
    target_ids_NxCxK = np.full((n, num_c, k), -1, dtype=np.int32)
    candidate_mask_NxC = np.zeros((n, num_c), dtype=bool)
    for i, ids in enumerate(cand_ids):
        for c, toks in enumerate(ids):
            target_ids_NxCxK[i, c, : len(toks)] = toks[:k]
            candidate_mask_NxC[i, c] = True
    enc["target_ids"] = target_ids_NxCxK
    enc["candidate_mask"] = candidate_mask_NxC
    enc["labels"] = np.array([mt.correct_candidate(e) for e in examples], dtype=np.int32)
    return enc


def encode_multi_token_decoding(
    pvp: PVP, examples: Sequence[Example], tokenizer: Any, max_seq_length: int,
    num_candidates: int | None = None, max_masks: int | None = None,
) -> dict[str, np.ndarray]:
    """Decoding encoding: one input per candidate with exactly that candidate's masks.

    Like the original PET, the training input is trimmed: masks beyond the candidate's
    length are removed (text truncation stays as it was). Returns input_ids,
    attention_mask, token_type_ids [N,C,S], mask_positions, target_ids [N,C,K],
    candidate_mask [N,C] (False for padding candidates), labels [N].
    """
    train = encode_multi_token(pvp, examples, tokenizer, max_seq_length, num_candidates, max_masks)
    n, num_c, k = train["target_ids"].shape
    s = max_seq_length
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids_NxCxS = np.full((n, num_c, s), pad_id, dtype=np.int32)
    attention_mask_NxCxS = np.zeros((n, num_c, s), dtype=np.int32)
    token_type_ids_NxCxS = np.zeros((n, num_c, s), dtype=np.int32)
    mask_positions_NxCxK = np.full((n, num_c, k), -1, dtype=np.int32)
    for i in range(n):
        length = int(train["attention_mask"][i].sum())
        row_ids = train["input_ids"][i, :length]
        row_types = train["token_type_ids"][i, :length]
        masks = train["mask_positions"][i]
        masks = masks[masks >= 0]
        for c in range(num_c):
            m = int((train["target_ids"][i, c] >= 0).sum())
            keep = np.ones(length, dtype=bool)
            if train["candidate_mask"][i, c]:
                keep[masks[m:]] = False
                mask_positions_NxCxK[i, c, :m] = masks[:m]  # earlier masks do not move
            kept = int(keep.sum())
            input_ids_NxCxS[i, c, :kept] = row_ids[keep]
            token_type_ids_NxCxS[i, c, :kept] = row_types[keep]
            attention_mask_NxCxS[i, c, :kept] = 1
    return {
        "input_ids": input_ids_NxCxS,
        "attention_mask": attention_mask_NxCxS,
        "token_type_ids": token_type_ids_NxCxS,
        "mask_positions": mask_positions_NxCxK,
        "target_ids": train["target_ids"],
        "candidate_mask": train["candidate_mask"],
        "labels": train["labels"],
    }


def encode_generation(
    pvp: PVP, examples: Sequence[Example], tokenizer: Any, max_seq_length: int,
    max_masks: int | None = None,
) -> dict[str, np.ndarray]:
    """WSC-style generation encoding: n = #tokens(target) + padding masks per example.

    `target_ids` [N,K] hold the target's tokens, then the pad id on the extra masks (what the
    original PET trains them to predict), -1 on unused slots; `labels` [N] as in `encode`.
    """
    mt = as_multi_token(pvp)
    train = encode_multi_token(mt, examples, tokenizer, max_seq_length, 1, max_masks)
    target_ids_NxK = train["target_ids"][:, 0, :].copy()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    extra_NxK = (train["mask_positions"] >= 0) & (target_ids_NxK < 0)
    target_ids_NxK[extra_NxK] = pad_id
    return {
        "input_ids": train["input_ids"],
        "attention_mask": train["attention_mask"],
        "token_type_ids": train["token_type_ids"],
        "mask_positions": train["mask_positions"],
        "target_ids": target_ids_NxK,
        "labels": pvp.label_index(examples),
    }
