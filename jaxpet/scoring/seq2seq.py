"""T5 as a PET backbone: the pattern's mask slot is the sentinel `<extra_id_0>`, labels are scored
by the teacher-forced log-likelihood of `<extra_id_0> word`, trained with CE over label scores.

A label's score is sum log p of its target tokens given the filled pattern (one decoder pass for
all labels, encoder run once per example), so multi-token words need no K-step loop. A label
with several verbalizer words scores the mean of its words' log-likelihoods (as PET averages the
words' logits). The same scorer ranks whole label strings for text-to-text rank classification.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet.config import Config, ConfigError
from jaxpet.decoding.seq2seq import target_log_likelihood, teacher_forcing
from jaxpet.engine.ensemble_training import constants_from_batch
from jaxpet.losses import cloze_loss
from jaxpet.models import LoadedModel
from jaxpet.prompts.pvp import PVP
from jaxpet.scoring.cloze import LabelWordScorer

SENTINEL = "<extra_id_0>"
_SENTINEL_TOKENIZERS: dict[int, tuple[Any, Any]] = {}


def sentinel_tokenizer(tokenizer: Any, sentinel: str = SENTINEL) -> Any:
    """A copy of a T5 tokenizer whose mask token is the sentinel (PVP encoding needs a mask)."""
    key = id(tokenizer)
    cached = _SENTINEL_TOKENIZERS.get(key)
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    if sentinel not in tokenizer.get_vocab():
        raise ValueError(f"{type(tokenizer).__name__} has no {sentinel} token; T5 PET needs a "
                         "T5 / mT5 tokenizer with sentinel tokens")
    tok = copy.deepcopy(tokenizer)
    tok.mask_token = sentinel
    if tok.mask_token_id != tokenizer.convert_tokens_to_ids(sentinel):
        raise RuntimeError(f"could not make {sentinel} the mask token of "
                           f"{type(tokenizer).__name__}")
    _SENTINEL_TOKENIZERS[key] = (tokenizer, tok)
    return tok


def t5_pet_encode(pvp: PVP, examples: Sequence[Any], tokenizer: Any,
                  max_seq_length: int) -> dict[str, np.ndarray]:
    """input_ids / attention_mask [N, S] and labels [N] (-1 unlabeled) for a T5 encoder.

    The PVP's parts are tokenized and truncated as for a masked LM (a T5 mask slot is always one
    sentinel, however many tokens the answer has); segment b follows segment a directly and a
    single EOS ends the input, as T5 inputs have.
    """
    examples = list(examples)
    tok = sentinel_tokenizer(tokenizer)
    guids = [e.guid for e in examples]
    segments = pvp.encode_ids(examples, tok, max_seq_length, [1] * len(examples))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = tokenizer.eos_token_id
    input_ids_NxS = np.full((len(examples), max_seq_length), pad, np.int32)
    attention_mask_NxS = np.zeros((len(examples), max_seq_length), np.int32)
    for i, (ids_a, ids_b) in enumerate(segments):
        ids = [*ids_a, *(ids_b or []), eos]
        if len(ids) > max_seq_length:
            raise ValueError(f"example {guids[i]!r}: {len(ids)} tokens do not fit "
                             f"max_seq_length={max_seq_length}")
        input_ids_NxS[i, : len(ids)] = ids
        attention_mask_NxS[i, : len(ids)] = 1
    counts_N = ((input_ids_NxS == tok.mask_token_id) & (attention_mask_NxS > 0)).sum(axis=1)
    bad = np.flatnonzero(counts_N != 1)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"example {guids[i]!r} has {int(counts_N[i])} {SENTINEL} tokens after "
                         "encoding, expected exactly 1 (was the mask truncated, or does the "
                         "text contain the sentinel?)")
    return {"input_ids": input_ids_NxS, "attention_mask": attention_mask_NxS,
            "labels": pvp.label_index(examples)}


def pad_targets(token_lists: Sequence[Sequence[int]], length: int | None = None,
                pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids [C, T], mask [C, T]) right-padded to `length` (default: longest)."""
    length = length or max(len(t) for t in token_lists)
    ids_CxT = np.full((len(token_lists), length), pad_id, np.int32)
    mask_CxT = np.zeros((len(token_lists), length), np.int32)
    for i, tokens in enumerate(token_lists):
        if len(tokens) > length:
            raise ValueError(f"target {i} has {len(tokens)} tokens, more than {length}")
        ids_CxT[i, : len(tokens)] = tokens
        mask_CxT[i, : len(tokens)] = 1
    return ids_CxT, mask_CxT


