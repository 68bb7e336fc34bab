"""PET members for multi-token answers (COPA, WSC, ReCoRD, multi-token verbalizers).

jaxpet.pipelines.pet.run dispatches here for every pattern whose answers span several tokens.
Training
runs one forward pass per batch on inputs with the most masks (jaxpet.scoring.candidates_step);
evaluation scores every candidate by K-step multi-mask decoding (`pet.decoding_strategy`)
into label scores [N, C] (sum of log p per candidate; -inf for padding candidates), or, for
WSC, generates the masks and string-matches the target (one-hot scores over [False, True]).
These scores are written as eval_logits.npy / unlabeled_logits.npy like single-token logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxpet.data.batching import DEFAULT_BUCKETS, bucket_length
from jaxpet.data.example import Example
from jaxpet.metrics import record_accuracy, task_metrics
from jaxpet.runs import outputs

SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids")
TRAIN_KEYS = (*SEQUENCE_KEYS, "mask_positions", "target_ids", "candidate_mask", "labels")


def needs_multi_token(pvp: Any, tokenizer: Any) -> bool:
    """True for multi-token PVPs and for verbalizers with a word of several tokens."""
    if pvp.multi_token:
        return True
    words = [w for label in pvp.labels for w in pvp.verbalize(label)]
    return any(len(ids) != 1 for ids in pvp.word_ids(words, tokenizer))


@dataclasses.dataclass
class MultiTokenPattern:
    """One multi-token pattern's encoded sets and compiled scoring function."""

    pattern_id: int
    pvp: Any
    loss: str  # hinge | copa | record | wsc
    generate: bool  # WSC: evaluation generates the answer instead of scoring candidates
    scores_fn: Any  # fn(params, batch) -> [B, C] scores, or [B, K] generated tokens
    train: dict[str, np.ndarray]  # training encoding (one input with the most masks)
    train_eval: dict[str, np.ndarray]  # the labeled set, encoded for evaluation
    eval: dict[str, np.ndarray]
    unlabeled: dict[str, np.ndarray] | None  # training encoding, aligned with `train`
    unlabeled_eval: dict[str, np.ndarray] | None  # the unlabeled set, encoded for evaluation
    tokenizer: Any = None
    multi_token: bool = True


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


def prepare_multitoken_pattern(config: Any, lm: Any, data: Any, pattern_id: int,
                               pvp: Any = None) -> MultiTokenPattern:
    """Encodes the task's sets for one multi-token pattern and builds its scoring function."""
    from jaxpet.engine.sharding import batch_divisor
    from jaxpet.prompts import get_pvp
    from jaxpet.prompts.builtin import WscPVP
    from jaxpet.prompts.multitoken import (
        as_multi_token,
        encode_generation,
        encode_multi_token,
        encode_multi_token_decoding,
    )
    from jaxpet.scoring.candidates_step import (
        make_candidate_scores_fn,
        make_generate_fn,
        resolve_loss_variant,
    )

    pvp = as_multi_token(pvp if pvp is not None else get_pvp(data.name, pattern_id))
    settings, tok, seq = config.pet, lm.tokenizer, config.pet.max_seq_length
    loss = resolve_loss_variant(data.name, settings.multitoken_loss)
    generate = isinstance(pvp, WscPVP)
    if generate != (loss == "wsc"):
        raise ValueError(
            f"config key 'pet.multitoken_loss' = {settings.multitoken_loss!r} gives loss "
            f"{loss!r} for task {data.name!r}: the 'wsc' loss goes with WSC's generated answers "
            "and only with them; use 'auto'")
    if not data.train:
        raise ValueError(f"task {data.name!r} has no labeled training examples")

    def keep(arrays: dict) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in arrays.items() if k in TRAIN_KEYS}

    if generate:
        encode_train = encode_generation

        def encode_eval(examples):
            return trim_sequences(keep(encode_generation(pvp, examples, tok, seq)))
        scores_fn = make_generate_fn(lm.module.apply, settings.decoding_strategy)
    else:
        encode_train = encode_multi_token

        def encode_eval(examples):
            return trim_sequences(keep(encode_multi_token_decoding(pvp, examples, tok, seq)))
        scores_fn = make_candidate_scores_fn(lm.module.apply, settings.decoding_strategy,
                                             row_blocks=batch_divisor(build_mesh(config)))
    # labeled and unlabeled rows in one training encoding (same masks K and candidates C), so
    # that iPET can append pseudo-labeled unlabeled rows to the labeled ones
    joint = keep(encode_train(pvp, [*data.train, *data.unlabeled], tok, seq))
    num_train = len(data.train)
    return MultiTokenPattern(
        pattern_id=pattern_id, pvp=pvp, loss=loss, generate=generate, scores_fn=scores_fn,
        train={k: v[:num_train] for k, v in joint.items()},
        train_eval=encode_eval(data.train), eval=encode_eval(data.eval),
        unlabeled={k: v[num_train:] for k, v in joint.items()} if data.unlabeled else None,
        unlabeled_eval=encode_eval(data.unlabeled) if data.unlabeled else None, tokenizer=tok)


