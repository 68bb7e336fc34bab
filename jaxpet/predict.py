"""Labels new text with a saved model or a run's final model: `load(path).predict(examples)`."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from omegaconf import OmegaConf

from jaxpet.config import Config, merge_config
from jaxpet.config.load import fill_unread
from jaxpet.data.example import Example
from jaxpet.data.tasks import get_task
from jaxpet.engine.sharding import build_mesh, make_mesh
from jaxpet.models import LoadedModel, load_pretrained
from jaxpet.pipelines.distill import encode_classifier_inputs
from jaxpet.pipelines.member import pattern_scores, place_params, predict_logits, prepare_pattern
from jaxpet.pipelines.merge import merge_logits, softmax
from jaxpet.pipelines.setup import TaskData, register_config_task
from jaxpet.predict_inputs import as_examples, read_input
from jaxpet.prompts.encoding import special_layout
from jaxpet.runs import outputs
from jaxpet.runs.final_model import final_model_folders, member_weights
from jaxpet.runs.saved_model import ModelCard, SavedModelError, read_card
from jaxpet.scoring.cloze_step import make_classifier_logits_fn

# the head each scorer kind loads its saved folder with (jaxpet.models.load_pretrained)
HEADS = {"cloze": "mlm", "candidates": "mlm", "seq2seq": "seq2seq", "classifier": "classifier"}

__all__ = ["Predictor", "load", "predict_file"]


@dataclasses.dataclass
class SavedScorer:
    """One saved model and the pipeline's scoring function for its kind.

    `fn` is built on the first call and kept: the pipeline's jitted programs are cached per
    function object, so later calls (and every batch of a call) reuse the compiled program of
    their length bucket.
    """

    folder: Path
    card: ModelCard
    config: Config  # jaxpet.config.Config rebuilt from the card
    lm: LoadedModel  # jaxpet.models.LoadedModel, params placed on `mesh`
    mesh: Mesh
    fn: Any = None

    def scores(self, examples: Sequence[Example]) -> np.ndarray:
        """Raw label scores [N, L] as the run's evaluation writes them (eval_logits.npy):
        verbalizer logits (cloze), summed candidate log-likelihoods (candidates), T5 label
        log-likelihoods (seq2seq) or classifier logits."""
        if self.card.scorer == "classifier":
            self.fn = self.fn or make_classifier_logits_fn(self.lm.module.apply)
            arrays = encode_classifier_inputs(self.lm, examples, self.card.max_seq_length)
            return predict_logits(self.config, self.fn, self.lm.params, arrays, self.mesh)
        # the pipeline's own encoding: the new texts are the evaluation set; one example
        # stands in for the labeled set, which prediction does not use
        data = TaskData(self.card.task, list(self.card.labels), train=list(examples[:1]),
                        eval=list(examples), unlabeled=[])
        pattern = prepare_pattern(self.config, self.lm, data, self.card.pattern_id)
        if pattern.scorer.kind != self.card.scorer:
            raise SavedModelError(
                f"{self.folder / 'jaxpet.json'}: scorer {self.card.scorer!r}, but pattern "
                f"{self.card.pattern_id} of task {self.card.task!r} with this tokenizer is "
                f"scored as {pattern.scorer.kind!r} ({pattern.scorer.describe()})")
        self.fn = self.fn or pattern.logits_fn
        pattern = dataclasses.replace(pattern, logits_fn=self.fn)
        return pattern_scores(self.config, pattern, self.lm.params, pattern.eval, examples,
                              self.mesh)[0]


@dataclasses.dataclass
class Predictor:
    """Labels examples with one saved model, or with an ensemble merged as its run merged it.

    `labels` are the label names in score order; `source` says what answers: "model" (a model
    folder), "distilled" (a run's distilled classifier) or "ensemble" (a run's members).
    """

    scorers: list[SavedScorer]
    labels: list[str]
    source: str
    reduction: str = "mean"
    weights_M: np.ndarray | None = None
    max_seq_length: int = 0

    def scores(self, examples: Iterable[Any]) -> np.ndarray:
        """Label scores [N, L]: the model's raw scores, or for an ensemble the members' scores
        merged by the run's `pet.reduction` (jaxpet.pipelines.merge.merge_logits, float32 as the run
        writes ensemble/eval_logits.npy)."""

        examples = as_examples(examples)
        if not examples:
            return np.zeros((0, len(self.labels)), np.float32)
        self.warn_truncated(examples)
        if self.source != "ensemble":
            return self.scorers[0].scores(examples)
        scores_MxNxL = np.stack([s.scores(examples) for s in self.scorers])
        return merge_logits(scores_MxNxL, self.weights_M, self.reduction).astype(np.float32)

    def predict(self, examples: Iterable[Any]) -> tuple[list[str], np.ndarray]:
        """(label names [N], probabilities [N, L] float64): the softmax of `scores` over the
        labels (for an ensemble, of the merged scores, as PET turns the merged logits into
        soft labels); the label is the one with the highest score."""

        scores_NxL = self.scores(examples)
        probs_NxL = softmax(scores_NxL) if len(scores_NxL) else scores_NxL.astype(np.float64)
        return [self.labels[i] for i in np.argmax(scores_NxL, axis=-1)], probs_NxL

    def warn_truncated(self, examples: Sequence[Example]) -> None:
        """One warning for all inputs whose texts and special tokens alone need more than
        max_seq_length tokens: they are cut as in training (PET's truncation of the
        shortenable parts). A pattern's own words may cut a few more texts than it names."""

        tokenizer = self.scorers[0].lm.tokenizer

        def count(texts: list[str]) -> np.ndarray:
            return np.asarray([len(ids) for ids in tokenizer(
                texts, add_special_tokens=False)["input_ids"]])

        specials = {pair: special_layout(tokenizer, pair).num_special for pair in (False, True)}
        lengths_N = (count([e.text_a for e in examples]) + count([e.text_b or "" for e in examples])
                     + np.asarray([specials[bool(e.text_b)] for e in examples]))
        long = np.flatnonzero(lengths_N > self.max_seq_length)
        if long.size:
            warnings.warn(
                f"{long.size} of {len(examples)} inputs have more tokens than the model's "
                f"max_seq_length={self.max_seq_length} (the first: id {examples[long[0]].guid!r}, "
                f"{lengths_N[long[0]]} tokens); they were truncated as in training", stacklevel=3)


