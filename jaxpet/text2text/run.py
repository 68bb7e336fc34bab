"""The `method: text2text` run: T5 fine-tuning with task prefixes on local files, then decoding.

`run(config, output_dir=None)` reads the training (and evaluation) file with a
jaxpet.text2text.readers
reader, renders (inputs, targets) strings with a jaxpet.text2text.tasks format or a config template,
tokenizes them to static lengths, trains with the engine (teacher forcing, padded target tokens
masked, optional label smoothing and z-loss; resumable from orbax checkpoints), generates the
evaluation outputs with jitted greedy or beam search and scores them with the task's metric
(optionally also rank classification over the label strings). The output folder holds
config.yaml, metrics.jsonl, predictions.jsonl, results.json, checkpoints/ and model/ (HF layout).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet.config import DEFAULT_METRIC, Config, Text2TextConfig, to_yaml
from jaxpet.decoding.seq2seq import generate, shift_right, strip_after_eos
from jaxpet.losses import seq2seq_loss
from jaxpet.runs import outputs
from jaxpet.scoring.seq2seq import make_t5_label_scores_fn, pad_targets
from jaxpet.text2text import metrics as t2t_metrics
from jaxpet.text2text import readers as t2t_readers
from jaxpet.text2text import tasks as t2t_tasks
from jaxpet.text2text.config import load_text2text_config

MODEL_INPUTS = ("input_ids", "attention_mask", "target_ids", "target_mask")
STSB_LABELS = tuple(f"{i / 5:.1f}" for i in range(26))


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped), each with an "id" (default: its line
    number); errors name the file and line."""
    records = []
    for line_no, record in t2t_readers.jsonl_records(path):
        record.setdefault("id", str(line_no))
        records.append(record)
    return records


def data_path(section: Text2TextConfig, file_name: str) -> str:
    return os.path.join(section.data_dir, file_name) if section.data_dir else file_name


def check_data_files(section: Text2TextConfig) -> None:
    """Fails before the model loads (or hours of training pass) when a data file is missing;
    the message names the config keys to change."""
    for key in ("train_file", "eval_file"):
        file_name = getattr(section, key)
        if not file_name or section.reader == "hf_dataset":  # split names, read at load time
            continue
        path = data_path(section, file_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: no such data file (config keys text2text.{key}={file_name!r}, "
                f"text2text.data_dir={section.data_dir!r}; the config's header comment says "
                "where the data come from)")


def read_records(section: Text2TextConfig, file_name: str, limit: int = -1
                 ) -> list[dict[str, Any]]:
    """The records of one split through the configured reader (first `limit`; -1 = all)."""
    path = data_path(section, file_name)
    options = dict(section.reader_options)
    if section.reader == "translation":
        records = t2t_readers.read_translation(path, **options)
    elif section.reader == "cnn_dailymail":
        records = t2t_readers.read_cnn_dailymail(path)
    elif section.reader == "glue_tsv":
        records = t2t_readers.read_glue_tsv(path, options["task"])
    elif section.reader == "squad":
        records = t2t_readers.read_squad(path)
    elif section.reader == "hf_dataset":  # file_name is the dataset's split
        records = t2t_readers.read_hf_dataset(options["path"], file_name, options.get("name"))
    else:
        records = read_jsonl(path)
    if not records:
        raise t2t_readers.DataFileError(f"{path}: no records")
    return records if limit < 0 else records[:limit]


def format_config(section: Text2TextConfig) -> dict[str, Any]:
    """The jaxpet.text2text.tasks.format_records config of a section."""
    config = {"format": section.format, **dict(section.format_options)}
    if section.format == "template":
        config.update(inputs=section.template_inputs, targets=section.template_targets)
    return config


def render(section: Text2TextConfig, records: Sequence[Mapping[str, Any]], where: str = ""
           ) -> list[t2t_tasks.TextPair]:
    """(inputs, targets) pairs; errors about a record name `where` (the file) and its id."""
    return t2t_tasks.format_records(records, format_config(section), where)


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids [N, max_length], mask, number of texts cut); every row ends with EOS (T5 style), a
    text longer than max_length keeps its first max_length - 1 tokens and the EOS."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    token_lists = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    cut = 0
    rows = []
    for tokens in token_lists:
        if not tokens or tokens[-1] != eos:
            tokens = [*tokens, eos]
        if len(tokens) > max_length:
            tokens = [*tokens[: max_length - 1], eos]
            cut += 1
        rows.append(tokens)
    ids_NxT, mask_NxT = pad_targets(rows, max_length, pad)
    return ids_NxT, mask_NxT, cut


