"""Sequence classifiers: the supervised baseline, the ensemble merge and the distilled final model.

`merge_members` averages the saved member scores (jaxpet.pipelines.merge) into `OUT/ensemble/`;
`distill` trains a classifier on the unlabeled set with the merged scores as soft labels
(KL * T^2, as the original PET does) in `OUT/distilled/`, evaluates it and exports it with
jaxpet.pipelines.model_saving to `OUT/distilled/model` (Hugging Face layout with the label names
and a
jaxpet.json card; baselines to `OUT/sc-s{S}/model`) as `output.save_models` asks. Finished
folders are reused.

Besides eval_logits.npy, `OUT/distilled/` holds the classifier's scores on the unlabeled set
(the rows it was distilled on, in task order): `unlabeled_logits_before_training.npy` at its
start parameters and `unlabeled_logits.npy` after distillation, [N, L] float32 each, so that
a run shows how far the student moved toward softmax(teacher / T).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxpet.config import Config, ConfigError
from jaxpet.engine.batch_keys import MODEL_INPUTS
from jaxpet.engine.sharding import check_batch_sizes
from jaxpet.models import LoadedModel
from jaxpet.pipelines import model_saving
from jaxpet.pipelines.member import aggregate, predict_logits, train
from jaxpet.pipelines.merge import merge_logits
from jaxpet.pipelines.mlm_pretrain import encode_texts
from jaxpet.pipelines.setup import (
    TaskData,
    evaluate_logits,
    evaluate_scores,
    is_t5_checkpoint,
    label_indices,
    load_model,
    write_predictions,
)
from jaxpet.runs import outputs
from jaxpet.scoring.cloze_step import make_classifier_logits_fn, make_classifier_loss


def encode_classifier_inputs(lm: LoadedModel, examples: Sequence[Any], max_seq_length: int) -> dict:
    """Plain text (text_a [, text_b]) encoded for a sequence classifier."""

    return {k: v for k, v in encode_texts(examples, lm.tokenizer, max_seq_length)[0].items()
            if k in MODEL_INPUTS}


def classifier_model_name(config: Config) -> str:
    """The sequence classifier's checkpoint: classifier.model, else the PET model."""
    return config.classifier.model or config.model.name


def needs_classifier(config: Config) -> bool:
    """Whether the run trains a sequence classifier (baseline or distilled model)."""
    if config.method == "sequence_classifier":
        return True
    return config.method in ("pet", "ipet") and (
        not config.no_distillation or config.classifier.baseline)


def check_classifier_model(config: Config) -> None:
    """Fails (before any training) when the sequence classifier would be a T5 checkpoint."""

    name = classifier_model_name(config)
    source = ("classifier.model" if config.classifier.model
              else "model.name (classifier.model is empty)")
    try:
        is_t5 = is_t5_checkpoint(name)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{source}: {err}") from None
    if not is_t5:
        return
    raise ConfigError(
        f"the sequence classifier (distilled model / baseline) would be {name!r} from {source}, "
        "a T5 checkpoint; T5 is no sequence classifier here. Set classifier.model to an encoder "
        "checkpoint (BERT, RoBERTa, XLM-R, ALBERT; e.g. classifier.model=roberta-base), or "
        "no_distillation=true to report the PET ensemble")


def classifier_model(config: Config, num_labels: int, encoder_params: Any = None) -> tuple:
    """(LoadedModel with a classifier head, initial params: warmed-up encoder when given).

    The warmed-up encoder (mlm_pretrain) belongs to model.name; a classifier.model of another
    checkpoint starts from its own weights."""
    name = classifier_model_name(config)
    if encoder_params is not None and name != config.model.name:
        print(f"classifier.model {name!r} is not model.name: the classifier starts from its own "
              "weights, not from the MLM warm-up's encoder")
        encoder_params = None
    lm = load_model(config, "classifier", num_labels=num_labels, name=name)
    params = lm.params if encoder_params is None else {**lm.params, "encoder": encoder_params}
    return lm, params


def fit_classifier(config: Config, loss_fn: Any, params: Any, groups: dict, mesh: Mesh,
                   folder: Path, seed: int) -> tuple[Any, float]:
    """jaxpet.pipelines.member.train with the classifier settings; `classifier.max_steps` 0
    trains nothing (no optimizer, no checkpoints) and returns `params` as they are, to be
    evaluated."""

    if config.classifier.max_steps == 0:
        print(f"{folder.name}: classifier.max_steps is 0, evaluating the classifier untrained")
        return params, 0.0
    return train(config, config.classifier, loss_fn, params, groups, mesh, folder, seed)


