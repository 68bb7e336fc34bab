"""PETAL: label words found automatically from a pattern, a masked LM and labeled examples."""

# Ranking as in Schick, Schmid and Schuetze (2020): real words (a word-initial token with >= 2
# letters), `num_candidates` per label pre-selected by summed log-likelihood, then ranked by the
# likelihood ratio whose positive part is weighted by #negatives / #positives. Probabilities
# come from a log-softmax, so a word whose probability underflows keeps a finite score instead
# of -inf, and a pattern's segments stay as PET training encodes them (not joined into one).

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxpet.config import Config, ConfigError
from jaxpet.data.batching import DEFAULT_BUCKETS, trim_to_bucket
from jaxpet.data.tasks import load_examples
from jaxpet.engine.compilation_cache import enable_compilation_cache
from jaxpet.engine.sharding import build_mesh
from jaxpet.models import LoadedModel
from jaxpet.pipelines import mlm_pretrain
from jaxpet.pipelines.setup import load_model, task_spec, verbalizer_file
from jaxpet.prompts import get_pvp
from jaxpet.prompts.encoding import is_byte_level, tokenize_parts
from jaxpet.runs.outputs import write_text

MIN_LETTERS = 2  # a real word has at least this many letters (the paper's filter)


# -- candidate words ----------------------------------------------------------------------------
def word_initial_marker(tokenizer: Any) -> tuple[str, str]:
    """(kind, marker) of the tokenizer family: ("prefix", "Ġ") byte-level BPE, ("prefix", "▁")
    SentencePiece, ("continuation", "##") WordPiece (a word-initial token has no "##")."""

    if is_byte_level(tokenizer):
        return "prefix", "Ġ"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = type(backend.model).__name__ if backend is not None else ""
    vocab = tokenizer.get_vocab()
    if model == "WordPiece" or any(t.startswith("##") for t in vocab):
        return "continuation", "##"
    if any(t.startswith("▁") for t in vocab):
        return "prefix", "▁"
    raise ValueError(f"{type(tokenizer).__name__}: cannot tell its word-initial tokens (neither "
                     "WordPiece '##', SentencePiece '▁' nor byte-level BPE 'Ġ')")


def word_of_token(token: str, kind: str, marker: str) -> str | None:
    """The word a vocabulary token stands for when it starts a word, else None."""
    if kind == "prefix":
        return token[len(marker):] if token.startswith(marker) else None
    if token.startswith(marker) or (token[:1], token[-1:]) in (("[", "]"), ("<", ">")):
        return None  # a continuation piece, or a placeholder such as [unused3]
    return token


def candidate_words(tokenizer: Any, word_counts: Counter | None = None,
                    max_words: int = 0) -> dict[str, int]:
    """Real words of the vocabulary -> token id: word-initial tokens with >= 2 letters that
    encode back to exactly that one token as a verbalizer word; with `word_counts` and
    `max_words` > 0 only the `max_words` most frequent of them (words that occur)."""

    kind, marker = word_initial_marker(tokenizer)
    special = set(tokenizer.all_special_ids)
    words: dict[str, int] = {}
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        word = word_of_token(token, kind, marker)
        if (word is None or token_id in special
                or sum(c.isalpha() for c in word) < MIN_LETTERS):
            continue
        words.setdefault(word, token_id)
    # a verbalizer word is encoded like a pattern part: keep words that come back as the token
    encoded = tokenize_parts(tokenizer, list(words))
    words = {w: i for (w, i), ids in zip(words.items(), encoded, strict=True) if ids == [i]}
    if word_counts is not None and max_words > 0:
        frequent = sorted((w for w in words if word_counts[w] > 0),
                          key=lambda w: (-word_counts[w], words[w]))[:max_words]
        words = {w: words[w] for w in frequent}
    if not words:
        raise ValueError("no candidate label words: no vocabulary token is a word-initial "
                         f"token of >= {MIN_LETTERS} letters (petal.max_words too strict?)")
    return words