def card_config(card: ModelCard, folder: Path, batch_size: int | None) -> Any:
    """The run's Config rebuilt from the card (its decoding strategy and, when given, the
    prediction batch size applied)."""
    if not card.config:
        raise SavedModelError(f"{folder / 'jaxpet.json'}: no run config; jaxpet predict needs "
                              "the config of the run that trained the model")
    merged = merge_config(OmegaConf.structured(Config), OmegaConf.create(card.config),
                          f"{folder / 'jaxpet.json'} (config)")
    fill_unread(merged, merged.method)  # sections the run's method does not read
    config = OmegaConf.to_object(merged)
    if config.eval.priming:
        raise SavedModelError(f"{folder / 'jaxpet.json'}: trained with eval.priming, whose "
                              "inputs hold the labeled examples; jaxpet predict does not prime")
    pet = config.pet
    if card.decoding:
        pet = dataclasses.replace(pet, decoding_strategy=card.decoding)
    evaluation = config.eval
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        evaluation = dataclasses.replace(evaluation, batch_size=batch_size)
    return dataclasses.replace(config, pet=pet, eval=evaluation)


def prediction_mesh(config: Config) -> Any:
    """The run's mesh when this machine has its devices, else all devices data-parallel."""

    try:
        return build_mesh(config)
    except ValueError:
        return make_mesh(data=-1)