def build_mesh(config: Any) -> Any:
    from jaxpet.pipelines.setup import build_mesh as run_mesh

    return run_mesh(config)


def label_scores(config: Any, pattern: MultiTokenPattern, params: Any,
                 arrays: Mapping[str, np.ndarray], examples: Sequence[Example],
                 mesh: Any) -> tuple[np.ndarray, list[str] | None]:
    """[N, C] candidate scores (WSC: one-hot over [False, True] from the string match) and,
    for WSC, the generated texts."""
    from jaxpet.decoding.wsc_match import wsc_generated_text, wsc_string_match
    from jaxpet.engine.training import predict

    inputs = {k: v for k, v in arrays.items() if k != "labels"}
    if not pattern.generate:
        scores = predict(pattern.scores_fn, params, inputs, config.eval.batch_size, mesh)
        return np.asarray(scores, np.float32), None
    inputs = {k: v for k, v in inputs.items() if k != "target_ids"}
    tokens_NxK = predict(pattern.scores_fn, params, inputs, config.eval.batch_size, mesh)
    texts = [wsc_generated_text(pattern.tokenizer, row) for row in np.asarray(tokens_NxK)]
    matched = np.array([wsc_string_match(text, pattern.pvp.candidates(e)[0])
                        for text, e in zip(texts, examples, strict=True)], dtype=int)
    return np.eye(2, dtype=np.float32)[matched], texts


def evaluate_scores(task_name: str, labels: Sequence[str], examples: Sequence[Example],
                    scores_NxC: np.ndarray) -> dict[str, float]:
    """The task's metrics of multi-token scores [N, C] (single members or merged ensembles):
    ReCoRD accuracy (the top candidate, meta["candidates"], is one of meta["answers"]);
    otherwise candidate c is label c, so the argmax is compared with the examples' labels."""
    from jaxpet.pipelines.setup import evaluate_logits

    if task_name.lower() == "record":
        is_gold_NxC = np.zeros(scores_NxC.shape, dtype=bool)
        for i, e in enumerate(examples):
            answers = set(e.meta.get("answers") or [])
            for c, candidate in enumerate(e.meta["candidates"]):
                is_gold_NxC[i, c] = candidate in answers
        return {name: record_accuracy(scores_NxC, is_gold_NxC)
                for name in task_metrics(task_name)}
    return evaluate_logits(task_name, labels, examples, scores_NxC)


def predicted_labels(pattern: MultiTokenPattern, labels: Sequence[str],
                     examples: Sequence[Example], scores_NxC: np.ndarray) -> list[str]:
    """The predicted label string: WSC "True"/"False", else the top candidate's label or,
    when candidates are not labels (ReCoRD), the candidate text itself."""
    best_N = np.argmax(scores_NxC, axis=-1)
    if pattern.generate:
        return [labels[i] for i in best_N]
    from jaxpet.prompts.builtin import RecordPVP

    candidates_are_labels = not isinstance(pattern.pvp, RecordPVP)
    return [labels[c] if candidates_are_labels and c < len(labels)
            else pattern.pvp.candidates(e)[c] for e, c in zip(examples, best_N, strict=True)]


def write_predictions(folder: Path, pattern: MultiTokenPattern, labels: Sequence[str],
                      examples: Sequence[Example], scores_NxC: np.ndarray,
                      texts: list[str] | None) -> None:
    outputs.write_npy(folder / "eval_logits.npy", scores_NxC)
    predicted = predicted_labels(pattern, labels, examples, scores_NxC)
    records = []
    for i, e in enumerate(examples):
        record = {"guid": e.guid, "label": predicted[i], "gold": e.label,
                  "logits": [float(x) if np.isfinite(x) else None for x in scores_NxC[i]]}
        if texts is not None:
            record["generated"] = texts[i]
        if "answers" in e.meta:
            record["answers"] = list(e.meta["answers"])
        records.append(record)
    outputs.write_jsonl(folder / "predictions.jsonl", records)