def text_word_counts(examples: Sequence[Any], lowercase: bool) -> Counter:
    """How often each word occurs in the examples' texts (text_a and text_b)."""
    counts: Counter = Counter()
    for example in examples:
        for text in (example.text_a, example.text_b):
            if text:
                counts.update(re.findall(r"\w+", text.lower() if lowercase else text))
    return counts


# -- scores at the mask -------------------------------------------------------------------------
@partial(jax.jit, static_argnums=0)
def _log_probs_at_mask(module: Any, params: Any, input_ids_BxS: Any, attention_mask_BxS: Any,
                       token_type_ids_BxS: Any, positions_Bx1: Any) -> Any:
    logits_Bx1xV = module.apply({"params": params}, input_ids_BxS, attention_mask_BxS,
                                token_type_ids=token_type_ids_BxS, positions=positions_Bx1)
    return jax.nn.log_softmax(logits_Bx1xV[:, 0].astype("float32"), axis=-1)


def mask_log_probs(lm: LoadedModel, params: Any, enc: dict[str, np.ndarray],
                   batch_size: int) -> np.ndarray:
    """[N, V] log-probabilities of every vocabulary token at each example's (single) mask.

    Every batch has `batch_size` rows (the last one padded by repeating row 0), so one program
    serves all batches."""

    keys = ("input_ids", "attention_mask", "token_type_ids")
    arrays = trim_to_bucket({k: enc[k] for k in keys}, DEFAULT_BUCKETS)
    positions_Nx1 = enc["mask_positions"][:, :1].astype(np.int32)
    num = len(positions_Nx1)
    rows = []
    for start in range(0, num, batch_size):
        index = np.arange(start, start + batch_size)
        index = np.where(index < num, index, 0)
        out_BxV = _log_probs_at_mask(lm.module, params,
                                     *(np.asarray(arrays[k][index]) for k in keys),
                                     positions_Nx1[index])
        rows.append(np.asarray(out_BxV)[: min(batch_size, num - start)])
    return np.concatenate(rows)


# -- ranking ------------------------------------------------------------------------------------
def _log1m_exp(log_p: np.ndarray) -> np.ndarray:
    """log(1 - p) from log p, accurate for p near 0 and near 1."""
    return np.where(log_p > -0.6931, np.log(-np.expm1(log_p)), np.log1p(-np.exp(log_p)))


def word_scores(log_probs_NxC: np.ndarray, is_label_N: np.ndarray, normalize: bool = True,
                score: str = "llr") -> np.ndarray:
    """[C] score of each word for one label over N examples.

    llr: w * (sum_pos log p - sum_pos log(1-p)) + (sum_neg log(1-p) - sum_neg log p);
    ce:  w * sum_pos log p + sum_neg log(1-p); w = #neg / #pos with `normalize`, else 1."""
    pos_N = is_label_N.astype(np.float64)
    neg_N = 1.0 - pos_N
    weight = neg_N.sum() / pos_N.sum() if normalize else 1.0
    log_p_NxC = log_probs_NxC.astype(np.float64)
    log_q_NxC = _log1m_exp(log_p_NxC)
    if score == "llr":
        return weight * (pos_N @ (log_p_NxC - log_q_NxC)) + neg_N @ (log_q_NxC - log_p_NxC)
    if score == "ce":
        return weight * (pos_N @ log_p_NxC) + neg_N @ log_q_NxC
    raise ValueError(f"config key 'petal.score' must be 'llr' or 'ce', got {score!r}")


