"""PET, iPET and sequence-classifier runs: `run(config)` trains, evaluates, writes the output dir.

method "pet": optionally an MLM warm-up (jaxpet.pipelines.mlm_pretrain), then one masked-LM model
per
listed pattern and repetition, each in `OUT/p{P}-s{S}/` with metrics.jsonl, results.json
(accuracy on the labeled set before training, as PET's `wmean` needs it; eval metrics),
eval_logits.npy, unlabeled_logits.npy and predictions.jsonl; then the merged ensemble in
`OUT/ensemble/` and the distilled classifier in `OUT/distilled/` (jaxpet.pipelines.distill). method
"ipet": generations of such ensembles in `OUT/g{G}/` (jaxpet.pipelines.ipet). method
"sequence_classifier": the supervised baseline, one model per repetition in `OUT/sc-s{S}/`
(after the MLM warm-up when enabled); method "mlm_pretrain": the warm-up stage alone, which
exports the adapted model to `OUT/mlm_pretrain/model`. A T5 checkpoint as model.name is a PET
backbone too (jaxpet.scoring.seq2seq, docs/t5_pet.md); its ensemble is distilled into
classifier.model.
A folder that already holds results.json is reused and a model with checkpoints resumes from
them, so a killed run continues where it stopped. summary.md and summary.png come from
jaxpet.runs.report.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxpet.config import Config, ConfigError, TrainingConfig, to_yaml
from jaxpet.engine.compilation_cache import enable_compilation_cache

# the run's setup lives in jaxpet.pipelines.setup; these names stay importable from here
from jaxpet.pipelines.setup import (  # noqa: E402, F401
    MODEL_INPUTS,
    TaskData,
    build_mesh,
    check_batch_sizes,
    check_memory,
    evaluate_logits,
    label_indices,
    load_model,
    load_task_data,
    num_updates,
    resolve_model_name,
    write_predictions,
)
from jaxpet.runs import outputs


def train(config: Config, settings: TrainingConfig, loss_fn: Any, params: Any, groups: dict,
          mesh: Any, folder: Path, seed: int) -> tuple[Any, float]:
    """Fits `params` with `loss_fn` on the Batcher groups; returns (params, seconds)."""
    from jaxpet.data.batching import Batcher
    from jaxpet.engine.checkpoint import Checkpointer
    from jaxpet.engine.optim import make_learning_rate_fn, make_optimizer
    from jaxpet.engine.training import Trainer, fit

    updates = num_updates(settings, len(next(iter(groups.values()))[0]["input_ids"]))
    optimizer = make_optimizer(settings.learning_rate, updates, settings.warmup_steps,
                               settings.weight_decay, settings.adam_epsilon,
                               settings.max_grad_norm, settings.accumulation_steps)
    lr_fn = make_learning_rate_fn(settings.learning_rate, updates, settings.warmup_steps,
                                  settings.accumulation_steps)
    trainer = Trainer(loss_fn, optimizer, mesh, learning_rate_fn=lr_fn)
    state = trainer.init(params)
    checkpointer = None
    if config.checkpoint.every:
        checkpointer = Checkpointer(folder / "checkpoints", config.checkpoint.keep,
                                    config.checkpoint.every)
    start = time.perf_counter()
    with outputs.MetricsWriter(folder, tensorboard=config.logging.tensorboard) as writer:
        log = outputs.ThroughputLog(Batcher(groups=groups, mesh=mesh), writer)
        state = fit(trainer, state, log.batch, updates * settings.accumulation_steps, seed=seed,
                    checkpointer=checkpointer, log_every=config.logging.every,
                    metrics_writer=log.write, progress=config.logging.progress,
                    stage=folder.name)
    if checkpointer is not None:
        checkpointer.close()
    return state.params, time.perf_counter() - start


@dataclasses.dataclass
class PatternData:
    """One pattern's encoded sets and its compiled label-score function.

    A masked-LM pattern has verbalizer ids [L, W]; a T5 pattern (jaxpet.scoring.seq2seq) has none
    and
    its label targets `<extra_id_0> word` (ids, mask [L, W, T]) instead.
    """

    pattern_id: int
    verbalizer_ids_LxW: np.ndarray | None
    logits_fn: Any
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    unlabeled: dict[str, np.ndarray] | None
    label_targets: tuple[np.ndarray, np.ndarray] | None = None


def encoded_sets(encode: Any, data: TaskData) -> dict[str, Any]:
    """PatternData's train / eval / unlabeled arrays from encode(examples) -> arrays."""
    from jaxpet.data.batching import DEFAULT_BUCKETS, trim_to_bucket

    return dict(
        # |T| = 0 (zero-shot iPET): an empty labeled set shaped like the others
        train=encode(data.train) if data.train else {
            k: v[:0] for k, v in encode(data.eval[:1]).items()},
        eval=trim_to_bucket(encode(data.eval), DEFAULT_BUCKETS),
        unlabeled=encode(data.unlabeled) if data.unlabeled else None)


