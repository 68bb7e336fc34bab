"""Token-exact encoding of filled patterns: per-part tokens, PET truncation, special tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

# Stands for one mask token inside a part's text until the tokenizer is known.
MASK = "\x00MASK\x00"


class Part(NamedTuple):
    """One piece of a filled pattern; `text` may contain `MASK` markers."""

    text: str
    shortenable: bool = False


Segments = tuple[list[Part], list[Part]]


def is_byte_level(tokenizer: Any) -> bool:
    """True for GPT-2/RoBERTa-style byte-level BPE, whose parts need a forced prefix space."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        # transformers 5's pure-Python tokenizers (no Rust backend) include no byte-level BPE:
        # its GPT-2 and RoBERTa tokenizers always have a backend
        return False
    return "ByteLevel" in repr(backend.pre_tokenizer)


def tokenize_parts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each part text on its own, as the original PET encodes parts.

    No special tokens; a byte-level BPE part that does not already start with whitespace gets
    a prefix space (every part starts a word), as the original PET's RoBERTa tokenizer
    (`add_prefix_space=True`) does: a part such as " question: " keeps its single space.
    A part made only of masks becomes mask ids directly; other parts see the mask token text.
    """
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no mask token; cloze patterns need a masked-LM "
            "tokenizer (BERT, RoBERTa, XLM-R, ALBERT)"
        )
    out: list[list[int] | None] = [None] * len(texts)
    todo_idx: list[int] = []
    todo: list[str] = []
    index_of: dict[str, int] = {}
    byte_level = is_byte_level(tokenizer)
    for i, text in enumerate(texts):
        if MASK in text and not text.replace(MASK, ""):
            out[i] = [mask_id] * text.count(MASK)
            continue
        if text in index_of:
            todo_idx.append(i)
            continue
        index_of[text] = len(todo)
        todo_idx.append(i)
        part = text.replace(MASK, tokenizer.mask_token or "")
        todo.append(" " + part if byte_level and not part[:1].isspace() else part)
    ids = batch_encode(tokenizer, todo)
    for i in todo_idx:
        out[i] = ids[index_of[texts[i]]]
    return out  # type: ignore[return-value]


def batch_encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Encode many strings without special tokens in one call (Rust batch when available)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    # A tokenizer file may carry truncation/padding settings (e.g. max_length 128); parts
    # must be tokenized whole, so switch them off for this call.
    truncation, padding = backend.truncation, backend.padding
    if truncation:
        backend.no_truncation()
    if padding:
        backend.no_padding()
    try:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        if truncation:
            backend.enable_truncation(**truncation)
        if padding:
            backend.enable_padding(**padding)


@dataclass(frozen=True)
class SpecialLayout:
    """Where a tokenizer puts its special tokens around one or two segments, and type ids."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    type_a: int
    type_b: int

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def build(self, ids_a: list[int], ids_b: list[int] | None) -> tuple[list[int], list[int]]:
        if ids_b is None:
            ids = [*self.prefix, *ids_a, *self.suffix]
            types = [*self.prefix_types, *[self.type_a] * len(ids_a), *self.suffix_types]
        else:
            ids = [*self.prefix, *ids_a, *self.middle, *ids_b, *self.suffix]
            types = [
                *self.prefix_types, *[self.type_a] * len(ids_a), *self.middle_types,
                *[self.type_b] * len(ids_b), *self.suffix_types,
            ]
        return ids, types


def special_layout(tokenizer: Any, pair: bool) -> SpecialLayout:
    """The family's special tokens as the tokenizer itself places them (BERT, RoBERTa, ...)."""
    return _special_layout(tokenizer, pair)


