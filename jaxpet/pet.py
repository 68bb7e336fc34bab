"""PET and sequence-classifier runs: `run(config)` trains, evaluates and writes the output folder.

method "pet": optionally an MLM warm-up (jaxpet.mlm_pretrain), then one masked-LM model per
listed pattern and repetition, each in `OUT/p{P}-s{S}/` with metrics.jsonl, results.json
(accuracy on the labeled set before training, as PET's `wmean` needs it; eval metrics),
eval_logits.npy, unlabeled_logits.npy and predictions.jsonl. method "sequence_classifier": the
supervised baseline, one model per repetition in `OUT/sc-s{S}/` (after the MLM warm-up when
enabled); method "mlm_pretrain": the warm-up stage alone, which exports the adapted model to
`OUT/mlm_pretrain/model`. A member folder that already
holds results.json is reused, so a killed run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import outputs
from jaxpet.config import Config, TrainingConfig, to_yaml
from jaxpet.data.example import Example
from jaxpet.metrics import compute_metrics, task_metrics

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass
class TaskData:
    """The examples of one run: labeled training set, evaluation set, unlabeled set."""

    name: str
    labels: list[str]
    train: list[Example]
    eval: list[Example]
    unlabeled: list[Example]


def load_task_data(config: Config) -> TaskData:
    from jaxpet.data.tasks import get_task, load_examples

    task = config.task
    spec = get_task(task.name)
    load = lambda split, n, evenly=False: load_examples(  # noqa: E731
        task.name, task.data_dir, split, n, task.sample_seed, evenly)
    train = load("train", task.train_examples, task.split_examples_evenly)
    evaluation = load(task.eval_set, task.test_examples)
    unlabeled = load("unlabeled", task.unlabeled_examples) if task.unlabeled_examples else []
    return TaskData(task.name, list(spec.labels), train, evaluation, unlabeled)


def resolve_model_name(name: str) -> str:
    """`minilm` is the pip-installed all-MiniLM-L6-v2 encoder; other names pass through."""
    if name == "minilm":
        from jaxpet.models.minilm import minilm_path

        return str(minilm_path())
    return name


def load_model(config: Config, head: str, num_labels: int | None = None) -> Any:
    from jaxpet.models import load_pretrained

    lm = load_pretrained(resolve_model_name(config.model.name), head=head, num_labels=num_labels,
                         dtype=jnp.dtype(config.model.dtype), seed=config.seed)
    if lm.tokenizer is None:
        raise ValueError(f"model {config.model.name!r} has no tokenizer files")
    if config.model.remat:
        remat_config = lm.config.replace(remat=True)
        lm = dataclasses.replace(lm, module=lm.module.clone(config=remat_config),
                                 config=remat_config)
    return lm


def enable_compilation_cache(path: str) -> None:
    """Points JAX's persistent compilation cache at `path` ("" leaves JAX's setting alone)."""
    if not path:
        return
    from jax.experimental.compilation_cache import compilation_cache

    path = str(Path(path).expanduser())
    if jax.config.jax_compilation_cache_dir != path:
        # the cache is set up at the first compile; start over so that the new folder is used
        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", path)


def build_mesh(config: Config) -> Any:
    from jaxpet.sharding import make_mesh

    devices = jax.devices()
    if config.mesh.data > 0:
        devices = devices[: config.mesh.data * config.mesh.fsdp]
    return make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp, devices=devices)


def check_batch_sizes(mesh: Any, sizes: Mapping[str, int]) -> None:
    """Every global batch must split evenly over the mesh's batch shards."""
    from jaxpet.sharding import batch_divisor

    shards = batch_divisor(mesh)
    for key, size in sizes.items():
        if size % shards:
            raise ValueError(f"config key '{key}' = {size} is not a multiple of the {shards} batch "
                             f"shards of the mesh (mesh.data x mesh.fsdp); change one of them")