def prepare_pattern(config: Config, lm: Any, data: TaskData, pattern_id: int) -> PatternData:
    from jaxpet.pipelines.multitoken import needs_multi_token, prepare_multitoken_pattern
    from jaxpet.pipelines.setup import verbalizer_file
    from jaxpet.prompts import get_pvp
    from jaxpet.scoring.cloze_step import make_label_logits_fn

    pvp = get_pvp(data.name, pattern_id, verbalizer_file(config))
    # T5 scores label words of any length in one decoder pass: never multi-token
    multi_token = lm.head != "seq2seq" and needs_multi_token(pvp, lm.tokenizer)
    if config.eval.priming and (lm.head == "seq2seq" or multi_token):
        raise ConfigError(f"eval.priming needs a masked LM and single-token label words; "
                          f"pattern {pattern_id} of task {data.name!r} has multi-token answers "
                          "or a T5 backbone")
    if lm.head == "seq2seq":
        return prepare_t5_pattern(config, lm, data, pvp)
    if multi_token:  # COPA, WSC, ReCoRD, multi-token verbalizers
        return prepare_multitoken_pattern(config, lm, data, pattern_id, pvp)
    seq = config.pet.max_seq_length
    keys = (*MODEL_INPUTS, "mask_positions", "labels")
    encode = lambda examples: {k: np.asarray(v) for k, v in  # noqa: E731
                               pvp.encode(examples, lm.tokenizer, seq).items() if k in keys}
    verbalizer_ids_LxW = np.asarray(pvp.verbalizer_ids(lm.tokenizer))
    sets = encoded_sets(encode, data)
    if config.eval.priming:
        sets["eval"] = primed_eval_set(pvp, lm.tokenizer, data, seq)
    return PatternData(
        pattern_id=pattern_id, verbalizer_ids_LxW=verbalizer_ids_LxW,
        logits_fn=make_label_logits_fn(lm.module.apply, verbalizer_ids_LxW), **sets)


def primed_eval_set(pvp: Any, tokenizer: Any, data: TaskData, seq: int) -> dict[str, np.ndarray]:
    """The eval set encoded after all labeled examples as demonstrations (eval.priming), as
    the original PET primes its evaluation; training and the unlabeled set are not primed."""
    from jaxpet.data.batching import DEFAULT_BUCKETS, trim_to_bucket
    from jaxpet.prompts.priming import encode_primed

    if not data.train:
        raise ConfigError("eval.priming needs labeled examples as demonstrations "
                          "(task.train_examples is 0)")
    keys = (*MODEL_INPUTS, "mask_positions", "labels")
    primed = encode_primed(pvp, data.eval, tokenizer, seq, demonstrations=data.train)
    return trim_to_bucket({k: np.asarray(v) for k, v in primed.items() if k in keys},
                          DEFAULT_BUCKETS)