def t5_label_targets(pvp: PVP, tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Decoder targets `<extra_id_0> word` of every label's words: ids and mask [L, W, T]
    (W = most words of any label; a label with fewer words has all-zero mask rows)."""
    if not getattr(pvp.verbalizer, "words", None):
        raise NotImplementedError(
            f"{pvp.task_name} pattern {pvp.pattern_id} has per-example answer candidates, not "
            "label words; T5 PET scores fixed label words only")
    words = [list(pvp.verbalize(label)) for label in pvp.labels]
    max_words = max(len(w) for w in words)
    flat = [f"{SENTINEL} {word}" for label_words in words for word in label_words]
    tokens = [tokenizer.encode(text, add_special_tokens=False) for text in flat]
    ids_CxT, mask_CxT = pad_targets(tokens, pad_id=tokenizer.pad_token_id or 0)
    length = ids_CxT.shape[1]
    ids_LxWxT = np.full((len(words), max_words, length), tokenizer.pad_token_id or 0, np.int32)
    mask_LxWxT = np.zeros((len(words), max_words, length), np.int32)
    row = 0
    for label, label_words in enumerate(words):
        for w in range(len(label_words)):
            ids_LxWxT[label, w], mask_LxWxT[label, w] = ids_CxT[row], mask_CxT[row]
            row += 1
    return ids_LxWxT, mask_LxWxT


def t5_label_scores(apply_fn: Callable, params: Any, input_ids_BxS: jax.Array,
                    attention_mask_BxS: jax.Array, label_target_ids: Any, label_target_mask: Any,
                    *, start_id: int = 0, pad_id: int = 0, deterministic: bool = True,
                    rngs: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """[B, L] label scores: sum log p of each label's target tokens (teacher forcing).

    apply_fn: the T5 module's `apply`. label_target_ids / _mask: [L, T] (one target per label)
    or [L, W, T] (W words per label; the score is the mean over the words whose mask is not
    all zero). The encoder runs once per example; the decoder runs on B * L * W targets.
    """
    ids_LxWxT = jnp.asarray(label_target_ids, jnp.int32)
    mask_LxWxT = jnp.asarray(label_target_mask, jnp.float32)
    if ids_LxWxT.ndim == 2:
        ids_LxWxT, mask_LxWxT = ids_LxWxT[:, None], mask_LxWxT[:, None]
    num_labels, num_words, length = ids_LxWxT.shape
    num_targets = num_labels * num_words
    variables = {"params": params}
    rngs = dict(rngs or {})
    enc_BxSxD = apply_fn(variables, input_ids_BxS, attention_mask_BxS, deterministic,
                         method="encode", rngs=rngs)
    batch = enc_BxSxD.shape[0]
    # M = B * C rows, the C = L * W targets of one example adjacent.
    enc_MxSxD = jnp.repeat(enc_BxSxD, num_targets, axis=0)
    mask_MxS = jnp.repeat(attention_mask_BxS, num_targets, axis=0)
    weights_CxT = mask_LxWxT.reshape(num_targets, length)
    safe_CxT, decoder_in_CxT = teacher_forcing(ids_LxWxT.reshape(num_targets, length),
                                               weights_CxT, start_id, pad_id)
    targets_MxT = jnp.tile(safe_CxT, (batch, 1))
    decoder_in_MxT = jnp.tile(decoder_in_CxT, (batch, 1))
    logits_MxTxV = apply_fn(variables, decoder_in_MxT, enc_MxSxD, mask_MxS, None, deterministic,
                            method="decode", rngs=rngs)
    weights_MxT = jnp.tile(weights_CxT, (batch, 1))
    score_BxLxW = target_log_likelihood(logits_MxTxV, targets_MxT, weights_MxT).reshape(
        batch, num_labels, num_words)
    has_word_LxW = (jnp.sum(mask_LxWxT, axis=-1) > 0).astype(jnp.float32)
    return jnp.sum(score_BxLxW * has_word_LxW, axis=-1) / jnp.maximum(
        jnp.sum(has_word_LxW, axis=-1), 1.0)


def make_t5_label_scores_fn(apply_fn: Callable, label_target_ids: Any, label_target_mask: Any,
                            *, start_id: int = 0, pad_id: int = 0
                            ) -> Callable[[Any, Mapping[str, jax.Array]], jax.Array]:
    """fn(params, batch) -> [B, L] label scores, for jaxpet.engine.training.predict."""
    ids, mask = np.asarray(label_target_ids), np.asarray(label_target_mask)

    def label_scores(params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        return t5_label_scores(apply_fn, params, batch["input_ids"], batch["attention_mask"],
                               ids, mask, start_id=start_id, pad_id=pad_id)

    return label_scores


def make_t5_pet_loss(apply_fn: Callable, label_target_ids: Any, label_target_mask: Any,
                     *, start_id: int = 0, pad_id: int = 0, dropout: bool = False
                     ) -> Callable[[Any, Mapping[str, jax.Array], jax.Array],
                                   tuple[jax.Array, dict]]:
    """loss_fn(params, batch, rng) -> (cross-entropy over the T5 label scores, aux).

    batch: input_ids, attention_mask [B, S], labels [B] (from t5_pet_encode). The label scores
    play the part of PET's verbalizer logits in the cloze loss. label_target_ids / _mask:
    [L, T] or [L, W, T] as t5_label_scores takes them (traced arrays too: make_member_t5_pet_loss
    builds the loss inside the ensemble step). dropout=True trains with the model's dropout (rng
    from the step)."""

    def loss_fn(params: Any, batch: Mapping[str, jax.Array], rng: jax.Array
                ) -> tuple[jax.Array, dict]:
        rngs = {"dropout": rng} if dropout else None
        scores_BxL = t5_label_scores(apply_fn, params, batch["input_ids"],
                                     batch["attention_mask"], label_target_ids,
                                     label_target_mask, start_id=start_id, pad_id=pad_id,
                                     deterministic=not dropout, rngs=rngs)
        labels_B = batch["labels"]
        # over the labeled rows only, as the loss: an unlabeled row (-1) is no miss
        labeled_B = labels_B >= 0
        hits = jnp.sum((jnp.argmax(scores_BxL, axis=-1) == labels_B) & labeled_B)
        accuracy = hits / jnp.maximum(jnp.sum(labeled_B), 1)
        return cloze_loss(scores_BxL, labels_B), {"train_accuracy": accuracy}

    return loss_fn


# Batch keys of the per-member label targets in ensemble-parallel training.
T5_CONSTANT_KEYS = ("label_target_ids", "label_target_mask")


def make_member_t5_pet_loss(apply_fn: Callable, *, start_id: int = 0, pad_id: int = 0,
                            dropout: bool = False) -> Callable:
    """make_t5_pet_loss reading each member's label targets [L, W, T] from the batch keys
    T5_CONSTANT_KEYS ([M, L, W, T] for the ensemble; jaxpet.engine.ensemble_training)."""
    return constants_from_batch(
        lambda ids_LxWxT, mask_LxWxT: make_t5_pet_loss(
            apply_fn, ids_LxWxT, mask_LxWxT, start_id=start_id, pad_id=pad_id, dropout=dropout),
        T5_CONSTANT_KEYS)


def pad_label_targets(ids_LxWxT: np.ndarray, mask_LxWxT: np.ndarray, words: int, length: int,
                      pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Label targets padded to `words` words of `length` tokens. The scores stay the same: a
    padded word has an all-zero mask (not counted) and padded tokens come after the real ones
    (the decoder is causal)."""
    labels, num_words, num_tokens = ids_LxWxT.shape
    widths = [(0, 0), (0, words - num_words), (0, length - num_tokens)]
    return (np.pad(ids_LxWxT, widths, constant_values=pad_id),
            np.pad(mask_LxWxT, widths, constant_values=0))


