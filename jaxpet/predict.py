"""Labels new text with a saved model or a run's final model: `load(path).predict(examples)`."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxpet.config import Config, merge_config
from jaxpet.config.load import fill_unread
from jaxpet.data.example import Example
from jaxpet.data.files import read_jsonl
from jaxpet.data.hf_dataset import load_splits
from jaxpet.data.tasks import get_task
from jaxpet.engine.sharding import build_mesh, make_mesh
from jaxpet.models import LoadedModel, load_pretrained
from jaxpet.pipelines.merge import merge_logits, softmax
from jaxpet.pipelines.setup import TaskData, register_config_task
from jaxpet.prompts.encoding import special_layout
from jaxpet.runs import outputs
from jaxpet.runs.saved_model import ModelCard, SavedModelError, is_saved_model, read_card
from jaxpet.scoring.cloze_step import make_classifier_logits_fn

# the PET pipeline's member and classifier functions are imported where they are used:
# they load the pipeline, which `jaxpet predict` of a single saved model does not need.

# the head each scorer kind loads its saved folder with (jaxpet.models.load_pretrained)
HEADS = {"cloze": "mlm", "candidates": "mlm", "seq2seq": "seq2seq", "classifier": "classifier"}
# input columns with a meaning of their own; every other column or field goes to Example.meta
INPUT_KEYS = ("id", "text_a", "text_b", "choices")

__all__ = ["Predictor", "PredictInputError", "load", "predict_file", "read_input"]


class PredictInputError(ValueError):
    """An input file jaxpet predict cannot read; the message names the file and line."""


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
        from jaxpet.pipelines.member import predict_logits

        if self.card.scorer == "classifier":
            from jaxpet.pipelines.distill import encode_classifier_inputs

            self.fn = self.fn or make_classifier_logits_fn(self.lm.module.apply)
            arrays = encode_classifier_inputs(self.lm, examples, self.card.max_seq_length)
            return predict_logits(self.config, self.fn, self.lm.params, arrays, self.mesh)
        from jaxpet.pipelines.member import pattern_scores, prepare_pattern

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


def as_examples(items: Iterable[Any]) -> list[Example]:
    """Examples from Example objects, plain strings (text_a) or dicts with text_a / text_b /
    choices / id (other keys go to meta); ids default to the position."""
    examples = []
    for i, item in enumerate(items):
        if isinstance(item, Example):
            examples.append(item)
        elif isinstance(item, str):
            examples.append(Example(guid=str(i), text_a=item))
        elif isinstance(item, Mapping):
            examples.append(example_from_record(item, str(i), f"example {i}"))
        else:
            raise TypeError(f"example {i}: expected an Example, a str or a dict with text_a, "
                            f"got {type(item).__name__}")
    return examples


def example_from_record(record: Mapping[str, Any], default_id: str, where: str) -> Example:
    """An Example from an input record; `where` (file:line) names it in errors."""
    if "text_a" not in record:
        raise PredictInputError(f"{where}: no 'text_a' (has {sorted(record)}); each input needs "
                                "text_a, and may have text_b, choices and id")
    for key in ("text_a", "text_b"):
        value = record.get(key)
        if not (isinstance(value, str) or (key == "text_b" and value in (None, ""))):
            raise PredictInputError(f"{where}: {key} must be a string, got {value!r}")
    meta = {k: v for k, v in record.items() if k not in INPUT_KEYS}
    choices = record.get("choices")
    if choices is not None:
        if isinstance(choices, str):  # a CSV cell: a JSON list
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError:
                choices = None
        if not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
            raise PredictInputError(f"{where}: choices must be a list of strings (in CSV: a "
                                    f"JSON list), got {record.get('choices')!r}")
        # COPA's answers are meta choice1, choice2; other multi-token tasks read candidates
        meta.update({f"choice{k + 1}": c for k, c in enumerate(choices)}, candidates=choices)
    guid = record.get("id")
    return Example(guid=default_id if guid in (None, "") else str(guid),
                   text_a=record["text_a"], text_b=record.get("text_b") or None, meta=meta)


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise PredictInputError(f"{name}:{line}: not valid UTF-8 text (byte "
                                f"{error.start})") from None


def read_input(path: str, task: str) -> list[Example]:
    """The examples of an input file: `-` is stdin with one text per line; a .txt file the
    same; JSONL or CSV (header row) with a text_a column; a folder written by datasets'
    save_to_disk with such columns; else the task's own file format (read as its test split,
    labels dropped). Errors name the file and line (the dataset's split and row)."""
    if path == "-":
        return _lines(_decode(sys.stdin.buffer.read(), "stdin"), "stdin")
    file = Path(path)
    if file.is_dir():
        return _dataset_folder(path)
    if not file.is_file():
        raise FileNotFoundError(f"{path}: input file not found")
    text = _decode(file.read_bytes(), path)
    if not text.strip():
        raise PredictInputError(f"{path}: the file is empty; expected JSONL or CSV with a "
                                "text_a column, one text per line (.txt), or the task's format")
    if file.suffix == ".txt":
        return _lines(text, path)
    if file.suffix in (".jsonl", ".json") or text.lstrip()[0] == "{":
        examples, keys = _jsonl(path)
    elif file.suffix in (".csv", ".tsv"):
        examples, keys = _csv(text, path, "\t" if file.suffix == ".tsv" else ",")
    else:
        return _task_file(path, task)
    if examples is not None:
        return examples
    try:  # no text_a: a file in the task's own format (e.g. SuperGLUE JSONL)
        return _task_file(path, task)
    except PredictInputError as error:
        raise PredictInputError(
            f"{path}:1: no 'text_a' column (has {keys}); give text_a, and optionally text_b, "
            f"choices, id, or task {task!r}'s own format, as which it did not read: "
            f"{error.args[0]}") from None


def _dataset_folder(path: str) -> list[Example]:
    """The rows of a save_to_disk folder (its one split, or its "test" split) as inputs."""

    splits = load_splits(path)
    name = next(iter(splits)) if len(splits) == 1 else "test" if "test" in splits else None
    if name is None:
        raise PredictInputError(f"{path}: a dataset with splits {sorted(splits)}; give one "
                                "split (or one named 'test') to label")
    dataset, where = splits[name], f"{path} [split {name!r}]"
    if "text_a" not in dataset.column_names:
        raise PredictInputError(f"{where}: no 'text_a' column (has {dataset.column_names}); "
                                "each input needs text_a, and may have text_b, choices and id")
    examples = [example_from_record(row, str(i), f"{where}, row {i}")
                for i, row in enumerate(dataset.to_list())]
    if not examples:
        raise PredictInputError(f"{where}: no rows")
    return examples


def _lines(text: str, name: str) -> list[Example]:
    examples = [Example(guid=str(n), text_a=line.rstrip("\r"))
                for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not examples:
        raise PredictInputError(f"{name}: no text; expected one text per line")
    return examples


def _jsonl(path: str) -> tuple[list[Example] | None, list[str]]:
    """Generic JSONL inputs and the first record's keys; None when it has no text_a."""
    examples = []
    for n, record in read_jsonl(path, encoding="utf-8-sig"):
        if not examples and "text_a" not in record:
            return None, sorted(record)
        examples.append(example_from_record(record, str(n), f"{path}:{n}"))
    return examples, []


def _csv(text: str, path: str, delimiter: str) -> tuple[list[Example] | None, list[str]]:
    """Generic CSV inputs (a header row naming text_a) and the header; None without text_a."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [(reader.line_num, row) for row in reader if row]
    except csv.Error as error:
        raise PredictInputError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None
    header = rows[0][1]
    if "text_a" not in header:
        return None, header
    examples = []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise PredictInputError(f"{path}:{line}: {len(row)} columns, the header has "
                                    f"{len(header)}")
        examples.append(example_from_record(dict(zip(header, row, strict=True)), str(line),
                                            f"{path}:{line}"))
    if not examples:
        raise PredictInputError(f"{path}: only a header, no rows")
    return examples, header


def _task_file(path: str, task: str) -> list[Example]:
    try:
        examples = get_task(task).reader(path, "test")
    except (ValueError, KeyError) as error:
        raise PredictInputError(
            f"{str(error.args[0]) if isinstance(error, KeyError) else error} (read as task "
            f"{task!r}'s own format; or give JSONL / CSV with a text_a column, and optionally "
            "text_b, choices, id)") from None
    if not examples:
        raise PredictInputError(f"{path}: no examples in task {task!r}'s format")
    return [dataclasses.replace(e, label=None) for e in examples]


def card_config(card: ModelCard, folder: Path, batch_size: int | None) -> Any:
    """The run's Config rebuilt from the card (its decoding strategy and, when given, the
    prediction batch size applied)."""
    from omegaconf import OmegaConf


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
    import jax.numpy as jnp

    from jaxpet.pipelines.member import place_params

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


def member_folders(run: Path) -> list[Path]:
    """The saved members of a run's final ensemble: `p*-s*/model`, or for iPET those of its
    last generation `g*/p*-s*/model`; sorted by member name, as jaxpet.pipelines.distill merges
    them."""
    def saved(folder: Path) -> list[Path]:
        return sorted((m / "model" for m in folder.glob("p*-s*") if is_saved_model(m / "model")),
                      key=lambda p: p.parent.name)

    members = saved(run)
    if members:
        return members
    generations = sorted((g for g in run.glob("g*") if g.name[1:].isdigit()),
                         key=lambda g: int(g.name[1:]))
    return saved(generations[-1]) if generations else []


def member_weights(folders: Sequence[Path], reduction: str) -> np.ndarray | None:
    """`wmean` weights: each member's labeled-set accuracy before training (its results.json,
    as jaxpet.pipelines.distill.merge_members takes them)."""
    if reduction != "wmean":
        return None
    weights = []
    for folder in folders:
        results = folder.parent / "results.json"
        try:
            weights.append(float(json.loads(results.read_text())["train_set_before_training"]))
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise SavedModelError(f"{results}: no train_set_before_training, the member's "
                                  f"weight in the run's wmean merge ({error})") from None
    return np.asarray(weights)


def load(path: str | Path, batch_size: int | None = None) -> Predictor:
    """The Predictor of a saved model folder (that model), or of a run folder (its final
    model: the distilled classifier when saved, else its saved members merged as the run
    merges them, by `pet.reduction` with the members' wmean weights, else the one classifier
    of a sequence_classifier run). `batch_size` replaces the run's eval.batch_size."""
    path = Path(path)
    if not is_saved_model(path) and is_saved_model(path / "model"):
        path = path / "model"  # a member folder (p0-s0) or distilled/, named without model/
    if is_saved_model(path):
        scorer = load_scorer(path, batch_size)
        return Predictor([scorer], list(scorer.card.labels), "model",
                         max_seq_length=scorer.card.max_seq_length)
    if is_saved_model(path / "distilled" / "model"):
        scorer = load_scorer(path / "distilled" / "model", batch_size)
        return Predictor([scorer], list(scorer.card.labels), "distilled",
                         max_seq_length=scorer.card.max_seq_length)
    folders = member_folders(path) if path.is_dir() else []
    classifiers = sorted(c for c in path.glob("sc-s*/model") if is_saved_model(c))
    if not folders and classifiers:  # method sequence_classifier: its classifier(s)
        if len(classifiers) > 1:
            raise SavedModelError(
                f"{path}: a sequence_classifier run with {len(classifiers)} classifiers, which "
                f"the run does not merge; name one: {', '.join(map(str, classifiers))}")
        scorer = load_scorer(classifiers[0], batch_size)
        return Predictor([scorer], list(scorer.card.labels), "model",
                         max_seq_length=scorer.card.max_seq_length)
    if not folders:
        what = "does not exist" if not path.exists() else (
            "is not a folder" if not path.is_dir() else "holds no jaxpet.json")
        raise SavedModelError(
            f"{path}: neither a saved model folder nor a run folder with saved models ({path} "
            f"{what}; a run saves p*-s*/model, g*/p*-s*/model and distilled/model)")
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