def prepare_t5_pattern(config: Config, lm: Any, data: TaskData, pvp: Any) -> PatternData:
    """A pattern of a T5 backbone: the mask slot is `<extra_id_0>`, the label scores are the
    log-likelihoods of the label words after it (jaxpet.scoring.seq2seq)."""
    from jaxpet.scoring.seq2seq import (
        check_t5_pattern,
        make_t5_label_scores_fn,
        t5_label_targets,
        t5_pet_encode,
    )

    check_t5_pattern(pvp)
    seq = config.pet.max_seq_length
    encode = lambda examples: t5_pet_encode(pvp, examples, lm.tokenizer, seq)  # noqa: E731
    ids_LxWxT, mask_LxWxT = t5_label_targets(pvp, lm.tokenizer)
    scores_fn = make_t5_label_scores_fn(lm.module.apply, ids_LxWxT, mask_LxWxT,
                                        **t5_special_ids(lm))
    return PatternData(pattern_id=pvp.pattern_id, verbalizer_ids_LxW=None, logits_fn=scores_fn,
                       label_targets=(ids_LxWxT, mask_LxWxT), **encoded_sets(encode, data))


def t5_special_ids(lm: Any) -> dict[str, int]:
    """The decoder's start and pad ids, as jaxpet.scoring.seq2seq's functions take them."""
    return dict(start_id=lm.config.decoder_start_token_id, pad_id=lm.config.pad_token_id)


def check_t5_memory(config: Config, lm: Any, patterns: Sequence[PatternData]) -> None:
    """check_memory of a T5 backbone, its decoder length being the longest patterns' targets."""
    target_len = max(int(np.prod(p.label_targets[0].shape)) for p in patterns)
    check_memory(config, lm, "mlm", target_len=target_len)


def share_logits_fns(patterns: Sequence[Any]) -> list[Any]:
    """Patterns whose label scoring is the same (one verbalizer, e.g. all AG News patterns)
    get one logits_fn object, so that their predictions share compiled programs."""
    first: dict[tuple, Any] = {}
    shared = []
    for pattern in patterns:
        if not isinstance(pattern, PatternData):  # multi-token: per-example candidates
            shared.append(pattern)
            continue
        constants = pattern.label_targets or (pattern.verbalizer_ids_LxW,)
        key = tuple((a.shape, str(a.dtype), a.tobytes()) for a in map(np.asarray, constants))
        fn = first.setdefault(key, pattern.logits_fn)
        shared.append(dataclasses.replace(pattern, logits_fn=fn))
    return shared


def predict_logits(config: Config, fn: Any, params: Any, arrays: Mapping[str, np.ndarray],
                   mesh: Any) -> np.ndarray:
    from jaxpet.data.batching import DEFAULT_BUCKETS, trim_to_bucket
    from jaxpet.engine.training import predict

    inputs = trim_to_bucket({k: v for k, v in arrays.items() if k != "labels"}, DEFAULT_BUCKETS)
    return np.asarray(predict(fn, params, inputs, config.eval.batch_size, mesh), np.float32)


def zero_shot(config: Config, patterns: Sequence[PatternData], params: Any, data: TaskData,
              mesh: Any) -> dict[str, dict[str, float]]:
    """Eval-set metrics of every pattern with untrained `params`."""
    from jaxpet.pipelines.multitoken import zero_shot_metrics

    return {f"p{p.pattern_id}": zero_shot_metrics(config, p, params, data, mesh)
            if getattr(p, "multi_token", False) else evaluate_logits(
        data.name, data.labels, data.eval,
        predict_logits(config, p.logits_fn, params, p.eval, mesh)) for p in patterns}


def pet_loss_kwargs(config: Config, lm: Any) -> dict[str, Any]:
    """make_pet_loss's keyword arguments (all but the verbalizer) from the config and model."""
    settings = config.pet
    return dict(alpha=settings.alpha, mask_token_id=lm.tokenizer.mask_token_id,
                vocab_size=lm.config.vocab_size,
                max_mlm_targets=settings.max_mlm_targets or max(
                    1, int(np.ceil(settings.mlm_probability * settings.max_seq_length))),
                pad_id=lm.tokenizer.pad_token_id, special_token_ids=lm.tokenizer.all_special_ids,
                mlm_probability=settings.mlm_probability)