def check_t5_pattern(pvp: PVP) -> None:
    """Fails for patterns whose answers are per-example candidates (COPA, WSC, ReCoRD)."""
    if getattr(pvp, "multi_token", False) or not getattr(pvp.verbalizer, "words", None):
        raise ValueError(
            f"task {pvp.task_name!r} pattern {pvp.pattern_id} scores per-example answer "
            "candidates (COPA / WSC / ReCoRD style); a T5 PET backbone scores fixed label words "
            "only. Use an encoder masked LM (BERT, RoBERTa, ALBERT) for this task")


def check_t5_pet_options(config: Config) -> None:
    """Fails before any training on the options a T5 PET backbone does not support."""
    if config.method in ("pet", "ipet") and config.pet.lm_training:
        # PET's auxiliary loss is masked-token prediction; T5's counterpart (span corruption)
        # is a different objective, not implemented here
        raise ConfigError(
            "pet.lm_training (the auxiliary MLM loss) needs a masked LM; T5 has no MLM head. "
            "Set pet.lm_training: false for a T5 backbone")
    if config.mlm_pretrain.enabled or config.method == "mlm_pretrain":
        raise ConfigError(
            "mlm_pretrain trains a masked-LM head, which T5 does not have; set "
            "mlm_pretrain.enabled: false for a T5 backbone")