def run_classifier(config: Config, data: TaskData, mesh: Mesh, out: Path,
                   encoder_params: Any = None) -> dict[str, Any]:
    """Supervised sequence classifier(s) on the labeled set; one folder `sc-s{S}` each."""
    settings = config.classifier
    check_batch_sizes(mesh, {"classifier.train_batch_size": settings.train_batch_size,
                             "eval.batch_size": config.eval.batch_size})
    lm, params = classifier_model(config, len(data.labels), encoder_params)
    train_arrays = {**encode_classifier_inputs(lm, data.train, settings.max_seq_length),
                    "labels": label_indices(data.train, data.labels)}
    loss_fn = make_classifier_loss(lm.module.apply)
    # the supervised classifiers are the final models of method sequence_classifier only
    final = config.method == "sequence_classifier"
    members = {}
    for repetition in range(settings.repetitions):
        folder, seed = out / f"sc-s{repetition}", config.seed + repetition
        if (folder / "results.json").exists():
            model_saving.check_reused(config, folder, final)
            print(f"{folder.name}: results.json exists, reusing it")
            members[folder.name] = outputs.read_json(folder / "results.json")
            continue
        print(f"{folder.name}: training the sequence classifier, seed {seed}")
        trained, seconds = fit_classifier(
            config, loss_fn, params, {"": (train_arrays, settings.train_batch_size, seed)},
            mesh, folder, seed)
        metrics = evaluate_classifier(config, lm, trained, data, mesh, folder,
                                      settings.max_seq_length)
        members[folder.name] = {
            "repetition": repetition, "seed": seed, "eval_set": config.task.eval_set,
            "metrics": metrics, "train_time_s": seconds, "num_train": len(data.train),
            "num_eval": len(data.eval)}
        model_saving.save_classifier(config, lm, trained, data.labels, folder, final)
        outputs.write_json(folder / "results.json", members[folder.name])
    return {"members": members, **aggregate(members, lambda r: "summary")}


def evaluate_classifier(config: Config, lm: LoadedModel, params: Any, data: TaskData, mesh: Mesh,
                        folder: Path, max_seq_length: int) -> dict[str, float]:
    """Scores the eval set with a sequence classifier's `params`, writes eval_logits.npy and
    predictions.jsonl to `folder`; returns the eval metrics. Training and method evaluate
    (jaxpet.pipelines.evaluate) both score a classifier through it."""
    eval_arrays = encode_classifier_inputs(lm, data.eval, max_seq_length)
    logits_fn = make_classifier_logits_fn(lm.module.apply)
    eval_logits = predict_logits(config, logits_fn, params, eval_arrays, mesh)
    write_predictions(folder, "eval", data.eval, data.labels, eval_logits)
    return evaluate_logits(data.name, data.labels, data.eval, eval_logits)


def merge_members(config: Config, data: TaskData, member_dir: Path, members: Mapping[str, Any],
                  out: Path) -> dict[str, Any]:
    """Merges the members' saved eval and unlabeled scores (config `pet.reduction`) into `out`.

    Weights for `wmean` are each member's `train_set_before_training`. Writes
    `eval_logits.npy`, `unlabeled_logits.npy` (when the members have them), predictions.jsonl
    and results.json; returns the results (eval metrics of the merged scores).
    """

    names = sorted(members)
    weights_M = np.asarray([members[n]["train_set_before_training"] for n in names])
    reduction = config.pet.reduction

    def merged(file: str) -> np.ndarray:
        logits_MxNxL = np.stack([np.load(member_dir / n / file) for n in names])
        return merge_logits(logits_MxNxL, weights_M, reduction).astype(np.float32)

    eval_NxL = merged("eval_logits.npy")
    if eval_NxL.shape[1] == len(data.labels):
        write_predictions(out, "eval", data.eval, data.labels, eval_NxL)
    else:  # candidates that are not labels (ReCoRD entities): name the top candidate
        outputs.write_npy(out / "eval_logits.npy", eval_NxL)
        outputs.write_jsonl(out / "predictions.jsonl", [
            {"guid": e.guid, "candidate": e.meta["candidates"][int(np.argmax(row))],
             "gold": e.meta.get("answers"), "logits": row}
            for e, row in zip(data.eval, eval_NxL, strict=True)])
    has_unlabeled = all((member_dir / n / "unlabeled_logits.npy").exists() for n in names)
    if has_unlabeled:
        outputs.write_npy(out / "unlabeled_logits.npy", merged("unlabeled_logits.npy"))
    results = {"members": names, "reduction": reduction, "weights": weights_M.tolist(),
               "eval_set": config.task.eval_set,
               "metrics": evaluate_scores(data.name, data.labels, data.eval, eval_NxL)}
    outputs.write_json(out / "results.json", results)
    return results


