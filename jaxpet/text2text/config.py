"""Config of a `method: text2text` run: the `text2text` section and a standalone run config.

`Text2TextConfig` is the `text2text:` section of an experiment YAML (it subclasses
`jaxpet.config.TrainingConfig`, so the usual training knobs apply; `max_seq_length` is the
encoder input length). `Text2TextRunConfig` holds the sections a text-to-text run reads
(method, output_dir, seed, model, text2text, mesh, checkpoint, eval, logging);
`load_text2text_config` builds it from a YAML file, a mapping or a full `jaxpet.config.Config`
with a `text2text` field, ignoring the sections that only PET uses.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from jaxpet.config import (
    CheckpointConfig,
    ConfigError,
    EvalConfig,
    LoggingConfig,
    MeshConfig,
    ModelConfig,
    TrainingConfig,
    apply_overrides,
    merge_config,
    read_yaml,
)

READERS = ("translation", "cnn_dailymail", "glue_tsv", "squad", "jsonl", "hf_dataset")
FORMATS = ("translate", "summarize", "mnli", "stsb", "squad", "glue", "template")
METRICS = ("auto", "bleu", "rouge", "squad", "accuracy", "correlation", "none")
# format_options each built-in format needs (checked when the config loads, not per record).
FORMAT_OPTIONS = {"translate": ("source_language", "target_language"), "glue": ("benchmark",)}
# The metric each built-in format is evaluated with when `metric: auto`.
DEFAULT_METRIC = {"translate": "bleu", "summarize": "rouge", "squad": "squad", "mnli": "accuracy",
                  "glue": "accuracy", "stsb": "correlation", "template": "accuracy"}


@dataclass
class Text2TextConfig(TrainingConfig):
    """T5 text-to-text fine-tuning on local files: reader, prefix format, lengths, decoding."""

    data_dir: str = ""  # folder the file names below are relative to ("" = as given)
    train_file: str = MISSING  # labeled training file (not needed when max_steps is 0)
    eval_file: str = ""  # file to evaluate on after training ("" = no evaluation)
    # jaxpet.text2text.readers reader: translation (.tsv / .jsonl), cnn_dailymail (.jsonl),
    # glue_tsv (reader_options.task: mnli | stsb), squad (v1.1 .json), jsonl (one object a line),
    # hf_dataset (reader_options {path: save_to_disk folder or hub name, name: hub config};
    # train_file / eval_file name the dataset's splits; needs jaxpet[datasets])
    reader: str = "jsonl"
    reader_options: dict[str, Any] = field(default_factory=dict)  # e.g. {source_key: en}
    train_examples: int = -1  # first N training records; -1 = all
    eval_examples: int = -1  # first N evaluation records; -1 = all
    # jaxpet.text2text.tasks format: translate | summarize | mnli | stsb | squad | glue | template
    format: str = "template"
    # options of the format, e.g. {source_language: en, target_language: de} for translate,
    # {benchmark: cola, label_names: [unacceptable, acceptable]} for glue
    format_options: dict[str, Any] = field(default_factory=dict)
    template_inputs: str = ""  # format template: e.g. "sentiment: {text}" ({field} of a record)
    template_targets: str = ""  # format template: e.g. "{label}"
    max_seq_length: int = 512  # encoder input tokens (EOS included); longer inputs are cut
    max_target_length: int = 128  # decoder target tokens (EOS included); longer targets are cut
    train_batch_size: int = 128
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    label_smoothing: float = 0.0  # on the target tokens (T5 uses 0)
    z_loss: float = 0.0  # z_loss * logsumexp(logits)^2 per target token (T5X uses 1e-4)
    num_beams: int = 1  # 1 = greedy decoding
    length_penalty: float = 1.0  # beam search: score / length**length_penalty
    max_new_tokens: int = 0  # decoding steps; 0 = max_target_length
    # bleu | rouge | squad (EM/F1) | accuracy | correlation (Pearson/Spearman) | none | auto
    metric: str = "auto"
    # also rank the label strings by teacher-forced log-likelihood (classification tasks)
    rank_classification: bool = False
    labels: list[str] = field(default_factory=list)  # label strings; [] = the format's own
    save_model: bool = True  # write the fine-tuned model (HF layout) to OUT/model


@dataclass
class Text2TextRunConfig:
    """The sections of an experiment config that a text-to-text run reads."""

    method: str = "text2text"
    output_dir: str = MISSING
    seed: int = 42
    compilation_cache: str = "~/.cache/jaxpet/xla"
    model: ModelConfig = field(default_factory=ModelConfig)
    text2text: Text2TextConfig = field(default_factory=Text2TextConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


_RUN_KEYS = tuple(f.name for f in dataclasses.fields(Text2TextRunConfig))


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key 'text2text.{key}' {message}")


def validate_text2text(section: Text2TextConfig) -> None:
    """Constraints that types cannot express; errors name the key."""
    _check(section.reader in READERS, "reader", f"must be one of {list(READERS)}, got "
           f"{section.reader!r}")
    _check(section.format in FORMATS, "format", f"must be one of {list(FORMATS)}, got "
           f"{section.format!r}")
    _check(section.metric in METRICS, "metric", f"must be one of {list(METRICS)}, got "
           f"{section.metric!r}")
    if section.format == "template":
        _check(bool(section.template_inputs), "template_inputs",
               "is required with format 'template' (e.g. 'sentiment: {text}')")
        _check(bool(section.template_targets), "template_targets",
               "is required with format 'template' (e.g. '{label}')")
    for option in FORMAT_OPTIONS.get(section.format, ()):
        _check(bool(section.format_options.get(option)), f"format_options.{option}",
               f"is required with format {section.format!r}")
    if section.reader == "hf_dataset":
        _check(bool(section.reader_options.get("path")), "reader_options.path",
               "is required with reader 'hf_dataset' (a save_to_disk folder or a hub name)")
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise ConfigError("config key 'text2text.reader' is 'hf_dataset' but the datasets "
                              "package is not installed: pip install jaxpet[datasets]") from None
    if section.reader == "glue_tsv":
        _check(section.reader_options.get("task") in ("mnli", "stsb"), "reader_options.task",
               "must be 'mnli' or 'stsb' with reader 'glue_tsv'")
    _check(section.repetitions == 1, "repetitions", "must be 1 (one model per text2text run)")
    for name in ("max_seq_length", "max_target_length", "train_batch_size", "accumulation_steps",
                 "num_beams"):
        _check(getattr(section, name) >= 1, name, "must be >= 1")
    # max_steps 0: the checkpoint is evaluated as it is (zero-shot), nothing is trained
    _check(section.max_steps >= 0 or section.num_train_epochs >= 1, "max_steps",
           "must be >= 0 (0 = evaluate without training), or -1 with num_train_epochs >= 1")
    _check(section.max_steps != 0 or bool(section.eval_file), "eval_file",
           "is required with text2text.max_steps 0 (an evaluation-only run)")
    _check(section.max_steps == 0 or bool(section.train_file), "train_file",
           "is required unless text2text.max_steps is 0 (an evaluation-only run)")
    _check(0.0 <= section.label_smoothing < 1.0, "label_smoothing", "must lie in [0, 1)")
    _check(section.z_loss >= 0.0, "z_loss", "must be >= 0")
    _check(section.max_new_tokens >= 0, "max_new_tokens", "must be >= 0")


def load_text2text_config(source: Any, overrides: list[str] = (),
                          output_dir: str | None = None) -> Text2TextRunConfig:
    """A validated `Text2TextRunConfig` from a YAML path, a mapping / DictConfig, a
    `Text2TextRunConfig`, or any dataclass with a `text2text` field (e.g. the full `Config`).

    Sections other than those of `Text2TextRunConfig` (task, pet, ...) are ignored; dotted
    `key=value` overrides and `output_dir` are applied last.
    """
    name = "config"
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        tree = read_yaml(source)
    elif dataclasses.is_dataclass(source):
        if not hasattr(source, "text2text"):
            raise ConfigError(f"{type(source).__name__} has no 'text2text' section")
        tree = OmegaConf.create({k: OmegaConf.structured(getattr(source, k))
                                 if dataclasses.is_dataclass(getattr(source, k))
                                 else getattr(source, k)
                                 for k in _RUN_KEYS if hasattr(source, k)})
    elif isinstance(source, (dict, DictConfig)):
        tree = OmegaConf.create(source) if isinstance(source, dict) else source
    else:
        raise TypeError(f"cannot read a text2text config from {type(source).__name__}")
    tree = OmegaConf.create({k: tree[k] for k in tree if k in _RUN_KEYS})
    merged = merge_config(OmegaConf.structured(Text2TextRunConfig), tree, name)
    merged = apply_overrides(merged, list(overrides))
    if output_dir is not None:
        merged.output_dir = str(output_dir)
    if merged.text2text.max_steps == 0 and OmegaConf.is_missing(merged.text2text, "train_file"):
        merged.text2text.train_file = ""  # an evaluation-only run reads no training file
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"missing required config key(s) in {name}: {', '.join(missing)}")
    config = OmegaConf.to_object(merged)
    if config.method != "text2text":
        raise ConfigError(f"{name}: config key 'method' must be 'text2text' for a text-to-text "
                          f"run, got {config.method!r}")
    validate_text2text(config.text2text)
    return config