@lru_cache(maxsize=64)
def _special_layout(tokenizer: Any, pair: bool) -> SpecialLayout:
    # Sentinel ids that no vocabulary uses tell the segments apart from the special tokens.
    a, b = [-11, -12], [-13]
    if hasattr(tokenizer, "build_inputs_with_special_tokens"):
        ids = tokenizer.build_inputs_with_special_tokens(a, b if pair else None)
        types = tokenizer.create_token_type_ids_from_sequences(a, b if pair else None)
    else:
        ids, types = _layout_from_post_processor(tokenizer, a, b if pair else None)
    ia = ids.index(a[0])
    if pair:
        ib = ids.index(b[0])
        return SpecialLayout(
            tuple(ids[:ia]), tuple(ids[ia + 2: ib]), tuple(ids[ib + 1:]),
            tuple(types[:ia]), tuple(types[ia + 2: ib]), tuple(types[ib + 1:]),
            types[ia], types[ib],
        )
    return SpecialLayout(
        tuple(ids[:ia]), (), tuple(ids[ia + 2:]), tuple(types[:ia]), (), tuple(types[ia + 2:]),
        types[ia], types[ia],
    )


def _layout_from_post_processor(
    tokenizer: Any, a: list[int], b: list[int] | None
) -> tuple[list[int], list[int]]:
    enc = tokenizer("x", "y" if b is not None else None, return_token_type_ids=True)
    seq_ids = enc.sequence_ids()
    ids: list[int] = []
    types: list[int] = []
    done: set[int] = set()
    for tok, typ, seq in zip(enc["input_ids"], enc["token_type_ids"], seq_ids, strict=True):
        if seq is None:
            ids.append(tok)
            types.append(typ)
        elif seq not in done:
            done.add(seq)
            seg = a if seq == 0 else b
            assert seg is not None
            ids.extend(seg)
            types.extend([typ] * len(seg))
    return ids, types


def cut_counts(short_a: int, short_b: int, num_remove: int) -> tuple[int, int]:
    """How many shortenable tokens PET's one-at-a-time loop takes from segment a and b.

    The loop cuts from a while a has strictly more shortenable tokens than b, else from b;
    so the longer side shrinks to the shorter, then b and a alternate, b first.
    """
    if num_remove <= 0:
        return 0, 0
    if short_a > short_b:
        first = min(num_remove, short_a - short_b)
        rest = num_remove - first
        return first + rest // 2, (rest + 1) // 2
    first = min(num_remove, short_b - short_a)
    rest = num_remove - first
    return rest // 2, first + (rest + 1) // 2


def cut_segment(parts: list[list[int]], shortenable: list[bool], k: int) -> list[int]:
    """Concatenate a segment after removing k tokens from the end of its last shortenable parts."""
    if k:
        parts = list(parts)
        for i in range(len(parts) - 1, -1, -1):
            if not shortenable[i] or not parts[i]:
                continue
            take = min(k, len(parts[i]))
            parts[i] = parts[i][: len(parts[i]) - take]
            k -= take
            if not k:
                break
    return [t for p in parts for t in p]


def truncate_pair(
    parts_a: list[list[int]], short_a: list[bool], parts_b: list[list[int]] | None,
    short_b: list[bool] | None, max_length: int, guid: str,
) -> tuple[list[int], list[int] | None]:
    """Apply PET's truncation to tokenized parts; `max_length` excludes special tokens."""
    len_a = sum(len(p) for p in parts_a)
    len_b = sum(len(p) for p in parts_b) if parts_b else 0
    num_remove = len_a + len_b - max_length
    if num_remove <= 0:
        return [t for p in parts_a for t in p], (
            [t for p in parts_b for t in p] if parts_b is not None else None
        )
    sa = sum(len(p) for p, s in zip(parts_a, short_a, strict=True) if s)
    sb = sum(len(p) for p, s in zip(parts_b, short_b, strict=True) if s) if parts_b else 0
    if num_remove > sa + sb:
        raise ValueError(
            f"example {guid!r}: the pattern's fixed parts need {len_a + len_b - sa - sb} tokens "
            f"and only {max_length} fit (max_seq_length minus special tokens) even after "
            f"cutting all {sa + sb} shortenable tokens; raise max_seq_length or shorten the "
            "fixed text"
        )
    cut_a, cut_b = cut_counts(sa, sb, num_remove)
    ids_a = cut_segment(parts_a, short_a, cut_a)
    ids_b = cut_segment(parts_b, short_b or [], cut_b) if parts_b is not None else None
    return ids_a, ids_b