def train_set_accuracy(config: Any, pattern: MultiTokenPattern, params: Any, data: Any,
                       mesh: Any) -> float:
    """Accuracy on the labeled set (PET's train_set_before/after_training)."""
    scores, _ = label_scores(config, pattern, params, pattern.train_eval, data.train, mesh)
    if pattern.generate:
        gold_N = pattern.train_eval["labels"]
    else:
        gold_N = np.array([pattern.pvp.correct_candidate(e) for e in data.train])
    return float(np.mean(np.argmax(scores, -1) == gold_N))


def zero_shot_metrics(config: Any, pattern: MultiTokenPattern, params: Any, data: Any,
                      mesh: Any) -> dict[str, float]:
    """Eval-set metrics of one pattern with the given (e.g. untrained) parameters."""
    scores, _ = label_scores(config, pattern, params, pattern.eval, data.eval, mesh)
    return evaluate_scores(data.name, data.labels, data.eval, scores)


def train_multitoken_model(config: Any, lm: Any, params: Any, pattern: MultiTokenPattern,
                           data: Any, mesh: Any, folder: Path, repetition: int,
                           train_arrays: Mapping[str, np.ndarray] | None = None,
                           final: bool = True) -> dict[str, Any]:
    """Trains, evaluates and saves one multi-token PET model (pattern x repetition).

    `train_arrays` replaces the pattern's training encoding; with `pet.max_steps` 0 or no
    training rows the model is evaluated untrained. The model goes to `folder/model` when
    `output.save_models` keeps it (`final`: one of the run's final models).
    """
    from jaxpet.pipelines import model_saving
    from jaxpet.pipelines.pet import train
    from jaxpet.scoring.candidates_step import make_multitoken_loss

    if (folder / "results.json").exists():
        model_saving.check_reused(config, folder, final)
        print(f"{folder.name}: results.json exists, reusing it")
        return outputs.read_json(folder / "results.json")
    settings, seed = config.pet, config.seed + repetition
    if settings.lm_training:
        raise ValueError("config key 'pet.lm_training' is not supported for multi-token "
                         f"answers (task {data.name!r}, pattern {pattern.pattern_id}); set it "
                         "to false")
    train_set = dict(pattern.train if train_arrays is None else train_arrays)
    untrained = settings.max_steps == 0 or len(train_set["labels"]) == 0
    print(f"{folder.name}: {'evaluating' if untrained else 'training'} multi-token pattern "
          f"{pattern.pattern_id} ({pattern.loss} loss), seed {seed}")
    before = train_set_accuracy(config, pattern, params, data, mesh)
    trained, seconds = params, 0.0
    if not untrained:
        loss_fn = make_multitoken_loss(lm.module.apply, pattern.loss,
                                       pad_token_id=lm.tokenizer.pad_token_id or 0)
        groups = {"": (train_set, settings.train_batch_size, seed)}
        trained, seconds = train(config, settings, loss_fn, params, groups, mesh, folder, seed)
    metrics = evaluate_multitoken_member(config, pattern, trained, data, mesh, folder)
    if pattern.unlabeled_eval is not None:
        unlabeled_scores, _ = label_scores(config, pattern, trained, pattern.unlabeled_eval,
                                           data.unlabeled, mesh)
        outputs.write_npy(folder / "unlabeled_logits.npy", unlabeled_scores)
    results = {
        "pattern_id": pattern.pattern_id, "repetition": repetition, "seed": seed,
        "loss": pattern.loss, "decoding_strategy": settings.decoding_strategy,
        "train_set_before_training": before,
        "train_set_after_training": train_set_accuracy(config, pattern, trained, data, mesh),
        "eval_set": config.task.eval_set, "metrics": metrics,
        "train_time_s": seconds, "num_train": len(train_set["labels"]),
        "num_eval": len(data.eval), "num_unlabeled": len(data.unlabeled)}
    # the model before results.json: a finished folder always holds the model it should
    model_saving.save_member(config, lm, trained, data, pattern, folder, final)
    outputs.write_json(folder / "results.json", results)
    return results


def evaluate_multitoken_member(config: Any, pattern: MultiTokenPattern, params: Any, data: Any,
                               mesh: Any, folder: Path) -> dict[str, float]:
    """Decodes the eval set with one member's `params`, writes eval_logits.npy and
    predictions.jsonl to `folder`; returns the eval metrics."""
    eval_scores, texts = label_scores(config, pattern, params, pattern.eval, data.eval, mesh)
    write_predictions(folder, pattern, data.labels, data.eval, eval_scores, texts)
    return evaluate_scores(data.name, data.labels, data.eval, eval_scores)