def pattern_loss(config: Config, lm: Any, pattern: PatternData) -> Any:
    """The training loss of one PET model: cloze (+ auxiliary MLM) for a masked LM, the
    cross-entropy over label log-likelihoods for T5 (with dropout as the MLM path has)."""
    from jaxpet.scoring.cloze_step import make_pet_loss
    from jaxpet.scoring.seq2seq import make_t5_pet_loss

    if pattern.label_targets is not None:
        ids_LxWxT, mask_LxWxT = pattern.label_targets
        return make_t5_pet_loss(lm.module.apply, ids_LxWxT, mask_LxWxT, **t5_special_ids(lm),
                                dropout=lm.config.dropout_rate > 0.0)
    return make_pet_loss(lm.module.apply, pattern.verbalizer_ids_LxW,
                         **pet_loss_kwargs(config, lm))


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


def train_pet_model(config: Config, lm: Any, params: Any, pattern: PatternData, data: TaskData,
                    mesh: Any, folder: Path, repetition: int,
                    train_arrays: Mapping[str, np.ndarray] | None = None,
                    pretrained: tuple[Any, float] | None = None,
                    final: bool = True) -> dict[str, Any]:
    """Trains, evaluates and saves one PET model (pattern x repetition) in `folder`.

    `pretrained` = (params, seconds) of a member already trained elsewhere: only evaluated.
    `train_arrays` replaces the pattern's labeled set (iPET: T plus pseudo-labeled examples).
    With `pet.max_steps` 0 or an empty training set the model is evaluated untrained.
    The model goes to `folder/model` when `output.save_models` keeps it (`final`: whether it
    is one of the run's final models, jaxpet.pipelines.model_saving).
    """
    from jaxpet.pipelines import model_saving
    if getattr(pattern, "multi_token", False):
        from jaxpet.pipelines.multitoken import train_multitoken_model

        return train_multitoken_model(config, lm, params, pattern, data, mesh, folder,
                                      repetition, train_arrays, final)
    if (folder / "results.json").exists():
        model_saving.check_reused(config, folder, final)
        print(f"{folder.name}: results.json exists, reusing it")
        return outputs.read_json(folder / "results.json")
    settings, seed = config.pet, config.seed + repetition
    train_set = dict(pattern.train if train_arrays is None else train_arrays)
    train_labels = train_set["labels"]
    zero_shot_member = settings.max_steps == 0 or len(train_labels) == 0
    print(f"{folder.name}: {'evaluating' if zero_shot_member else 'training'} pattern "
          f"{pattern.pattern_id}, seed {seed}, {len(train_labels)} training examples")
    on_train = lambda p: (  # noqa: E731
        predict_logits(config, pattern.logits_fn, p, train_set, mesh) if len(train_labels)
        else np.zeros((0, len(data.labels)), np.float32))
    before = on_train(params)
    trained, seconds = params, 0.0
    # trained together with other members (jaxpet.pipelines.parallel_members)
    if pretrained is not None:
        trained, seconds = pretrained
    elif not zero_shot_member:
        loss_fn = pattern_loss(config, lm, pattern)
        groups = training_groups(config, pattern, train_set, seed)
        trained, seconds = train(config, settings, loss_fn, params, groups, mesh, folder, seed)
    metrics = evaluate_member(config, pattern, trained, data, mesh, folder)
    after = on_train(trained)
    if pattern.unlabeled is not None:
        outputs.write_npy(folder / "unlabeled_logits.npy", predict_logits(
            config, pattern.logits_fn, trained, pattern.unlabeled, mesh))
    results = {
        "pattern_id": pattern.pattern_id, "repetition": repetition, "seed": seed,
        "train_set_before_training": accuracy(before, train_labels),
        "train_set_after_training": accuracy(after, train_labels),
        "eval_set": config.task.eval_set, "metrics": metrics,
        "train_time_s": seconds, "num_train": len(train_labels), "num_eval": len(data.eval),
        "num_unlabeled": len(data.unlabeled)}
    # the model before results.json: a finished folder always holds the model it should
    model_saving.save_member(config, lm, trained, data, pattern, folder, final)
    outputs.write_json(folder / "results.json", results)
    return results


