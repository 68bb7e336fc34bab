"""The `method: text2text` run: T5 fine-tuning with task prefixes on local files, then decoding.

`run(config, output_dir=None)` reads the training (and evaluation) file with a
jaxpet.text2text.readers reader, renders (inputs, targets) strings with a jaxpet.text2text.tasks
format or a config template and tokenizes them to static lengths (jaxpet.text2text.data),
trains with the engine (teacher forcing, padded target tokens masked, optional label smoothing
and z-loss; resumable from orbax checkpoints), generates the evaluation outputs with jitted
greedy or beam search and scores them with the task's metric (optionally also rank
classification over the label strings; jaxpet.text2text.evaluate). The output folder holds
config.yaml, metrics.jsonl, predictions.jsonl, results.json, checkpoints/ and model/ (HF layout).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxpet.config import Config, to_yaml
from jaxpet.data.batching import Batcher
from jaxpet.data.hf_dataset import local_folder
from jaxpet.decoding.seq2seq import teacher_forcing
from jaxpet.engine.compilation_cache import enable_compilation_cache
from jaxpet.engine.optim import num_updates
from jaxpet.engine.sharding import build_mesh, check_batch_sizes
from jaxpet.losses import seq2seq_loss
from jaxpet.models import LoadedModel, load_pretrained
from jaxpet.models.options import with_model_options
from jaxpet.models.t5_convert import save_t5
from jaxpet.runs import fingerprint, outputs
from jaxpet.runs.lock import RunLock
from jaxpet.runs.outputs import check_output_dir
from jaxpet.runs.train_stage import settings_schedule, train_stage
from jaxpet.text2text.config import load_text2text_config
from jaxpet.text2text.data import (
    check_data_files,
    data_path,
    encode_pairs,
    read_eval_split,
    read_records,
    render,
)
from jaxpet.text2text.evaluate import evaluate


def make_seq2seq_loss(apply_fn: Callable, *, start_id: int = 0, pad_id: int = 0,
                      label_smoothing: float = 0.0, z_loss: float = 0.0, dropout: bool = False
                      ) -> Callable[[Any, Mapping[str, jax.Array], jax.Array],
                                    tuple[jax.Array, dict]]:
    """loss_fn(params, batch, rng) for teacher-forced T5 training.

    batch: input_ids, attention_mask [B, S], target_ids, target_mask [B, T]. The decoder sees
    shift_right(targets); target tokens where target_mask is 0 do not count. dropout=True uses
    the model's dropout with the step's rng. aux: token_accuracy, target_tokens."""

    def loss_fn(params: Any, batch: Mapping[str, jax.Array], rng: jax.Array
                ) -> tuple[jax.Array, dict]:
        weights_BxT = batch["target_mask"].astype(jnp.float32)
        targets_BxT, decoder_in_BxT = teacher_forcing(batch["target_ids"], weights_BxT,
                                                      start_id, pad_id)
        logits_BxTxV = apply_fn({"params": params}, batch["input_ids"], batch["attention_mask"],
                                decoder_input_ids=decoder_in_BxT, deterministic=not dropout,
                                rngs={"dropout": rng} if dropout else {})
        loss = seq2seq_loss(logits_BxTxV, targets_BxT, weights_BxT, label_smoothing, z_loss)
        tokens = jnp.sum(weights_BxT)
        hits = jnp.sum((jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT) * weights_BxT)
        return loss, {"token_accuracy": hits / jnp.maximum(tokens, 1.0), "target_tokens": tokens}

    return loss_fn


def _train(config: Config, lm: LoadedModel, arrays: dict[str, np.ndarray], mesh: Mesh,
           out: Path, compiler_options: dict[str, Any] | None = None
           ) -> tuple[Any, int, float]:
    section = config.text2text
    if section.max_steps == 0:  # evaluation only: no optimizer, no checkpoint to restore
        print("text2text.max_steps is 0: evaluating the model as it is, without training")
        return lm.params, 0, 0.0
    updates = num_updates(section, len(arrays["input_ids"]), section.train_batch_size)
    loss_fn = make_seq2seq_loss(
        lm.module.apply, start_id=lm.config.decoder_start_token_id,
        pad_id=lm.config.pad_token_id, label_smoothing=section.label_smoothing,
        z_loss=section.z_loss, dropout=getattr(lm.config, "dropout_rate", 0.0) > 0.0)
    batcher = Batcher(groups={"": (arrays, section.train_batch_size, config.seed)}, mesh=mesh,
                      buckets=None)
    params, seconds = train_stage(config, loss_fn, settings_schedule(section, updates), lm.params,
                                  batcher, mesh, out, config.seed, stage="text2text",
                                  compiler_options=compiler_options)
    return params, updates, seconds


def save_model(lm: LoadedModel, params: Any, folder: Path) -> None:
    """The fine-tuned model in HF layout (config, safetensors, tokenizer), from process 0."""

    params = jax.device_get(params)
    if jax.process_index() != 0:
        return
    save_t5(lm.module, params, lm.config, str(folder))
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(str(folder))


def load_model(config: Config) -> Any:
    lm = load_pretrained(config.model.name, head="seq2seq", dtype=jnp.dtype(config.model.dtype),
                         seed=config.seed)
    if lm.tokenizer is None:
        raise ValueError(f"model {config.model.name!r} has no tokenizer files")

    return with_model_options(config, lm)


def run_fingerprint(config: Config) -> dict[str, Any]:
    """What determines a text2text run's results (see jaxpet.runs.fingerprint): its config values
    but the EXCLUDED ones, its data files, its model checkpoint's files and jaxpet's version."""

    values = fingerprint.config_values(config)
    section = config.text2text
    if section.reader == "hf_dataset":  # a save_to_disk folder: its files (a hub name: as is)

        folder = local_folder(section.reader_options)
        if folder is not None:
            values.update(fingerprint.folder_identity(folder,
                                                      "text2text.reader_options.path:files"))
    for key in () if section.reader == "hf_dataset" else ("train_file", "eval_file"):
        if getattr(section, key):  # check_data_files has made sure that it exists
            path = Path(data_path(section, getattr(section, key)))
            values[f"text2text.{key}:files/{path.name}"] = fingerprint.file_identity(path)
    values.update(fingerprint.model_identity(config.model.name))
    return values


def start_folder(config: Config, out: Path, overwrite: bool) -> None:
    """As jaxpet.pipelines.pet.start_folder: stops before any work when `out` holds results of a run
    with another fingerprint (`overwrite` deletes them instead), then stores the config and
    its fingerprint."""
    current = run_fingerprint(config)
    fingerprint.claim_folder(out, current, overwrite, jax.process_index() == 0)
    if jax.process_index() == 0:
        fingerprint.write_fingerprint(out, current)
        outputs.write_text(out / "config.yaml", to_yaml(config))


def run(config: str | os.PathLike | Mapping[str, Any] | Config,
        output_dir: str | os.PathLike | None = None, *,
        compiler_options: dict[str, Any] | None = None, overwrite: bool = False
        ) -> dict[str, Any]:
    """Trains and evaluates one text-to-text model; writes and returns results.json's content.

    config: a `Config` with method text2text, a mapping, or a YAML path (see
    load_text2text_config).
    output_dir overrides config.output_dir. A rerun in the same folder resumes training from
    the latest checkpoint (checkpoint.every > 0) and ends with the same parameters. As PET
    runs do, the run locks its folder (jaxpet.runs.lock) and refuses a folder that holds the
    results of a run with another fingerprint (`overwrite` deletes them first).
    compiler_options go to the train step's jax.jit (jaxpet.engine.training.FAST_CPU_COMPILE for
    quick
    CPU tests).
    """

    start = time.perf_counter()
    config = load_text2text_config(config, output_dir=output_dir)
    out = Path(config.output_dir)
    check_output_dir(out)
    check_data_files(config.text2text)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        start_folder(config, out, overwrite)
        return _run_in_folder(config, out, start, compiler_options)


def _run_in_folder(config: Config, out: Path, start: float,
                   compiler_options: dict[str, Any] | None) -> dict[str, Any]:
    """run() once the output folder is locked and its fingerprint checked."""

    section = config.text2text
    enable_compilation_cache(config.compilation_cache)
    mesh = build_mesh(config)
    check_batch_sizes(mesh, {"text2text.train_batch_size": section.train_batch_size})
    # max_steps 0 evaluates the model as it is: a training file, if named, is not read
    train_records = (read_records(section, section.train_file, section.train_examples)
                     if section.train_file and section.max_steps != 0 else [])
    train_pairs = render(section, train_records, section.train_file)
    eval_split = read_eval_split(section) if section.eval_file else None
    lm = load_model(config)
    if train_pairs:
        train_arrays, cut = encode_pairs(lm.tokenizer, train_pairs, section.max_seq_length,
                                         section.max_target_length, section.train_file)
    else:
        train_arrays, cut = {}, {"inputs": 0, "targets": 0}
    print(f"text2text ({section.format}): {len(train_records)} training examples from "
          f"{section.train_file or '(none)'}; model {config.model.name}; "
          f"{mesh.devices.size} device(s)")
    params, updates, seconds = _train(config, lm, train_arrays, mesh, out, compiler_options)
    results: dict[str, Any] = {
        "method": "text2text", "model": config.model.name, "format": section.format,
        "train_file": section.train_file, "eval_file": section.eval_file,
        "num_train": len(train_records), "steps": updates, "train_time_s": seconds,
        "cut_train_inputs": cut["inputs"], "cut_train_targets": cut["targets"]}
    if section.save_model:
        save_model(lm, params, out / "model")
        results["model_dir"] = str(out / "model")
    if section.eval_file:
        results.update(evaluate(config, lm, params, mesh, out, eval_split))
    results["wall_time_s"] = time.perf_counter() - start
    written = outputs.read_json(outputs.write_json(out / "results.json", results))
    # the scores as results.json holds them (an undefined NaN correlation is null there)
    print(json.dumps({k: written[k] for k in ("metrics", "rank_classification") if k in written}))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxpet.text2text --config FILE.yaml [key=value ...]`."""

    parser = argparse.ArgumentParser(prog="python -m jaxpet.text2text",
                                     description="Fine-tune and evaluate a T5 text-to-text model.")
    parser.add_argument("--config", required=True, help="experiment YAML (method: text2text)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the results of an earlier, different run in output_dir")
    args = parser.parse_args(argv)
    run(load_text2text_config(args.config, args.overrides), overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