def encode_pairs(tokenizer: Any, pairs: Sequence[t2t_tasks.TextPair], max_input_length: int,
                 max_target_length: int, where: str, with_targets: bool = True
                 ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """input_ids/attention_mask [N, S] (+ target_ids/target_mask [N, T]) and cut counts."""
    ids, mask, cut_inputs = tokenize(tokenizer, [p.inputs for p in pairs], max_input_length)
    arrays = {"input_ids": ids, "attention_mask": mask}
    cut = {"inputs": cut_inputs}
    if with_targets:
        missing = [p.guid for p in pairs if p.targets is None]
        if missing:
            raise ValueError(f"{where}: {len(missing)} example(s) have no target, e.g. id "
                             f"{missing[0]!r}")
        tids, tmask, cut_targets = tokenize(tokenizer, [p.targets for p in pairs],
                                            max_target_length)
        arrays.update(target_ids=tids, target_mask=tmask)
        cut["targets"] = cut_targets
    for kind, count in cut.items():
        if count:
            key = "max_seq_length" if kind == "inputs" else "max_target_length"
            warnings.warn(f"{where}: {count} of {len(pairs)} {kind} are longer than "
                          f"text2text.{key} and were cut", stacklevel=2)
    return arrays, cut


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
        targets_BxT = jnp.where(weights_BxT > 0, batch["target_ids"], pad_id)
        decoder_in_BxT = shift_right(targets_BxT, start_id, pad_id)
        logits_BxTxV = apply_fn({"params": params}, batch["input_ids"], batch["attention_mask"],
                                decoder_input_ids=decoder_in_BxT, deterministic=not dropout,
                                rngs={"dropout": rng} if dropout else {})
        loss = seq2seq_loss(logits_BxTxV, targets_BxT, weights_BxT, label_smoothing, z_loss)
        tokens = jnp.sum(weights_BxT)
        hits = jnp.sum((jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT) * weights_BxT)
        return loss, {"token_accuracy": hits / jnp.maximum(tokens, 1.0), "target_tokens": tokens}

    return loss_fn


def metric_name(section: Text2TextConfig) -> str:
    return DEFAULT_METRIC[section.format] if section.metric == "auto" else section.metric


def metric_references(name: str, pairs: Sequence[t2t_tasks.TextPair],
                      records: Sequence[Mapping[str, Any]]) -> list[Any]:
    """What each prediction is scored against: the target string, except SQuAD (all gold
    answers) and correlation (the records' unrounded scores when all have one)."""
    if name == "squad":
        return [list(p.meta.get("answers") or [p.targets]) for p in pairs]
    if name == "correlation" and all(isinstance(r.get("label"), (int, float))
                                     and not isinstance(r.get("label"), bool) for r in records):
        return [float(r["label"]) for r in records]
    return [p.targets for p in pairs]


def compute_metric(name: str, predictions: Sequence[str], pairs: Sequence[t2t_tasks.TextPair],
                   records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The metric on decoded strings against metric_references."""
    if name == "none":
        return {}
    references = metric_references(name, pairs, records)
    return {"bleu": t2t_metrics.bleu, "rouge": t2t_metrics.rouge, "squad": t2t_metrics.squad,
            "correlation": t2t_metrics.correlations,
            "accuracy": t2t_metrics.accuracy}[name](predictions, references)


def label_strings(section: Text2TextConfig) -> list[str]:
    """Candidate outputs for rank classification: the config's labels or the format's own."""
    if section.labels:
        return list(section.labels)
    if section.format == "mnli":
        return list(t2t_tasks.MNLI_LABELS)
    if section.format == "stsb":
        return list(STSB_LABELS)
    if section.format == "glue" and section.format_options.get("label_names"):
        return [str(x) for x in section.format_options["label_names"]]
    raise ValueError("config key 'text2text.labels' must list the label strings for "
                     f"rank_classification with format {section.format!r}")


def generate_texts(lm: Any, params: Any, arrays: Mapping[str, np.ndarray],
                   section: Text2TextConfig, batch_size: int, mesh: Any) -> list[str]:
    """Greedy / beam outputs of every row, decoded to strings (one compiled program)."""
    from jaxpet.engine.training import predict
    from jaxpet.models import LoadedModel

    steps = section.max_new_tokens or section.max_target_length

    def generate_fn(p: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        model = LoadedModel(lm.module, p, lm.config)
        return generate(model, batch["input_ids"], batch["attention_mask"], steps,
                        section.num_beams, section.length_penalty)

    inputs = {k: arrays[k] for k in ("input_ids", "attention_mask")}
    tokens_NxT = predict(generate_fn, params, inputs, batch_size, mesh)
    rows = strip_after_eos(tokens_NxT, lm.config.eos_token_id)
    return [t.strip() for t in lm.tokenizer.batch_decode(rows, skip_special_tokens=True)]


def rank_scores(lm: Any, params: Any, arrays: Mapping[str, np.ndarray], labels: Sequence[str],
                batch_size: int, mesh: Any) -> np.ndarray:
    """[N, L] sum log p of every label string (with its EOS) given each input."""
    from jaxpet.engine.training import predict

    tokens = lm.tokenizer(list(labels), add_special_tokens=True)["input_ids"]
    ids_LxT, mask_LxT = pad_targets(tokens, pad_id=lm.config.pad_token_id)
    fn = make_t5_label_scores_fn(lm.module.apply, ids_LxT, mask_LxT,
                                 start_id=lm.config.decoder_start_token_id,
                                 pad_id=lm.config.pad_token_id)
    inputs = {k: arrays[k] for k in ("input_ids", "attention_mask")}
    return predict(fn, params, inputs, batch_size, mesh)


def _train(config: Config, lm: Any, arrays: dict[str, np.ndarray], mesh: Any,
           out: Path, compiler_options: dict[str, Any] | None = None
           ) -> tuple[Any, int, float]:
    from jaxpet.data.batching import Batcher
    from jaxpet.engine.checkpoint import Checkpointer
    from jaxpet.engine.optim import make_learning_rate_fn, make_optimizer
    from jaxpet.engine.training import Trainer, fit
    from jaxpet.pipelines.pet import num_updates

    section = config.text2text
    if section.max_steps == 0:  # evaluation only: no optimizer, no checkpoint to restore
        print("text2text.max_steps is 0: evaluating the model as it is, without training")
        return lm.params, 0, 0.0
    updates = num_updates(section, len(arrays["input_ids"]))
    optimizer = make_optimizer(section.learning_rate, updates, section.warmup_steps,
                               section.weight_decay, section.adam_epsilon,
                               section.max_grad_norm, section.accumulation_steps)
    lr_fn = make_learning_rate_fn(section.learning_rate, updates, section.warmup_steps,
                                  section.accumulation_steps)
    loss_fn = make_seq2seq_loss(
        lm.module.apply, start_id=lm.config.decoder_start_token_id,
        pad_id=lm.config.pad_token_id, label_smoothing=section.label_smoothing,
        z_loss=section.z_loss, dropout=getattr(lm.config, "dropout_rate", 0.0) > 0.0)
    trainer = Trainer(loss_fn, optimizer, mesh, learning_rate_fn=lr_fn,
                      compiler_options=compiler_options)
    state = trainer.init(lm.params)
    checkpointer = None
    if config.checkpoint.every:
        checkpointer = Checkpointer(out / "checkpoints", config.checkpoint.keep,
                                    config.checkpoint.every)
    start = time.perf_counter()
    batcher = Batcher(groups={"": (arrays, section.train_batch_size, config.seed)}, mesh=mesh,
                      buckets=None)
    with outputs.MetricsWriter(out, tensorboard=config.logging.tensorboard) as writer:
        log = outputs.ThroughputLog(batcher, writer)
        state = fit(trainer, state, log.batch, updates * section.accumulation_steps,
                    seed=config.seed, checkpointer=checkpointer, log_every=config.logging.every,
                    metrics_writer=log.write, progress=config.logging.progress,
                    stage="text2text")
    if checkpointer is not None:
        checkpointer.close()
    return state.params, updates, time.perf_counter() - start


def read_eval_split(section: Text2TextConfig
                    ) -> tuple[list[dict[str, Any]], list[t2t_tasks.TextPair]]:
    """The evaluation records and their pairs (read before training, so that a bad evaluation
    file fails the run at its start rather than after training)."""
    records = read_records(section, section.eval_file, section.eval_examples)
    return records, render(section, records, section.eval_file)


def evaluate(config: Config, lm: Any, params: Any, mesh: Any, out: Path,
             split: tuple[list[dict[str, Any]], list[t2t_tasks.TextPair]] | None = None
             ) -> dict[str, Any]:
    """Decodes the evaluation file (or `split`, from read_eval_split), scores it and writes
    predictions.jsonl: per example the prediction, the target and, where the metric scores
    against something else (SQuAD answers, STS-B scores), that `reference`."""
    section = config.text2text
    records, pairs = split if split is not None else read_eval_split(section)
    labeled = all(p.targets is not None for p in pairs)
    arrays, cut = encode_pairs(lm.tokenizer, pairs, section.max_seq_length,
                               section.max_target_length, section.eval_file, with_targets=False)
    batch_size = config.eval.batch_size
    predictions = generate_texts(lm, params, arrays, section, batch_size, mesh)
    name = metric_name(section)
    result: dict[str, Any] = {"num_eval": len(pairs), "metric": name, "cut_inputs": cut["inputs"],
                              "metrics": compute_metric(name, predictions, pairs, records)
                              if labeled else {}}
    if not labeled:
        print(f"{section.eval_file}: some examples have no target; wrote predictions only")
    ranked = None
    if section.rank_classification:
        labels = label_strings(section)
        scores_NxL = rank_scores(lm, params, arrays, labels, batch_size, mesh)
        ranked = [labels[int(i)] for i in np.argmax(scores_NxL, axis=-1)]
        outputs.write_npy(out / "rank_scores.npy", scores_NxL)
        result["rank_classification"] = (compute_metric(name, ranked, pairs, records)
                                         if labeled else {})
    references = metric_references(name, pairs, records) if labeled else [None] * len(pairs)
    records_out = []
    for i, pair in enumerate(pairs):
        row = {"guid": pair.guid, "inputs": pair.inputs, "prediction": predictions[i],
               "target": pair.targets}
        if references[i] != pair.targets:
            row["reference"] = references[i]
        if ranked is not None:
            row["rank_prediction"] = ranked[i]
        records_out.append(row)
    outputs.write_jsonl(out / "predictions.jsonl", records_out)
    return result


def save_model(lm: Any, params: Any, folder: Path) -> None:
    """The fine-tuned model in HF layout (config, safetensors, tokenizer), from process 0."""
    from jaxpet.models.t5_convert import save_t5

    params = jax.device_get(params)
    if jax.process_index() != 0:
        return
    save_t5(lm.module, params, lm.config, str(folder))
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(str(folder))


def load_model(config: Config) -> Any:
    from jaxpet.models import load_pretrained

    lm = load_pretrained(config.model.name, head="seq2seq", dtype=jnp.dtype(config.model.dtype),
                         seed=config.seed)
    if lm.tokenizer is None:
        raise ValueError(f"model {config.model.name!r} has no tokenizer files")
    from jaxpet.pipelines.setup import with_model_options

    return with_model_options(config, lm)


def run_fingerprint(config: Config) -> dict[str, Any]:
    """What determines a text2text run's results (see jaxpet.runs.fingerprint): its config values
    but the EXCLUDED ones, its data files, its model checkpoint's files and jaxpet's version."""
    from jaxpet.runs import fingerprint

    values = fingerprint.config_values(config)
    section = config.text2text
    if section.reader == "hf_dataset":  # a save_to_disk folder: its files (a hub name: as is)
        from jaxpet.data.hf_dataset import local_folder

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
    from jaxpet.runs import fingerprint
    current = run_fingerprint(config)
    fingerprint.claim_folder(out, current, overwrite, jax.process_index() == 0)
    if jax.process_index() == 0:
        fingerprint.write_fingerprint(out, current)
        outputs.write_text(out / "config.yaml", to_yaml(config))


def run(config: Any, output_dir: str | os.PathLike | None = None, *,
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
    from jaxpet.pipelines.pet import check_output_dir
    from jaxpet.runs.lock import RunLock

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
    from jaxpet.pipelines.pet import build_mesh, check_batch_sizes, enable_compilation_cache

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
    import argparse

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