def load_scorer(folder: Path, batch_size: int | None = None,
                mesh: Mesh | None = None) -> SavedScorer:
    """One saved model folder as a SavedScorer; errors name the folder's file and key."""

    card = read_card(folder)
    config = card_config(card, folder, batch_size)
    if config.task.definition is not None:
        register_config_task(config.task)
    if card.task.lower() == "record":
        raise NotImplementedError(f"{folder}: ReCoRD's answers are each example's candidate "
                                  "entities, not fixed labels; jaxpet predict labels tasks "
                                  "with fixed labels")
    if card.scorer != "classifier" and list(get_task(card.task).labels) != list(card.labels):
        raise SavedModelError(f"{folder / 'jaxpet.json'}: labels {card.labels} are not task "
                              f"{card.task!r}'s {list(get_task(card.task).labels)}")
    lm = load_pretrained(folder, head=HEADS[card.scorer],
                         num_labels=len(card.labels) if card.scorer == "classifier" else None,
                         dtype=jnp.dtype(config.model.dtype), seed=config.seed)
    mesh = mesh if mesh is not None else prediction_mesh(config)
    lm = dataclasses.replace(lm, params=place_params(lm.params, mesh))
    return SavedScorer(folder, card, config, lm, mesh)


def load(path: str | Path, batch_size: int | None = None) -> Predictor:
    """The Predictor of a saved model folder (that model), or of a run folder (its final
    model: the distilled classifier when saved, else its saved members merged as the run
    merges them, by `pet.reduction` with the members' wmean weights, else the one classifier
    of a sequence_classifier run). `batch_size` replaces the run's eval.batch_size."""
    source, folders = final_model_folders(path)
    if source != "ensemble":
        scorer = load_scorer(folders[0], batch_size)
        return Predictor([scorer], list(scorer.card.labels), source,
                         max_seq_length=scorer.card.max_seq_length)
    first = load_scorer(folders[0], batch_size)
    scorers = [first] + [load_scorer(f, batch_size, mesh=first.mesh) for f in folders[1:]]
    for scorer in scorers[1:]:
        if list(scorer.card.labels) != list(first.card.labels):
            raise SavedModelError(f"{scorer.folder / 'jaxpet.json'}: labels "
                                  f"{scorer.card.labels} differ from {folders[0]}'s "
                                  f"{first.card.labels}")
    reduction = first.config.pet.reduction
    return Predictor(scorers, list(first.card.labels), "ensemble", reduction,
                     member_weights(folders, reduction),
                     max_seq_length=min(s.card.max_seq_length for s in scorers))


def output_records(examples: Sequence[Example], labels: Sequence[str], predicted: Sequence[str],
                   scores_NxL: np.ndarray, probs_NxL: np.ndarray) -> list[dict[str, Any]]:
    """One JSON record per example: id, label, and scores / probs keyed by label name."""
    def by_label(row: np.ndarray) -> dict[str, float | None]:
        return {name: float(x) if np.isfinite(x) else None
                for name, x in zip(labels, row, strict=True)}

    return [{"id": e.guid, "label": label, "probs": by_label(p), "scores": by_label(s)}
            for e, label, s, p in zip(examples, predicted, scores_NxL, probs_NxL, strict=True)]


def predict_file(model: str, input_path: str, output: str | None = None,
                 batch_size: int | None = None) -> int:
    """`jaxpet predict`: labels every input example and writes JSONL (stdout when `output`
    is None); returns the number of examples."""

    predictor = load(model, batch_size)
    examples = read_input(input_path, predictor.scorers[0].card.task)
    try:
        scores_NxL = predictor.scores(examples)
    except ValueError as error:
        raise ValueError(f"{input_path}: {error} (ids without an id column are line "
                         "numbers)") from None
    predicted = [predictor.labels[i] for i in np.argmax(scores_NxL, axis=-1)]
    records = output_records(examples, predictor.labels, predicted, scores_NxL,
                             softmax(scores_NxL))
    if output is None:
        for record in records:
            sys.stdout.write(json.dumps(record) + "\n")
    else:
        outputs.write_jsonl(output, records)
    return len(records)