def tokenize_filled(
    tokenizer: Any, filled: Sequence[Segments]
) -> list[tuple[list[list[int]], list[bool], list[list[int]] | None, list[bool] | None]]:
    """Tokenize every part of every filled pattern with one batch call.

    Empty part strings are dropped and a second segment without text counts as absent,
    as in the original PET.
    """
    texts: list[str] = []
    for parts_a, parts_b in filled:
        texts.extend(p.text for p in parts_a if p.text)
        texts.extend(p.text for p in parts_b if p.text)
    ids = tokenize_parts(tokenizer, texts)
    out = []
    k = 0
    for parts_a, parts_b in filled:
        pa = [p for p in parts_a if p.text]
        pb = [p for p in parts_b if p.text]
        ta = ids[k: k + len(pa)]
        k += len(pa)
        tb = ids[k: k + len(pb)]
        k += len(pb)
        out.append((
            ta, [p.shortenable for p in pa],
            tb if pb else None, [p.shortenable for p in pb] if pb else None,
        ))
    return out


def encode_segments(
    tokenizer: Any, filled: Sequence[Segments], guids: Sequence[str], max_seq_length: int
) -> list[tuple[list[int], list[int] | None]]:
    """Tokenize and truncate filled patterns; returns the two id lists of every example."""
    result = []
    for (ta, sa, tb, sb), guid in zip(tokenize_filled(tokenizer, filled), guids, strict=True):
        layout = special_layout(tokenizer, tb is not None)
        result.append(truncate_pair(ta, sa, tb, sb, max_seq_length - layout.num_special, guid))
    return result


def assemble(
    tokenizer: Any, segments: Sequence[tuple[list[int], list[int] | None]], max_seq_length: int,
    guids: Sequence[str], num_masks: int,
) -> dict[str, np.ndarray]:
    """Add special tokens, pad to max_seq_length and find the mask positions."""
    n = len(segments)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids_NxS = np.full((n, max_seq_length), pad_id, dtype=np.int32)
    attention_mask_NxS = np.zeros((n, max_seq_length), dtype=np.int32)
    token_type_ids_NxS = np.zeros((n, max_seq_length), dtype=np.int32)
    for i, (ids_a, ids_b) in enumerate(segments):
        ids, types = special_layout(tokenizer, ids_b is not None).build(ids_a, ids_b)
        if len(ids) > max_seq_length:
            raise ValueError(
                f"example {guids[i]!r}: {len(ids)} tokens do not fit "
                f"max_seq_length={max_seq_length}"
            )
        input_ids_NxS[i, : len(ids)] = ids
        attention_mask_NxS[i, : len(ids)] = 1
        token_type_ids_NxS[i, : len(types)] = types
    mask_positions_NxK = find_masks(
        input_ids_NxS, attention_mask_NxS, tokenizer.mask_token_id, num_masks, guids
    )
    return {
        "input_ids": input_ids_NxS,
        "attention_mask": attention_mask_NxS,
        "token_type_ids": token_type_ids_NxS,
        "mask_positions": mask_positions_NxK,
    }


def find_masks(
    input_ids_NxS: np.ndarray, attention_mask_NxS: np.ndarray, mask_id: int, num_masks: int,
    guids: Sequence[str],
) -> np.ndarray:
    """[N, K] positions of the mask tokens, in order, -1 padded; errors name the example."""
    is_mask_NxS = (input_ids_NxS == mask_id) & (attention_mask_NxS > 0)
    counts_N = is_mask_NxS.sum(axis=1)
    bad = np.flatnonzero((counts_N == 0) | (counts_N > num_masks))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"example {guids[i]!r} has {int(counts_N[i])} mask tokens after encoding, expected "
            f"1..{num_masks} (does its text contain the mask token, or was the mask truncated?)"
        )
    mask_positions_NxK = np.full((input_ids_NxS.shape[0], num_masks), -1, dtype=np.int32)
    rows, cols = np.nonzero(is_mask_NxS)
    # rank of each mask within its row
    starts = np.concatenate([[0], np.cumsum(counts_N)[:-1]])
    ranks = np.arange(rows.size) - np.repeat(starts, counts_N)
    mask_positions_NxK[rows, ranks] = cols
    return mask_positions_NxK
