"""The setup of a run: its task data, model, mesh, batch-size checks, metrics and predictions."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet.config import Config
from jaxpet.data.custom import task_from_config
from jaxpet.data.example import Example
from jaxpet.data.hf_dataset import register_hf_task, with_dataset
from jaxpet.data.tasks import get_task, load_examples
from jaxpet.engine.backbone_shapes import backbone_from_config
from jaxpet.engine.memory import check_fits, device_memory_bytes, estimate_memory
from jaxpet.metrics import compute_metrics, record_accuracy, task_metrics
from jaxpet.models import LoadedModel, load_pretrained
from jaxpet.models.minilm import resolve_model_name
from jaxpet.models.options import with_model_options
from jaxpet.models.pretrained import read_config, resolve_folder
from jaxpet.models.t5_config import SUPPORTED_T5_TYPES
from jaxpet.prompts.template import pvp_from_config
from jaxpet.prompts.verbalizer import load_verbalizer
from jaxpet.runs import outputs


@dataclasses.dataclass
class TaskData:
    """The examples of one run: labeled training set, evaluation set, unlabeled set."""

    name: str
    labels: list[str]
    train: list[Example]
    eval: list[Example]
    unlabeled: list[Example]


def register_config_task(task: Any) -> None:
    """Registers the reader and the template patterns of a task defined in the config."""

    if task.hf_dataset is not None:
        spec = register_hf_task(task.name, task.definition, task.hf_dataset)
    else:
        spec = task_from_config({**task.definition, "name": task.name,
                                 "data_dir": task.data_dir})
    verbalizer = task.verbalizer
    if isinstance(verbalizer, str):  # a verbalizer file: it must cover every pattern

        verbalizer = [dict(load_verbalizer(verbalizer, i).words)
                      for i in range(len(task.patterns))]
    else:
        verbalizer = dict(verbalizer)
    pvp_from_config(task.name, list(spec.labels), list(task.patterns), verbalizer)


def verbalizer_file(config: Config) -> str | None:
    """The verbalizer file named by task.verbalizer (its words replace the pattern's), or None."""
    verbalizer = config.task.verbalizer
    return verbalizer if isinstance(verbalizer, str) else None


def task_spec(task: Any) -> Any:
    """The TaskSpec a run reads (config-defined tasks registered first); with task.hf_dataset
    its splits come from that Hugging Face dataset (jaxpet.data.hf_dataset)."""

    if task.definition is not None:
        register_config_task(task)
    return with_dataset(get_task(task.name), task.hf_dataset)


def load_task_data(config: Config) -> TaskData:
    task = config.task
    spec = task_spec(task)
    load = lambda split, n, evenly=False: load_examples(  # noqa: E731
        spec, task.data_dir, split, n, task.sample_seed, evenly)
    train = load("train", task.train_examples, task.split_examples_evenly)
    evaluation = load(task.eval_set, task.test_examples)
    unlabeled = load("unlabeled", task.unlabeled_examples) if task.unlabeled_examples else []
    return TaskData(task.name, list(spec.labels), train, evaluation, unlabeled)


def is_t5_checkpoint(name: str) -> bool:
    """True when the checkpoint `name` (a folder, hub name or "minilm") is a T5 / mT5 model."""

    # the loader's own folder lookup: the same hub cache and offline errors as load_pretrained
    folder = resolve_folder(resolve_model_name(name))
    return read_config(folder)["model_type"] in SUPPORTED_T5_TYPES


def load_model(config: Config, head: str, num_labels: int | None = None,
               name: str | None = None) -> Any:
    """The checkpoint `name` (default model.name) with `head`, after the memory check.

    PET asks for head "mlm"; a T5 checkpoint answers with its seq2seq model instead (its
    pattern's mask slot is a sentinel that the decoder fills, jaxpet.scoring.seq2seq). Its memory is
    checked later, once the label targets fix the decoder's length (check_memory's target_len).
    """

    name = name or config.model.name
    if head == "mlm" and is_t5_checkpoint(name):
        head = "seq2seq"
    lm = load_pretrained(resolve_model_name(name), head=head, num_labels=num_labels,
                         dtype=jnp.dtype(config.model.dtype), seed=config.seed)
    if lm.tokenizer is None:
        raise ValueError(f"model {name!r} has no tokenizer files")
    lm = with_model_options(config, lm)
    if head != "seq2seq":
        check_memory(config, lm, head)
    return lm


def check_memory(config: Config, lm: LoadedModel, head: str, target_len: int | None = None) -> None:
    """Prints the per-device memory estimate of this model's train step, and fails before
    compiling when the devices report less memory than it needs (jaxpet.engine.memory).

    A T5 PET backbone (lm.head "seq2seq") needs `target_len`: decoder positions per example,
    all label targets together (L x W x T), which is how jaxpet.scoring.seq2seq scores them.
    """

    settings = config.pet if head == "mlm" else config.classifier
    batch_sizes = {"train_batch_size": settings.train_batch_size}
    if head != "mlm" or config.pet.lm_training:
        batch_sizes["unlabeled_batch_size"] = settings.unlabeled_batch_size
    batch_size = sum(batch_sizes.values())
    fsdp, tensor = config.mesh.fsdp, config.mesh.tensor
    data = config.mesh.data if config.mesh.data > 0 else max(
        1, jax.device_count() // (fsdp * tensor))
    remat = config.model.remat_policy if config.model.remat else "none"
    extra = {}
    if lm.head == "seq2seq":
        if target_len is None:
            raise ValueError("check_memory needs target_len for a T5 model")
        remat = "full" if config.model.remat else "none"  # see with_remat
        # the B x (L W) targets of T tokens are costed as B rows of L W T tokens: exact for all
        # but the decoder's self-attention scores, which this overestimates (T is small)
        extra = dict(target_len=target_len)
    estimate = estimate_memory(
        backbone_from_config(lm.config), batch_size=batch_size,
        seq_len=settings.max_seq_length, remat=remat,
        compute_dtype=config.model.dtype, data=data, fsdp=fsdp, tensor=tensor,
        fused_attention=config.model.attention in ("cudnn", "pallas"), **extra)
    print(f"memory estimate: {estimate.describe()}")
    limit = device_memory_bytes()
    if limit:
        check_fits(estimate, limit, section="pet" if head == "mlm" else "classifier",
                   batch_sizes=batch_sizes, accumulation_steps=settings.accumulation_steps)


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


def evaluate_scores(task_name: str, labels: Sequence[str], examples: Sequence[Example],
                    scores_NxC: np.ndarray) -> dict[str, float]:
    """The task's metrics of label scores [N, C] (single members or merged ensembles): ReCoRD
    accuracy (the top candidate, meta["candidates"], is one of meta["answers"]); otherwise
    score c is label c, so the argmax is compared with the examples' labels."""
    if task_name.lower() == "record":
        is_gold_NxC = np.zeros(scores_NxC.shape, dtype=bool)
        for i, e in enumerate(examples):
            answers = set(e.meta.get("answers") or [])
            for c, candidate in enumerate(e.meta["candidates"]):
                is_gold_NxC[i, c] = candidate in answers
        return {name: record_accuracy(scores_NxC, is_gold_NxC)
                for name in task_metrics(task_name)}
    return evaluate_logits(task_name, labels, examples, scores_NxC)


def write_predictions(folder: Path, prefix: str, examples: Sequence[Example],
                      labels: Sequence[str], logits_NxL: np.ndarray) -> None:
    outputs.write_npy(folder / f"{prefix}_logits.npy", logits_NxL)
    records = [{"guid": e.guid, "label": labels[int(np.argmax(row))], "gold": e.label,
                "logits": row} for e, row in zip(examples, logits_NxL, strict=True)]
    outputs.write_jsonl(folder / "predictions.jsonl", records)