def evaluate_member(config: Config, pattern: Any, params: Any, data: TaskData, mesh: Any,
                    folder: Path) -> dict[str, float]:
    """Scores the eval set with one member's `params` (single- or multi-token pattern), writes
    eval_logits.npy and predictions.jsonl to `folder`; returns the eval metrics. Training and
    method evaluate (jaxpet.pipelines.evaluate) both score a member through it."""
    if getattr(pattern, "multi_token", False):
        from jaxpet.pipelines.multitoken import evaluate_multitoken_member

        return evaluate_multitoken_member(config, pattern, params, data, mesh, folder)
    eval_logits = predict_logits(config, pattern.logits_fn, params, pattern.eval, mesh)
    write_predictions(folder, "eval", data.eval, data.labels, eval_logits)
    return evaluate_logits(data.name, data.labels, data.eval, eval_logits)


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


def prepare_pet(config: Config, data: TaskData, mesh: Any,
                out: Path) -> tuple[Any, Any, list[PatternData], dict[str, Any]]:
    """Checks batch sizes, loads the MLM, encodes every pattern, runs the MLM warm-up and the
    zero-shot evaluations; returns (lm, start params, patterns, results so far)."""
    from jaxpet.pipelines import mlm_pretrain
    settings = config.pet
    sizes = {"pet.train_batch_size": settings.train_batch_size,
             "eval.batch_size": config.eval.batch_size}
    if settings.lm_training:
        sizes["pet.unlabeled_batch_size"] = settings.unlabeled_batch_size
    if config.mlm_pretrain.enabled:
        sizes["mlm_pretrain.batch_size"] = config.mlm_pretrain.batch_size
    check_batch_sizes(mesh, sizes)
    lm = load_model(config, "mlm")  # run() has already checked the T5 options (check_models)
    patterns = share_logits_fns([prepare_pattern(config, lm, data, p)
                                 for p in settings.pattern_ids])
    if lm.head == "seq2seq":
        check_t5_memory(config, lm, patterns)
    results: dict[str, Any] = {}
    lm = dataclasses.replace(lm, params=place_params(lm.params, mesh))  # frees the unplaced copy
    params = lm.params
    if config.eval.zero_shot:
        results["zero_shot"] = zero_shot(config, patterns, params, data, mesh)
    if config.mlm_pretrain.enabled:
        params, results["mlm_pretrain"] = mlm_pretrain.run(config, lm, data.unlabeled, mesh, out)
        if config.eval.zero_shot:
            results["zero_shot_after_mlm_pretrain"] = zero_shot(
                config, patterns, params, data, mesh)
    return lm, params, patterns, results


def place_params(params: Any, mesh: Any) -> Any:
    """`params` on the mesh as the Trainer places them: predictions before and after training
    then share one compiled program, and a large model is not held whole on one device."""
    from jaxpet.engine.sharding import param_shardings, place

    return place(params, param_shardings(params, mesh))


def train_ensemble(config: Config, lm: Any, params: Any, patterns: Sequence[PatternData],
                   data: TaskData, mesh: Any, out: Path,
                   train_sets: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                   final: bool = True) -> dict[str, Any]:
    """Every pattern x repetition member in `out/p{P}-s{S}`; `train_sets` (by member name)
    replace the labeled set; `final`: the members are the run's final models (nothing is
    distilled from them). Returns {"members", "patterns", "pet"} results."""
    trained: dict[str, tuple[Any, float]] = {}
    if config.pet.parallel_members:
        from jaxpet.pipelines.parallel_members import train_in_parallel

        trained = train_in_parallel(config, lm, params, patterns, mesh, out, train_sets)
    members = {}
    for pattern in patterns:
        for repetition in range(config.pet.repetitions):
            folder = outputs.member_dir(out, pattern.pattern_id, repetition)
            members[folder.name] = train_pet_model(
                config, lm, params, pattern, data, mesh, folder, repetition,
                None if train_sets is None else train_sets[folder.name],
                trained.get(folder.name), final)
    return {"members": members,
            "patterns": aggregate(members, lambda r: f"p{r['pattern_id']}"),
            "pet": aggregate(members, lambda r: "all")["all"]}


