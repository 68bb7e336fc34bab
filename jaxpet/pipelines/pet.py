"""PET, iPET and sequence-classifier runs: `run(config)` trains, evaluates, writes the output dir.

method "pet": optionally an MLM warm-up (jaxpet.pipelines.mlm_pretrain), then one masked-LM model
per listed pattern and repetition (jaxpet.pipelines.ensemble, jaxpet.pipelines.member), each in
`OUT/p{P}-s{S}/` with metrics.jsonl, results.json
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

import time
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from jaxpet.config import Config, ConfigError, distills, to_yaml, validate_stages
from jaxpet.engine.compilation_cache import enable_compilation_cache
from jaxpet.engine.sharding import build_mesh, check_batch_sizes
from jaxpet.pipelines import evaluate, mlm_pretrain, model_saving
from jaxpet.pipelines.distill import (
    check_classifier_model,
    finish_ensemble,
    needs_classifier,
    run_classifier,
)
from jaxpet.pipelines.ensemble import prepare_pet, train_ensemble, warmed_up_encoder
from jaxpet.pipelines.ipet import run_ipet
from jaxpet.pipelines.setup import TaskData, is_t5_checkpoint, load_model, load_task_data
from jaxpet.runs import fingerprint, outputs
from jaxpet.runs.lock import RunLock
from jaxpet.runs.outputs import check_output_dir
from jaxpet.runs.report import write_report
from jaxpet.scoring.seq2seq import check_t5_pet_options


def run_pet(config: Config, data: TaskData, mesh: Mesh, out: Path) -> dict[str, Any]:
    """PET: the ensemble, its merge and distillation (and the baseline when asked)."""
    lm, params, patterns, results = prepare_pet(config, data, mesh, out)
    results.update(train_ensemble(config, lm, params, patterns, data, mesh, out,
                                  final=model_saving.member_is_final(config)))
    encoder = warmed_up_encoder(config, params)
    results.update(finish_ensemble(config, data, mesh, out, out, results["members"], encoder))
    if config.classifier.baseline:
        results["classifier"] = run_classifier(config, data, mesh, out, encoder)
    return results


def warm_up_encoder(config: Config, data: TaskData, mesh: Mesh, out: Path) -> tuple[Any, dict]:
    """Runs the MLM warm-up stage alone; returns (encoder params, stage results)."""
    check_batch_sizes(mesh, {"mlm_pretrain.batch_size": config.mlm_pretrain.batch_size})
    params, results = mlm_pretrain.run(config, load_model(config, "mlm"), data.unlabeled, mesh,
                                       out)
    return params["encoder"], results


def check_models(config: Config) -> None:
    """Fails before any training when a model cannot do what the config asks of it: options
    a T5 backbone does not support, a sequence classifier that would be a T5 checkpoint."""
    if is_t5_checkpoint(config.model.name):
        check_t5_pet_options(config)
    if needs_classifier(config):
        check_classifier_model(config)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Runs `config.method` end to end; writes and returns the run's results.

    The output folder is locked for the run (jaxpet.runs.lock) and must hold no results of a
    different run (jaxpet.runs.fingerprint); `overwrite` deletes them first.
    """

    if config.method == "evaluate":  # trains nothing: scores a finished run's saved models
        return evaluate.run(config)
    start = time.perf_counter()
    validate_stages(config)
    out = Path(config.output_dir)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        return run_in_folder(config, out, overwrite, start)


def start_folder(config: Config, out: Path, overwrite: bool) -> None:
    """Checks the folder's fingerprint against the config's before any work (or, with
    `overwrite`, deletes its old results), then stores the config and its fingerprint."""
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
    keep = ("mlm_pretrain.", "model.", "task.", "seed", "jaxpet_version", "pet.pattern_ids")
    return {k: v for k, v in fingerprint.run_fingerprint(config).items()
            if k.startswith(keep) and k != "mlm_pretrain.checkpoint_dir"
            and not k.startswith(("task.train_examples", "task.test_examples",
                                  "task.eval_set", "task.split_examples_evenly"))}


def check_warmup_folder(config: Config, folder: Path, overwrite: bool) -> None:
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
        results.update(run_ipet(config, data, mesh, out))
    else:
        encoder = None
        if config.mlm_pretrain.enabled or config.method == "mlm_pretrain":
            encoder, results["mlm_pretrain"] = warm_up_encoder(config, data, mesh, out)
        if config.method == "sequence_classifier":
            results["classifier"] = run_classifier(config, data, mesh, out, encoder)
    results["wall_time_s"] = time.perf_counter() - start
    outputs.write_text(out / "config.yaml", to_yaml(config))
    outputs.write_json(out / "results.json", results)

    print(write_report(out, results))
    return results
