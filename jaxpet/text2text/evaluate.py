"""Evaluating a text2text model: generate the outputs, score them with the task's metric, and
optionally rank the label strings by teacher-forced likelihood."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxpet.config import DEFAULT_METRIC, Config, Text2TextConfig
from jaxpet.decoding.seq2seq import generate, strip_after_eos
from jaxpet.engine.training import predict
from jaxpet.models import LoadedModel
from jaxpet.runs import outputs
from jaxpet.scoring.seq2seq import make_t5_label_scores_fn, pad_targets
from jaxpet.text2text import metrics as t2t_metrics
from jaxpet.text2text import tasks as t2t_tasks
from jaxpet.text2text.data import encode_pairs, read_eval_split

STSB_LABELS = tuple(f"{i / 5:.1f}" for i in range(26))


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


def generate_texts(lm: LoadedModel, params: Any, arrays: Mapping[str, np.ndarray],
                   section: Text2TextConfig, batch_size: int, mesh: Mesh) -> list[str]:
    """Greedy / beam outputs of every row, decoded to strings (one compiled program)."""

    steps = section.max_new_tokens or section.max_target_length

    def generate_fn(p: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        model = LoadedModel(lm.module, p, lm.config)
        return generate(model, batch["input_ids"], batch["attention_mask"], steps,
                        section.num_beams, section.length_penalty)

    inputs = {k: arrays[k] for k in ("input_ids", "attention_mask")}
    tokens_NxT = predict(generate_fn, params, inputs, batch_size, mesh)
    rows = strip_after_eos(tokens_NxT, lm.config.eos_token_id)
    return [t.strip() for t in lm.tokenizer.batch_decode(rows, skip_special_tokens=True)]


def rank_scores(lm: LoadedModel, params: Any, arrays: Mapping[str, np.ndarray],
                labels: Sequence[str], batch_size: int, mesh: Mesh) -> np.ndarray:
    """[N, L] sum log p of every label string (with its EOS) given each input."""

    tokens = lm.tokenizer(list(labels), add_special_tokens=True)["input_ids"]
    ids_LxT, mask_LxT = pad_targets(tokens, pad_id=lm.config.pad_token_id)
    fn = make_t5_label_scores_fn(lm.module.apply, ids_LxT, mask_LxT,
                                 start_id=lm.config.decoder_start_token_id,
                                 pad_id=lm.config.pad_token_id)
    inputs = {k: arrays[k] for k in ("input_ids", "attention_mask")}
    return predict(fn, params, inputs, batch_size, mesh)


def evaluate(config: Config, lm: LoadedModel, params: Any, mesh: Mesh, out: Path,
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