def warmed_up_encoder(config: Config, params: Any) -> Any:
    """The encoder after the MLM warm-up (the classifiers start from it), or None."""
    return params.get("encoder") if config.mlm_pretrain.enabled else None


def run_pet(config: Config, data: TaskData, mesh: Any, out: Path) -> dict[str, Any]:
    """PET: the ensemble, its merge and distillation (and the baseline when asked)."""
    from jaxpet.pipelines.distill import finish_ensemble, run_classifier
    from jaxpet.pipelines.model_saving import member_is_final

    lm, params, patterns, results = prepare_pet(config, data, mesh, out)
    results.update(train_ensemble(config, lm, params, patterns, data, mesh, out,
                                  final=member_is_final(config)))
    encoder = warmed_up_encoder(config, params)
    results.update(finish_ensemble(config, data, mesh, out, out, results["members"], encoder))
    if config.classifier.baseline:
        results["classifier"] = run_classifier(config, data, mesh, out, encoder)
    return results


def warm_up_encoder(config: Config, data: TaskData, mesh: Any, out: Path) -> tuple[Any, dict]:
    """Runs the MLM warm-up stage alone; returns (encoder params, stage results)."""
    from jaxpet.pipelines import mlm_pretrain
    check_batch_sizes(mesh, {"mlm_pretrain.batch_size": config.mlm_pretrain.batch_size})
    params, results = mlm_pretrain.run(config, load_model(config, "mlm"), data.unlabeled, mesh,
                                       out)
    return params["encoder"], results