def _top(scores_C: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties: the lower index first)."""
    return np.argsort(-scores_C, kind="stable")[:k]


def rank_words(log_probs: Sequence[np.ndarray], labels_N: np.ndarray, num_labels: int,
               candidate_ids: np.ndarray, *, num_candidates: int = 1000,
               words_per_label: int = 10, normalize: bool = True,
               score: str = "llr") -> tuple[np.ndarray, np.ndarray]:
    """(ids [L, W], scores [L, W]) of each label's best words, best first.

    `log_probs`: one [N, V] array per pattern (their scores add up); `labels_N`: label index of
    each example; `candidate_ids`: the vocabulary ids allowed as words. Per label, the
    `num_candidates` words of highest summed log p over the label's examples are scored."""
    candidate_ids = np.asarray(candidate_ids)
    per_pattern_NxC = [lp[:, candidate_ids] for lp in log_probs]
    ids_LxW, scores_LxW = [], []
    for label in range(num_labels):
        is_label_N = labels_N == label
        likelihood_C = sum(is_label_N.astype(np.float64) @ lp for lp in per_pattern_NxC)
        keep = (_top(likelihood_C, num_candidates) if num_candidates > 0
                else np.arange(len(candidate_ids)))
        scores_K = sum(word_scores(lp[:, keep], is_label_N, normalize, score)
                       for lp in per_pattern_NxC)
        best = _top(scores_K, words_per_label)
        ids_LxW.append(candidate_ids[keep[best]])
        scores_LxW.append(scores_K[best])
    return np.stack(ids_LxW), np.stack(scores_LxW)


# -- the search from a config -------------------------------------------------------------------
@dataclass
class PetalResult:
    """Per pattern id: label -> [(word, score), ...] best first; plus what the search used."""

    words: dict[int, dict[str, list[tuple[str, float]]]]
    task: str
    num_examples: int
    num_candidates: int
    seconds: float


def _load_labeled(config: Config) -> tuple[list[Any], list[Any], list[str]]:
    """(labeled train examples, unlabeled examples, label names); errors name the key."""

    task = config.task
    try:
        spec = task_spec(task)  # with task.hf_dataset: the dataset's splits
    except KeyError as error:
        raise ConfigError(f"config key 'task.name': {error}") from None
    train = load_examples(spec, task.data_dir, "train", task.train_examples,
                          task.sample_seed, task.split_examples_evenly)
    labels = [str(label) for label in spec.labels]
    train = [e for e in train if e.label is not None]
    if not train:
        raise ValueError(f"petal needs labeled examples: task {task.name!r} has none in its "
                         f"train split (task.train_examples is {task.train_examples})")
    missing = [label for label in labels if all(e.label != label for e in train)]
    if missing:
        raise ValueError(f"petal: label(s) {missing} of task {task.name!r} have no labeled "
                         f"example among the {len(train)} (raise task.train_examples or set "
                         "task.split_examples_evenly)")
    unlabeled = (load_examples(spec, task.data_dir, "unlabeled", task.unlabeled_examples)
                 if task.unlabeled_examples and config.petal.max_words > 0 else [])
    return train, unlabeled, labels


def _model_params(config: Config, unlabeled: list[Any]) -> tuple[Any, Any]:
    """The masked LM and its parameters, after the MLM warm-up when mlm_pretrain is enabled."""

    lm = load_model(config, "mlm")
    if lm.head != "mlm":
        raise ConfigError(f"config key 'model.name' ({config.model.name}): petal needs a masked "
                          f"LM (BERT, RoBERTa, XLM-R, ALBERT), not a {lm.head} model")
    if not config.mlm_pretrain.enabled:
        return lm, lm.params

    task = config.task
    text = unlabeled or load_examples(task_spec(task), task.data_dir, "unlabeled",
                                      task.unlabeled_examples)
    params, _ = mlm_pretrain.run(config, lm, text, build_mesh(config), config.output_dir)
    return lm, params


