"""One PET member (a pattern x repetition): its pattern's encoded sets, training, scores,
evaluation and saved results, whatever its Scorer (single-token cloze, multi-token candidates,
T5 label scoring). The ensemble (jaxpet.pipelines.ensemble), parallel members, distillation,
evaluation and prediction build on these functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxpet.config import Config, ConfigError, TrainingConfig
from jaxpet.data.batching import DEFAULT_BUCKETS, Batcher, trim_to_bucket
from jaxpet.engine.batch_keys import MODEL_INPUTS
from jaxpet.engine.optim import num_updates
from jaxpet.engine.sharding import param_shardings, place
from jaxpet.engine.training import predict
from jaxpet.models import LoadedModel
from jaxpet.pipelines import model_saving
from jaxpet.pipelines.setup import TaskData, check_memory, evaluate_scores, verbalizer_file
from jaxpet.prompts import get_pvp
from jaxpet.prompts.priming import encode_primed
from jaxpet.prompts.pvp import PVP
from jaxpet.runs import outputs
from jaxpet.runs.train_stage import settings_schedule, train_stage
from jaxpet.scoring.scorer import make_scorer


def train(config: Config, settings: TrainingConfig, loss_fn: Any, params: Any, groups: dict,
          mesh: Mesh, folder: Path, seed: int) -> tuple[Any, float]:
    """Fits `params` with `loss_fn` on the Batcher groups; returns (params, seconds)."""

    # the first group sets the pace (the labeled set, or the distillation's unlabeled set)
    arrays, batch_size, _ = next(iter(groups.values()))
    updates = num_updates(settings, len(arrays["input_ids"]), batch_size)
    return train_stage(config, loss_fn, settings_schedule(settings, updates), params,
                       Batcher(groups=groups, mesh=mesh), mesh, folder, seed, stage=folder.name)


@dataclasses.dataclass
class PatternData:
    """One pattern's encoded sets, its compiled label-score function and its Scorer.

    `train` and `unlabeled` are in the scorer's training layout; `eval`, and `train_eval` /
    `unlabeled_eval`, in its scoring layout. A scorer that scores its training rows as they
    are (scores_training_rows) has no `train_eval` (the labeled-set accuracy reads the
    training arrays, iPET's pseudo-labeled rows included) and scores `unlabeled` itself.
    `verbalizer_ids_LxW` (masked LM) and `label_targets` (T5: ids, mask [L, W, T]) are the
    scorer's constants under their own names.
    """

    pattern_id: int
    verbalizer_ids_LxW: np.ndarray | None
    logits_fn: Any
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    unlabeled: dict[str, np.ndarray] | None
    label_targets: tuple[np.ndarray, np.ndarray] | None = None
    scorer: Any = None  # jaxpet.scoring.scorer.Scorer
    train_eval: dict[str, np.ndarray] | None = None
    unlabeled_eval: dict[str, np.ndarray] | None = None

    @property
    def constants(self) -> dict[str, np.ndarray]:
        """The scorer's constants (a PatternData built by hand: the ones it was given)."""
        if self.scorer is not None:
            return self.scorer.constants
        named = {"verbalizer_ids": self.verbalizer_ids_LxW}
        if self.label_targets is not None:
            named = dict(zip(("label_target_ids", "label_target_mask"), self.label_targets,
                             strict=True))
        return {k: v for k, v in named.items() if v is not None}

    @property
    def constant_pad(self) -> dict[str, int]:
        """Pad values of the constants that parallel members may pad to one shape."""
        if self.scorer is not None:
            return self.scorer.constant_pad
        return {k: 0 for k in self.constants if k != "verbalizer_ids"}


def encoded_sets(scorer: Any, data: TaskData) -> dict[str, Any]:
    """PatternData's arrays of every set, in the scorer's training and scoring layouts."""
    train, unlabeled = scorer.encode_training(data.train, data.unlabeled, data.eval[:1])
    sets = dict(train=train, eval=scorer.encode(data.eval, "eval"), unlabeled=unlabeled)
    if scorer.scores_training_rows:
        return {**sets, "unlabeled_eval": unlabeled}
    return {**sets, "train_eval": scorer.encode(data.train, "eval"),
            "unlabeled_eval": scorer.encode(data.unlabeled, "eval") if data.unlabeled else None}


def prepare_pattern(config: Config, lm: LoadedModel, data: TaskData,
                    pattern_id: int) -> PatternData:
    """Encodes the task's sets for one pattern with its Scorer (jaxpet.scoring.make_scorer)."""

    scorer = make_scorer(get_pvp(data.name, pattern_id, verbalizer_file(config)), lm, config)
    if config.eval.priming and not scorer.supports_priming:
        raise ConfigError(f"eval.priming needs a masked LM and single-token label words; "
                          f"pattern {pattern_id} of task {data.name!r} has multi-token answers "
                          "or a T5 backbone")
    sets = encoded_sets(scorer, data)
    if config.eval.priming:
        sets["eval"] = primed_eval_set(scorer.pvp, lm.tokenizer, data, config.pet.max_seq_length)
    constants = scorer.constants
    label_targets = None
    if "label_target_ids" in constants:
        label_targets = (constants["label_target_ids"], constants["label_target_mask"])
    return PatternData(pattern_id=pattern_id,
                       verbalizer_ids_LxW=constants.get("verbalizer_ids"),
                       logits_fn=scorer.scores_fn(), label_targets=label_targets,
                       scorer=scorer, **sets)


def primed_eval_set(pvp: PVP, tokenizer: Any, data: TaskData, seq: int) -> dict[str, np.ndarray]:
    """The eval set encoded after all labeled examples as demonstrations (eval.priming), as
    the original PET primes its evaluation; training and the unlabeled set are not primed."""

    if not data.train:
        raise ConfigError("eval.priming needs labeled examples as demonstrations "
                          "(task.train_examples is 0)")
    keys = (*MODEL_INPUTS, "mask_positions", "labels")
    primed = encode_primed(pvp, data.eval, tokenizer, seq, demonstrations=data.train)
    return trim_to_bucket({k: np.asarray(v) for k, v in primed.items() if k in keys},
                          DEFAULT_BUCKETS)


def check_decoder_memory(config: Config, lm: LoadedModel, patterns: Sequence[PatternData]) -> None:
    """check_memory of a backbone whose decoder scores the label targets (T5): its decoder
    length is the most positions any pattern's scorer needs (load_model could not know it)."""
    positions = [p.scorer.decoder_positions for p in patterns
                 if p.scorer.decoder_positions is not None]
    if positions:
        check_memory(config, lm, "mlm", target_len=max(positions))


def share_logits_fns(patterns: Sequence[PatternData]) -> list[PatternData]:
    """Patterns whose label scoring is the same (one verbalizer, e.g. all AG News patterns)
    get one logits_fn object, so that their predictions share compiled programs."""
    first: dict[tuple, Any] = {}
    shared = []
    for pattern in patterns:
        key = pattern.scorer.share_key()
        if key is None:
            shared.append(pattern)
            continue
        fn = first.setdefault(key, pattern.logits_fn)
        shared.append(dataclasses.replace(pattern, logits_fn=fn))
    return shared


def predict_logits(config: Config, fn: Any, params: Any, arrays: Mapping[str, np.ndarray],
                   mesh: Mesh) -> np.ndarray:
    inputs = trim_to_bucket({k: v for k, v in arrays.items() if k != "labels"}, DEFAULT_BUCKETS)
    return np.asarray(predict(fn, params, inputs, config.eval.batch_size, mesh), np.float32)


def pattern_scores(config: Config, pattern: PatternData, params: Any,
                   arrays: Mapping[str, np.ndarray], examples: Sequence[Any] | None,
                   mesh: Mesh) -> tuple[np.ndarray, list[str] | None]:
    """([N, C] label scores, generated texts or None) of `arrays` (rows of `examples`) with
    the pattern's compiled scores function, finalized by its scorer (WSC: string match)."""

    inputs = pattern.scorer.scoring_inputs(arrays)
    raw = predict(pattern.logits_fn, params, inputs, config.eval.batch_size, mesh)
    return pattern.scorer.finalize(np.asarray(raw), examples)


def zero_shot(config: Config, patterns: Sequence[PatternData], params: Any, data: TaskData,
              mesh: Mesh) -> dict[str, dict[str, float]]:
    """Eval-set metrics of every pattern with untrained `params`."""
    return {f"p{p.pattern_id}": evaluate_scores(
        data.name, data.labels, data.eval,
        pattern_scores(config, p, params, p.eval, data.eval, mesh)[0]) for p in patterns}


def training_groups(config: Config, pattern: PatternData, train_set: Mapping[str, np.ndarray],
                    seed: int) -> dict[str, tuple]:
    """Batcher groups of a PET model: labeled rows, and pattern-applied unlabeled rows for the
    auxiliary MLM loss when `pet.lm_training` is on."""
    settings = config.pet
    groups = {"": (train_set, settings.train_batch_size, seed)}
    if settings.lm_training:
        if pattern.unlabeled is None:
            raise ValueError("pet.lm_training needs unlabeled examples (task.unlabeled_examples)")
        unlabeled = {k: pattern.unlabeled[k] for k in MODEL_INPUTS}
        groups["unlabeled_"] = (unlabeled, settings.unlabeled_batch_size, seed + 1)
    return groups


def labeled_set_accuracy(config: Config, pattern: PatternData, params: Any,
                         train_set: Mapping[str, np.ndarray], data: TaskData,
                         mesh: Mesh) -> float:
    """Accuracy on the labeled set (PET's train_set_before/after_training): the training
    arrays themselves, or the labeled examples in the scorer's scoring layout."""
    arrays, examples = train_set, None
    if pattern.train_eval is not None:
        arrays, examples = pattern.train_eval, data.train
    gold_N = pattern.scorer.gold(arrays, examples)
    if not len(gold_N):
        return 0.0
    return accuracy(pattern_scores(config, pattern, params, arrays, examples, mesh)[0], gold_N)


def train_member(config: Config, lm: LoadedModel, params: Any, pattern: PatternData, data: TaskData,
                 mesh: Mesh, folder: Path, repetition: int,
                 train_arrays: Mapping[str, np.ndarray] | None = None,
                 pretrained: tuple[Any, float] | None = None,
                 final: bool = True) -> dict[str, Any]:
    """Trains, evaluates and saves one PET model (pattern x repetition) in `folder`, whatever
    its scorer (single-token cloze, multi-token candidates, T5).

    `pretrained` = (params, seconds) of a member already trained elsewhere: only evaluated.
    `train_arrays` replaces the pattern's labeled set (iPET: T plus pseudo-labeled examples).
    With `pet.max_steps` 0 or an empty training set the model is evaluated untrained.
    The model goes to `folder/model` when `output.save_models` keeps it (`final`: whether it
    is one of the run's final models, jaxpet.pipelines.model_saving).
    """
    if (folder / "results.json").exists():
        model_saving.check_reused(config, folder, final)
        print(f"{folder.name}: results.json exists, reusing it")
        return outputs.read_json(folder / "results.json")
    settings, seed, scorer = config.pet, config.seed + repetition, pattern.scorer
    if settings.lm_training and not scorer.supports_mlm:
        raise ValueError(f"config key 'pet.lm_training' is not supported for "
                         f"{scorer.describe()} of task {data.name!r}; set it to false")
    train_set = dict(pattern.train if train_arrays is None else train_arrays)
    num_train = len(train_set["labels"])
    untrained = settings.max_steps == 0 or num_train == 0
    print(f"{folder.name}: {'evaluating' if untrained else 'training'} {scorer.describe()}, "
          f"seed {seed}, {num_train} training examples")
    before = labeled_set_accuracy(config, pattern, params, train_set, data, mesh)
    trained, seconds = params, 0.0
    # trained together with other members (jaxpet.pipelines.parallel_members)
    if pretrained is not None:
        trained, seconds = pretrained
    elif not untrained:
        groups = training_groups(config, pattern, train_set, seed)
        trained, seconds = train(config, settings, scorer.loss_fn(), params, groups, mesh,
                                 folder, seed)
    metrics = evaluate_member(config, pattern, trained, data, mesh, folder)
    after = labeled_set_accuracy(config, pattern, trained, train_set, data, mesh)
    if pattern.unlabeled_eval is not None:
        outputs.write_npy(folder / "unlabeled_logits.npy", pattern_scores(
            config, pattern, trained, pattern.unlabeled_eval, data.unlabeled, mesh)[0])
    results = {
        "pattern_id": pattern.pattern_id, "repetition": repetition, "seed": seed,
        **scorer.result_fields(),
        "train_set_before_training": before, "train_set_after_training": after,
        "eval_set": config.task.eval_set, "metrics": metrics,
        "train_time_s": seconds, "num_train": num_train, "num_eval": len(data.eval),
        "num_unlabeled": len(data.unlabeled)}
    # the model before results.json: a finished folder always holds the model it should
    model_saving.save_member(config, lm, trained, data, pattern, folder, final)
    outputs.write_json(folder / "results.json", results)
    return results


def evaluate_member(config: Config, pattern: PatternData, params: Any, data: TaskData,
                    mesh: Mesh, folder: Path) -> dict[str, float]:
    """Scores the eval set with one member's `params`, writes eval_logits.npy and
    predictions.jsonl to `folder`; returns the eval metrics. Training and method evaluate
    (jaxpet.pipelines.evaluate) both score a member through it."""
    scores_NxC, texts = pattern_scores(config, pattern, params, pattern.eval, data.eval, mesh)
    outputs.write_npy(folder / "eval_logits.npy", scores_NxC)
    outputs.write_jsonl(folder / "predictions.jsonl", pattern.scorer.prediction_records(
        data.eval, data.labels, scores_NxC, texts))
    return evaluate_scores(data.name, data.labels, data.eval, scores_NxC)


def accuracy(logits_NxL: np.ndarray, labels_N: np.ndarray) -> float:
    """Share of argmax predictions equal to the labels; 0 for an empty set."""
    return float(np.mean(logits_NxL.argmax(-1) == labels_N)) if len(labels_N) else 0.0


def aggregate(members: Mapping[str, Mapping[str, Any]], key_of: Any) -> dict[str, Any]:
    """Mean and std of every metric over the members grouped by key_of(member results)."""
    grouped: dict[str, list[Mapping[str, float]]] = {}
    for result in members.values():
        grouped.setdefault(key_of(result), []).append(result["metrics"])
    return {key: {name: {"mean": float(np.mean([m[name] for m in runs])),
                         "std": float(np.std([m[name] for m in runs])), "runs": len(runs)}
                  for name in runs[0]}
            for key, runs in grouped.items()}


def place_params(params: Any, mesh: Mesh) -> Any:
    """`params` on the mesh as the Trainer places them: predictions before and after training
    then share one compiled program, and a large model is not held whole on one device."""

    return place(params, param_shardings(params, mesh))