def num_updates(settings: TrainingConfig, num_train: int) -> int:
    """Optimizer updates: max_steps, or num_train_epochs passes over the labeled set."""
    if settings.max_steps > 0:
        return settings.max_steps
    micro_steps = settings.num_train_epochs * -(-num_train // settings.train_batch_size)
    return max(1, -(-micro_steps // settings.accumulation_steps))


def label_indices(examples: Sequence[Example], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    return np.asarray([index[e.label] if e.label is not None else -1 for e in examples], np.int32)


def evaluate_logits(task_name: str, labels: Sequence[str], examples: Sequence[Example],
                    logits_NxL: np.ndarray) -> dict[str, float]:
    """The task's metrics of argmax predictions against the examples' labels."""
    question_ids = None
    if all("question_idx" in e.meta for e in examples):
        question_ids = [(e.meta.get("passage_idx"), e.meta["question_idx"]) for e in examples]
    return compute_metrics(task_metrics(task_name), label_indices(examples, labels),
                           np.argmax(logits_NxL, axis=-1), question_ids)


def write_predictions(folder: Path, prefix: str, examples: Sequence[Example],
                      labels: Sequence[str], logits_NxL: np.ndarray) -> None:
    outputs.write_npy(folder / f"{prefix}_logits.npy", logits_NxL)
    records = [{"guid": e.guid, "label": labels[int(np.argmax(row))], "gold": e.label,
                "logits": row} for e, row in zip(examples, logits_NxL, strict=True)]
    outputs.write_jsonl(folder / "predictions.jsonl", records)


def train(config: Config, settings: TrainingConfig, loss_fn: Any, params: Any, groups: dict,
          mesh: Any, folder: Path, seed: int) -> tuple[Any, float]:
    """Fits `params` with `loss_fn` on the Batcher groups; returns (params, seconds)."""
    from jaxpet.checkpoint import Checkpointer
    from jaxpet.data.batching import Batcher
    from jaxpet.optim import make_learning_rate_fn, make_optimizer
    from jaxpet.training import Trainer, fit

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
                    metrics_writer=log.write, progress=config.logging.progress)
    if checkpointer is not None:
        checkpointer.close()
    return state.params, time.perf_counter() - start


@dataclasses.dataclass
class PatternData:
    """One pattern's encoded sets and its compiled label-score function."""

    pattern_id: int
    verbalizer_ids_LxW: np.ndarray
    logits_fn: Any
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    unlabeled: dict[str, np.ndarray] | None


def prepare_pattern(config: Config, lm: Any, data: TaskData, pattern_id: int) -> PatternData:
    from jaxpet.data.batching import DEFAULT_BUCKETS, trim_to_bucket
    from jaxpet.pet_step import make_label_logits_fn
    from jaxpet.prompts import get_pvp

    pvp = get_pvp(data.name, pattern_id)
    if pvp.multi_token:
        raise NotImplementedError(f"{data.name} pattern {pattern_id} has multi-token answers, "
                                  "which jaxpet.pet.run does not train yet")
    seq = config.pet.max_seq_length
    keys = (*MODEL_INPUTS, "mask_positions", "labels")
    encode = lambda examples: {k: np.asarray(v) for k, v in  # noqa: E731
                               pvp.encode(examples, lm.tokenizer, seq).items() if k in keys}
    verbalizer_ids_LxW = np.asarray(pvp.verbalizer_ids(lm.tokenizer))
    return PatternData(
        pattern_id=pattern_id, verbalizer_ids_LxW=verbalizer_ids_LxW,
        logits_fn=make_label_logits_fn(lm.module.apply, verbalizer_ids_LxW),
        train=encode(data.train), eval=trim_to_bucket(encode(data.eval), DEFAULT_BUCKETS),
        unlabeled=encode(data.unlabeled) if data.unlabeled else None)


def predict_logits(config: Config, fn: Any, params: Any, arrays: Mapping[str, np.ndarray],
                   mesh: Any) -> np.ndarray:
    from jaxpet.data.batching import DEFAULT_BUCKETS, trim_to_bucket
    from jaxpet.training import predict

    inputs = trim_to_bucket({k: v for k, v in arrays.items() if k != "labels"}, DEFAULT_BUCKETS)
    return np.asarray(predict(fn, params, inputs, config.eval.batch_size, mesh), np.float32)


def zero_shot(config: Config, patterns: Sequence[PatternData], params: Any, data: TaskData,
              mesh: Any) -> dict[str, dict[str, float]]:
    """Eval-set metrics of every pattern with untrained `params`."""
    return {f"p{p.pattern_id}": evaluate_logits(
        data.name, data.labels, data.eval,
        predict_logits(config, p.logits_fn, params, p.eval, mesh)) for p in patterns}


def train_pet_model(config: Config, lm: Any, params: Any, pattern: PatternData, data: TaskData,
                    mesh: Any, folder: Path, repetition: int) -> dict[str, Any]:
    """Trains, evaluates and saves one PET model (pattern x repetition) in `folder`."""
    from jaxpet.pet_step import make_pet_loss

    if (folder / "results.json").exists():
        print(f"{folder.name}: results.json exists, reusing it")
        return outputs.read_json(folder / "results.json")
    settings, seed = config.pet, config.seed + repetition
    print(f"{folder.name}: training pattern {pattern.pattern_id}, seed {seed}")
    train_labels = pattern.train["labels"]
    before = predict_logits(config, pattern.logits_fn, params, pattern.train, mesh)
    loss_fn = make_pet_loss(
        lm.module.apply, pattern.verbalizer_ids_LxW, alpha=settings.alpha,
        mask_token_id=lm.tokenizer.mask_token_id, vocab_size=lm.config.vocab_size,
        max_mlm_targets=settings.max_mlm_targets or max(
            1, int(np.ceil(settings.mlm_probability * settings.max_seq_length))),
        pad_id=lm.tokenizer.pad_token_id, special_token_ids=lm.tokenizer.all_special_ids,
        mlm_probability=settings.mlm_probability)
    groups = {"": (pattern.train, settings.train_batch_size, seed)}
    if settings.lm_training:
        if pattern.unlabeled is None:
            raise ValueError("pet.lm_training needs unlabeled examples (task.unlabeled_examples)")
        unlabeled = {k: pattern.unlabeled[k] for k in MODEL_INPUTS}
        groups["unlabeled_"] = (unlabeled, settings.unlabeled_batch_size, seed + 1)
    trained, seconds = train(config, settings, loss_fn, params, groups, mesh, folder, seed)
    eval_logits = predict_logits(config, pattern.logits_fn, trained, pattern.eval, mesh)
    write_predictions(folder, "eval", data.eval, data.labels, eval_logits)
    after = predict_logits(config, pattern.logits_fn, trained, pattern.train, mesh)
    if pattern.unlabeled is not None:
        outputs.write_npy(folder / "unlabeled_logits.npy", predict_logits(
            config, pattern.logits_fn, trained, pattern.unlabeled, mesh))
    results = {
        "pattern_id": pattern.pattern_id, "repetition": repetition, "seed": seed,
        "train_set_before_training": float(np.mean(before.argmax(-1) == train_labels)),
        "train_set_after_training": float(np.mean(after.argmax(-1) == train_labels)),
        "eval_set": config.task.eval_set, "metrics": evaluate_logits(
            data.name, data.labels, data.eval, eval_logits),
        "train_time_s": seconds, "num_train": len(data.train), "num_eval": len(data.eval),
        "num_unlabeled": len(data.unlabeled)}
    outputs.write_json(folder / "results.json", results)
    return results


def aggregate(members: Mapping[str, Mapping[str, Any]], key_of: Any) -> dict[str, Any]:
    """Mean and std of every metric over the members grouped by key_of(member results)."""
    grouped: dict[str, list[Mapping[str, float]]] = {}
    for result in members.values():
        grouped.setdefault(key_of(result), []).append(result["metrics"])
    return {key: {name: {"mean": float(np.mean([m[name] for m in runs])),
                         "std": float(np.std([m[name] for m in runs])), "runs": len(runs)}
                  for name in runs[0]}
            for key, runs in grouped.items()}


def run_pet(config: Config, data: TaskData, mesh: Any, out: Path) -> dict[str, Any]:
    from jaxpet import mlm_pretrain

    settings = config.pet
    sizes = {"pet.train_batch_size": settings.train_batch_size,
             "eval.batch_size": config.eval.batch_size}
    if settings.lm_training:
        sizes["pet.unlabeled_batch_size"] = settings.unlabeled_batch_size
    if config.mlm_pretrain.enabled:
        sizes["mlm_pretrain.batch_size"] = config.mlm_pretrain.batch_size
    check_batch_sizes(mesh, sizes)
    lm = load_model(config, "mlm")
    patterns = [prepare_pattern(config, lm, data, p) for p in settings.pattern_ids]
    results: dict[str, Any] = {}
    params = lm.params
    if config.eval.zero_shot:
        results["zero_shot"] = zero_shot(config, patterns, params, data, mesh)
    if config.mlm_pretrain.enabled:
        params, results["mlm_pretrain"] = mlm_pretrain.run(config, lm, data.unlabeled, mesh, out)
        if config.eval.zero_shot:
            results["zero_shot_after_mlm_pretrain"] = zero_shot(
                config, patterns, params, data, mesh)
    members = {}
    for pattern in patterns:
        for repetition in range(settings.repetitions):
            folder = outputs.member_dir(out, pattern.pattern_id, repetition)
            members[folder.name] = train_pet_model(
                config, lm, params, pattern, data, mesh, folder, repetition)
    results["members"] = members
    results["patterns"] = aggregate(members, lambda r: f"p{r['pattern_id']}")
    results["pet"] = aggregate(members, lambda r: "all")["all"]
    if config.classifier.baseline:
        encoder = params.get("encoder") if config.mlm_pretrain.enabled else None
        results["classifier"] = run_classifier(config, data, mesh, out, encoder)
    return results


def warm_up_encoder(config: Config, data: TaskData, mesh: Any, out: Path) -> tuple[Any, dict]:
    """Runs the MLM warm-up stage alone; returns (encoder params, stage results)."""
    from jaxpet import mlm_pretrain

    check_batch_sizes(mesh, {"mlm_pretrain.batch_size": config.mlm_pretrain.batch_size})
    params, results = mlm_pretrain.run(config, load_model(config, "mlm"), data.unlabeled, mesh,
                                       out)
    return params["encoder"], results


def run_classifier(config: Config, data: TaskData, mesh: Any, out: Path,
                   encoder_params: Any = None) -> dict[str, Any]:
    """Supervised sequence classifier(s) on the labeled set; one folder `sc-s{S}` each."""
    from jaxpet.mlm_pretrain import encode_texts
    from jaxpet.pet_step import make_classifier_logits_fn, make_classifier_loss

    settings = config.classifier
    check_batch_sizes(mesh, {"classifier.train_batch_size": settings.train_batch_size,
                             "eval.batch_size": config.eval.batch_size})
    lm = load_model(config, "classifier", num_labels=len(data.labels))
    params = lm.params if encoder_params is None else {**lm.params, "encoder": encoder_params}
    encode = lambda examples: {k: v for k, v in encode_texts(  # noqa: E731
        examples, lm.tokenizer, settings.max_seq_length)[0].items() if k in MODEL_INPUTS}
    train_arrays = {**encode(data.train), "labels": label_indices(data.train, data.labels)}
    eval_arrays = encode(data.eval)
    loss_fn = make_classifier_loss(lm.module.apply)
    logits_fn = make_classifier_logits_fn(lm.module.apply)
    members = {}
    for repetition in range(settings.repetitions):
        folder, seed = out / f"sc-s{repetition}", config.seed + repetition
        if (folder / "results.json").exists():
            print(f"{folder.name}: results.json exists, reusing it")
            members[folder.name] = outputs.read_json(folder / "results.json")
            continue
        print(f"{folder.name}: training the sequence classifier, seed {seed}")
        trained, seconds = train(config, settings, loss_fn, params,
                                 {"": (train_arrays, settings.train_batch_size, seed)},
                                 mesh, folder, seed)
        eval_logits = predict_logits(config, logits_fn, trained, eval_arrays, mesh)
        write_predictions(folder, "eval", data.eval, data.labels, eval_logits)
        members[folder.name] = {
            "repetition": repetition, "seed": seed, "eval_set": config.task.eval_set,
            "metrics": evaluate_logits(data.name, data.labels, data.eval, eval_logits),
            "train_time_s": seconds, "num_train": len(data.train), "num_eval": len(data.eval)}
        outputs.write_json(folder / "results.json", members[folder.name])
    return {"members": members, **aggregate(members, lambda r: "summary")}


def run(config: Config) -> dict[str, Any]:
    """Runs `config.method` end to end; writes and returns the run's results."""
    start = time.perf_counter()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    outputs.write_text(out / "config.yaml", to_yaml(config))
    enable_compilation_cache(config.compilation_cache)
    data = load_task_data(config)
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
    else:
        encoder = None
        if config.mlm_pretrain.enabled or config.method == "mlm_pretrain":
            encoder, results["mlm_pretrain"] = warm_up_encoder(config, data, mesh, out)
        if config.method == "sequence_classifier":
            results["classifier"] = run_classifier(config, data, mesh, out, encoder)
    results["wall_time_s"] = time.perf_counter() - start
    outputs.write_json(out / "results.json", results)
    table = outputs.results_table(results)
    outputs.write_text(out / "summary.md", table + "\n")
    print(table)
    return results