def search(config: Config) -> PetalResult:
    """Label words for every pattern in pet.pattern_ids (config section `petal`)."""

    start = time.perf_counter()
    settings = config.petal
    enable_compilation_cache(config.compilation_cache)
    train, unlabeled, labels = _load_labeled(config)
    lm, params = _model_params(config, unlabeled)
    tokenizer = lm.tokenizer
    counts = None
    if settings.max_words > 0:
        lowercase = bool(getattr(tokenizer, "do_lower_case", False))
        counts = text_word_counts(train + unlabeled, lowercase)
    words = candidate_words(tokenizer, counts, settings.max_words)
    id_to_word = {i: w for w, i in words.items()}
    candidate_ids = np.fromiter(words.values(), dtype=np.int64)
    log_probs, labels_N = [], None
    for pattern_id in config.pet.pattern_ids:
        try:
            pvp = get_pvp(config.task.name, pattern_id, verbalizer_file(config))
        except KeyError as error:
            raise ConfigError(f"config key 'pet.pattern_ids': {error.args[0]}") from None
        enc = pvp.encode(train, tokenizer, config.pet.max_seq_length)
        masks_N = (enc["mask_positions"] >= 0).sum(axis=1)
        if getattr(pvp, "multi_token", False) or (masks_N != 1).any():
            raise ValueError(f"petal needs one mask per example: pattern {pattern_id} of task "
                             f"{config.task.name!r} has {int(masks_N.max())} (config key "
                             "'pet.pattern_ids')")
        labels_N = np.asarray(enc["labels"])
        log_probs.append(mask_log_probs(lm, params, enc, config.eval.batch_size))
    groups = ([list(range(len(log_probs)))] if settings.combine_patterns
              else [[i] for i in range(len(log_probs))])
    found: dict[int, dict[str, list[tuple[str, float]]]] = {}
    for group in groups:
        ids_LxW, scores_LxW = rank_words(
            [log_probs[i] for i in group], labels_N, len(labels), candidate_ids,
            num_candidates=settings.num_candidates, words_per_label=settings.words_per_label,
            normalize=settings.normalize, score=settings.score)
        table = {label: [(id_to_word[int(i)], float(s)) for i, s in zip(ids, scores, strict=True)]
                 for label, ids, scores in zip(labels, ids_LxW, scores_LxW, strict=True)}
        for i in group:
            found[int(config.pet.pattern_ids[i])] = table
    return PetalResult(found, config.task.name, len(train), len(candidate_ids),
                       time.perf_counter() - start)


# -- outputs ------------------------------------------------------------------------------------
def verbalizer_yaml(result: PetalResult) -> str:
    """`{pattern_id: {label: [words]}}` as YAML, each word's score as a comment."""
    lines = [f"# label words found by jaxpet petal for task {result.task!r} "
             f"({result.num_examples} labeled examples); use: task.verbalizer=<this file>"]
    for pattern_id, table in result.words.items():
        lines.append(f"{pattern_id}:")
        for label, scored in table.items():
            lines.append(f"  {json.dumps(label)}:")
            lines += [f"    - {json.dumps(word)}  # {score:.4f}" for word, score in scored]
    return "\n".join(lines) + "\n"


def summary_markdown(result: PetalResult) -> str:
    """A table per pattern: label, its words with scores."""
    out = [f"# PETAL label words: task {result.task}", "",
           f"{result.num_examples} labeled examples, {result.num_candidates} candidate words, "
           f"{result.seconds:.1f} s", ""]
    for pattern_id, table in result.words.items():
        out += [f"## Pattern {pattern_id}", "", "| label | words (score) |", "|---|---|"]
        out += [f"| {label} | " + ", ".join(f"{w} ({s:.2f})" for w, s in scored) + " |"
                for label, scored in table.items()]
        out.append("")
    return "\n".join(out)


def output_folder(config: Config) -> Path:
    return Path(config.petal.output_dir or Path(config.output_dir) / "petal")


def write_outputs(result: PetalResult, folder: str | os.PathLike) -> Path:
    """Writes verbalizer.yaml and summary.md into `folder`; returns the verbalizer's path."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "verbalizer.yaml"
    write_text(path, verbalizer_yaml(result))
    write_text(folder / "summary.md", summary_markdown(result))
    return path