def check_models(config: Config) -> None:
    """Fails before any training when a model cannot do what the config asks of it: options
    a T5 backbone does not support, a sequence classifier that would be a T5 checkpoint."""
    from jaxpet.pipelines.distill import check_classifier_model, needs_classifier
    from jaxpet.pipelines.setup import is_t5_checkpoint

    if is_t5_checkpoint(config.model.name):
        from jaxpet.scoring.seq2seq import check_t5_pet_options

        check_t5_pet_options(config)
    if needs_classifier(config):
        check_classifier_model(config)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Runs `config.method` end to end; writes and returns the run's results.

    The output folder is locked for the run (jaxpet.runs.lock) and must hold no results of a
    different run (jaxpet.runs.fingerprint); `overwrite` deletes them first.
    """
    from jaxpet.config import validate_stages
    from jaxpet.runs.lock import RunLock

    if config.method == "evaluate":  # trains nothing: scores a finished run's saved models
        from jaxpet.pipelines.evaluate import run as evaluate

        return evaluate(config)
    start = time.perf_counter()
    validate_stages(config)
    out = Path(config.output_dir)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        return run_in_folder(config, out, overwrite, start)


def check_output_dir(out: Path) -> None:
    """A one-line error for an output_dir that names a file (or has a file among its parents)."""
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"config key 'output_dir' ({out}): {folder} exists and is not a "
                              "folder")


def start_folder(config: Config, out: Path, overwrite: bool) -> None:
    """Checks the folder's fingerprint against the config's before any work (or, with
    `overwrite`, deletes its old results), then stores the config and its fingerprint."""
    import jax

    from jaxpet.runs import fingerprint
    current = fingerprint.run_fingerprint(config)
    fingerprint.claim_folder(out, current, overwrite, jax.process_index() == 0)
    if config.mlm_pretrain.enabled and config.mlm_pretrain.checkpoint_dir:
        # a warm-up folder outside the run may be shared with other runs: it has its own
        check_warmup_folder(config, Path(config.mlm_pretrain.checkpoint_dir), overwrite)
    if jax.process_index() == 0:
        fingerprint.write_fingerprint(out, current)
        # A rerun may still be refused later (a reused model that its output.save_models
        # wants was never saved): the folder keeps the finished run's config.yaml until the
        # rerun itself finishes and stores its own.
        if not (out / "config.yaml").exists():
            outputs.write_text(out / "config.yaml", to_yaml(config))


def warmup_fingerprint(config: Config) -> dict[str, Any]:
    """The keys the MLM warm-up stage depends on: its section, the seed, the model, the data
    and the patterns (mlm_pretrain.inputs 'patterns' applies them)."""
    from jaxpet.runs import fingerprint
    keep = ("mlm_pretrain.", "model.", "task.", "seed", "jaxpet_version", "pet.pattern_ids")
    return {k: v for k, v in fingerprint.run_fingerprint(config).items()
            if k.startswith(keep) and k != "mlm_pretrain.checkpoint_dir"
            and not k.startswith(("task.train_examples", "task.test_examples",
                                  "task.eval_set", "task.split_examples_evenly"))}


def check_warmup_folder(config: Config, folder: Path, overwrite: bool) -> None:
    import jax

    from jaxpet.runs import fingerprint
    current = warmup_fingerprint(config)
    what = "mlm_pretrain.checkpoint_dir"
    if overwrite:
        if jax.process_index() == 0:
            fingerprint.clear_folder(folder, what)
    else:
        fingerprint.check_folder(folder, current, what)
    if jax.process_index() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        fingerprint.write_fingerprint(folder, current)


def check_data(config: Config, data: TaskData) -> None:
    """Fails before any model loads when a split the run needs came out empty."""
    from jaxpet.config import distills

    if not data.eval:
        raise ConfigError(f"task {config.task.name!r} in {config.task.data_dir}: the "
                          f"{config.task.eval_set} set is empty; the run has nothing to report")
    needs_unlabeled = (distills(config) or config.method == "ipet" or config.mlm_pretrain.enabled
                       or config.method == "mlm_pretrain"
                       or (config.method in ("pet", "ipet") and config.pet.lm_training))
    if needs_unlabeled and not data.unlabeled:
        raise ConfigError(f"task {config.task.name!r} in {config.task.data_dir}: no unlabeled "
                          "examples, but the run needs them (distillation, iPET, the MLM warm-up "
                          "or pet.lm_training)")


def run_in_folder(config: Config, out: Path, overwrite: bool, start: float) -> dict[str, Any]:
    """run() once the output folder is locked."""
    start_folder(config, out, overwrite)
    enable_compilation_cache(config.compilation_cache)
    data = load_task_data(config)
    check_data(config, data)
    check_models(config)
    mesh = build_mesh(config)
    print(f"{config.task.name}: {len(data.train)} labeled, {len(data.unlabeled)} unlabeled, "
          f"{len(data.eval)} {config.task.eval_set} examples; model {config.model.name}; "
          f"{mesh.devices.size} device(s)")
    results: dict[str, Any] = {
        "method": config.method, "task": config.task.name, "model": config.model.name,
        "eval_set": config.task.eval_set, "num_train": len(data.train),
        "num_eval": len(data.eval), "num_unlabeled": len(data.unlabeled)}
    if config.method == "pet":
        results.update(run_pet(config, data, mesh, out))
    elif config.method == "ipet":
        from jaxpet.pipelines.ipet import run_ipet

        results.update(run_ipet(config, data, mesh, out))
    else:
        from jaxpet.pipelines.distill import run_classifier

        encoder = None
        if config.mlm_pretrain.enabled or config.method == "mlm_pretrain":
            encoder, results["mlm_pretrain"] = warm_up_encoder(config, data, mesh, out)
        if config.method == "sequence_classifier":
            results["classifier"] = run_classifier(config, data, mesh, out, encoder)
    results["wall_time_s"] = time.perf_counter() - start
    outputs.write_text(out / "config.yaml", to_yaml(config))
    outputs.write_json(out / "results.json", results)
    from jaxpet.runs.report import write_report

    print(write_report(out, results))
    return results