class Seq2SeqScorer(LabelWordScorer):
    """T5 as a PET backbone: a label's score is the log-likelihood of `<extra_id_0> word`."""

    kind = "seq2seq"
    supports_mlm = False
    supports_priming = False

    def __init__(self, pvp: PVP, lm: LoadedModel, config: Config) -> None:
        check_t5_pattern(pvp)
        super().__init__(pvp, lm, config)
        self.label_targets = t5_label_targets(pvp, lm.tokenizer)
        self.constants = dict(zip(T5_CONSTANT_KEYS, self.label_targets, strict=True))
        self.constant_pad = {"label_target_ids": lm.config.pad_token_id, "label_target_mask": 0}
        # the decoder scores all L x W targets of T tokens of an example
        self.decoder_positions = int(np.prod(self.label_targets[0].shape))
        self.special_ids = dict(start_id=lm.config.decoder_start_token_id,
                                pad_id=lm.config.pad_token_id)

    def encode_rows(self, examples: Sequence[Any]) -> dict[str, np.ndarray]:
        return t5_pet_encode(self.pvp, examples, self.lm.tokenizer,
                             self.config.pet.max_seq_length)

    def loss_fn(self) -> Callable:
        return make_t5_pet_loss(self.lm.module.apply, *self.label_targets, **self.special_ids,
                                dropout=self.lm.config.dropout_rate > 0.0)

    def member_loss_fn(self) -> Callable:
        return make_member_t5_pet_loss(self.lm.module.apply, **self.special_ids,
                                       dropout=self.lm.config.dropout_rate > 0.0)

    def build_scores_fn(self) -> Callable:
        return make_t5_label_scores_fn(self.lm.module.apply, *self.label_targets,
                                       **self.special_ids)