def distill(config: Config, data: TaskData, mesh: Mesh, out: Path, teacher_NxL: np.ndarray,
            encoder_params: Any = None) -> dict[str, Any]:
    """Trains the final classifier on the unlabeled set against `teacher_NxL` soft labels."""
    folder = out / "distilled"
    if (folder / "results.json").exists():
        model_saving.check_reused(config, folder, final=True)
        print(f"{folder.name}: results.json exists, reusing it")
        return outputs.read_json(folder / "results.json")
    if not data.unlabeled:
        raise ValueError("distillation needs unlabeled examples (task.unlabeled_examples); "
                         "set no_distillation=true to report the ensemble instead")
    settings = config.classifier
    check_batch_sizes(mesh, {"classifier.unlabeled_batch_size": settings.unlabeled_batch_size,
                             "eval.batch_size": config.eval.batch_size})
    lm, params = classifier_model(config, len(data.labels), encoder_params)
    arrays = {**encode_classifier_inputs(lm, data.unlabeled, settings.max_seq_length),
              "logits": np.asarray(teacher_NxL, np.float32)}
    loss_fn = make_classifier_loss(lm.module.apply, soft_labels=True,
                                   temperature=settings.temperature)
    logits_fn = make_classifier_logits_fn(lm.module.apply)
    unlabeled_inputs = {k: v for k, v in arrays.items() if k in MODEL_INPUTS}
    outputs.write_npy(folder / "unlabeled_logits_before_training.npy",
                      predict_logits(config, logits_fn, params, unlabeled_inputs, mesh))
    seed = config.seed
    print(f"{folder.name}: distilling the ensemble into a sequence classifier on "
          f"{len(data.unlabeled)} unlabeled examples (T = {settings.temperature})")
    trained, seconds = fit_classifier(
        config, loss_fn, params, {"": (arrays, settings.unlabeled_batch_size, seed)}, mesh,
        folder, seed)
    trained = jax.device_get(trained)
    metrics = evaluate_classifier(config, lm, trained, data, mesh, folder,
                                  settings.max_seq_length)
    outputs.write_npy(folder / "unlabeled_logits.npy",
                      predict_logits(config, logits_fn, trained, unlabeled_inputs, mesh))
    # the model before results.json: a finished folder always holds the model it should
    model_saving.save_classifier(config, lm, trained, data.labels, folder, final=True)
    results = {"seed": seed, "temperature": settings.temperature, "eval_set": config.task.eval_set,
               "metrics": metrics, "train_time_s": seconds, "num_unlabeled": len(data.unlabeled)}
    if model_saving.wants_model(config, final=True):
        results["model_dir"] = str(folder / "model")
    outputs.write_json(folder / "results.json", results)
    return results


def finish_ensemble(config: Config, data: TaskData, mesh: Mesh, out: Path, member_dir: Path,
                    members: Mapping[str, Any], encoder_params: Any = None) -> dict[str, Any]:
    """Merge, then distill (unless `no_distillation`): {"ensemble": ..., "distilled": ...}."""
    results = {"ensemble": merge_members(config, data, member_dir, members, out / "ensemble")}
    if not config.no_distillation:
        teacher = out / "ensemble" / "unlabeled_logits.npy"
        if not teacher.exists():
            raise ValueError("distillation needs the members' unlabeled logits "
                             "(task.unlabeled_examples > 0); or set no_distillation=true")
        teacher_NxL = np.load(teacher)
        if teacher_NxL.shape[0] != len(data.unlabeled):
            raise ValueError(f"the ensemble scored {teacher_NxL.shape[0]} unlabeled rows for "
                             f"{len(data.unlabeled)} unlabeled examples (multi-token patterns "
                             "score candidate layouts); set no_distillation=true for this task")
        results["distilled"] = distill(config, data, mesh, out, teacher_NxL, encoder_params)
    return results
