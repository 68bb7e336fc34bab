"""Config checks that types cannot express; each error names the key and what it allows."""

from __future__ import annotations

import warnings

from jaxpet.config.schema import (
    DATASETS_MISSING,
    DTYPES,
    EVAL_SETS,
    FORMAT_OPTIONS,
    METHODS,
    MLM_INPUTS,
    REDUCTIONS,
    SAVE_MODELS,
    TENSORBOARD_MISSING,
    TEXT2TEXT_FORMATS,
    TEXT2TEXT_METRICS,
    TEXT2TEXT_READERS,
    Config,
    ConfigError,
    Text2TextConfig,
    TrainingConfig,
)


def _check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}")


def _check_range(value: float, key: str, low: float, high: float | None = None,
                 low_open: bool = False) -> None:
    """ConfigError naming `key` and its allowed range when `value` lies outside it."""
    above = value > low if low_open else value >= low
    if not above or (high is not None and value > high):
        bound = f"> {low}" if low_open else f">= {low}"
        allowed = bound if high is None else f"in {'(' if low_open else '['}{low}, {high}]"
        raise ConfigError(f"config key '{key}' must be {allowed}, got {value!r}")


def distills(config: Config) -> bool:
    """Whether the run distills an ensemble into a sequence classifier (pet / ipet)."""
    return config.method in ("pet", "ipet") and not config.no_distillation


def validate_ranges(config: Config) -> None:
    """Every numeric setting in its range, and what each enabled stage needs, checked before
    any data or model loads; raises ConfigError naming the key and the allowed range."""
    for section in ("pet", "classifier"):
        training: TrainingConfig = getattr(config, section)
        _check_range(training.learning_rate, f"{section}.learning_rate", 0, low_open=True)
        _check_range(training.unlabeled_batch_size, f"{section}.unlabeled_batch_size", 0)
        _check_range(training.weight_decay, f"{section}.weight_decay", 0)
        _check_range(training.warmup_steps, f"{section}.warmup_steps", 0)
        _check_range(training.adam_epsilon, f"{section}.adam_epsilon", 0, low_open=True)
    _check_range(config.classifier.temperature, "classifier.temperature", 0, low_open=True)
    _check_range(config.pet.mlm_probability, "pet.mlm_probability", 0, 1, low_open=True)
    _check_range(config.pet.max_mlm_targets, "pet.max_mlm_targets", 0)
    warmup = config.mlm_pretrain
    _check_range(warmup.learning_rate, "mlm_pretrain.learning_rate", 0, low_open=True)
    for name in ("batch_size", "max_seq_length"):
        _check_range(getattr(warmup, name), f"mlm_pretrain.{name}", 1)
    _check_range(warmup.mlm_probability, "mlm_pretrain.mlm_probability", 0, 1, low_open=True)
    _check_range(warmup.max_mlm_targets, "mlm_pretrain.max_mlm_targets", 0)
    _check_range(warmup.warmup_steps, "mlm_pretrain.warmup_steps", 0)
    _check_range(warmup.weight_decay, "mlm_pretrain.weight_decay", 0)
    _check_range(config.checkpoint.every, "checkpoint.every", 0)  # 0 = no checkpoints
    _check_range(config.checkpoint.keep, "checkpoint.keep", 1)
    _check_range(config.eval.batch_size, "eval.batch_size", 1)
    _check_range(config.logging.every, "logging.every", 0)  # 0 = no metric log
    for name in ("train_examples", "unlabeled_examples"):
        if getattr(config.task, name) < -1:
            raise ConfigError(f"config key 'task.{name}' must be -1 (all) or >= 0, got "
                              f"{getattr(config.task, name)}")
    if config.task.test_examples == 0 or config.task.test_examples < -1:
        raise ConfigError("config key 'task.test_examples' must be -1 (all) or >= 1 (the "
                          f"{config.task.eval_set} set is what the run reports), got "
                          f"{config.task.test_examples}")


def validate_stages(config: Config) -> None:
    """What each stage the run will do needs, checked by a run before any data or model
    loads (load_config alone allows, e.g., a pet config without unlabeled examples for
    encoding): a batch size or an example count of 0 would turn a stage off without a word
    (an MLM term of nothing, a distillation on nothing). Raises ConfigError naming the key."""
    needs = []
    if config.method in ("pet", "ipet") and config.pet.lm_training:
        needs.append(("the auxiliary MLM loss (pet.lm_training)", "pet.unlabeled_batch_size"))
    if distills(config):
        needs.append(("distillation (no_distillation is false)",
                      "classifier.unlabeled_batch_size"))
    if config.method == "ipet":
        needs.append(("iPET's pseudo-labeling", None))
    if config.mlm_pretrain.enabled or config.method == "mlm_pretrain":
        needs.append(("the MLM warm-up (mlm_pretrain)", None))
    for stage, batch_key in needs:
        section, name = batch_key.split(".") if batch_key else (None, None)
        if batch_key and getattr(getattr(config, section), name) < 1:
            raise ConfigError(f"config key '{batch_key}' must be >= 1 for {stage}, got "
                              f"{getattr(getattr(config, section), name)}")
        if config.task.unlabeled_examples == 0:
            raise ConfigError(f"config key 'task.unlabeled_examples' is 0, but {stage} needs "
                              "unlabeled examples: set it to -1 (all) or > 0")


def validate(config: Config) -> None:
    """Checks constraints that types alone cannot express; raises ConfigError naming the key."""
    _check_choice(config.method, METHODS, "method")
    _check_choice(config.task.eval_set, EVAL_SETS, "task.eval_set")
    _check_choice(config.model.dtype, DTYPES, "model.dtype")
    _check_choice(config.mlm_pretrain.inputs, MLM_INPUTS, "mlm_pretrain.inputs")
    _check_choice(config.pet.decoding_strategy, ("max_first", "ltr", "parallel"),
                  "pet.decoding_strategy")
    _check_choice(config.pet.multitoken_loss, ("auto", "hinge", "copa", "record", "wsc"),
                  "pet.multitoken_loss")
    verbalizer = config.task.verbalizer
    if verbalizer is not None and not isinstance(verbalizer, (dict, str)):
        raise ConfigError("config key 'task.verbalizer' must be a mapping label -> word(s) or "
                          f"the path of a verbalizer file, got {verbalizer!r}")
    # a verbalizer file alone overrides a built-in task's words; it defines no task
    custom = (config.task.definition, config.task.patterns,
              verbalizer if isinstance(verbalizer, dict) or config.task.definition else None)
    if any(part is not None for part in custom) and any(part is None for part in custom):
        raise ConfigError("a config-defined task needs all of 'task.definition', "
                          "'task.patterns' and 'task.verbalizer'")
    _check_choice(config.model.remat_policy, ("full", "dots"), "model.remat_policy")
    _check_choice(config.model.attention, ("xla", "cudnn", "pallas"), "model.attention")
    if config.model.attention == "cudnn" and config.model.attention_dropout != 0:
        raise ConfigError("model.attention 'cudnn' has no attention-probability dropout: set "
                          "'model.attention_dropout: 0' too (or use model.attention 'xla')")
    for axis in ("fsdp", "tensor"):
        if getattr(config.mesh, axis) < 1:
            raise ConfigError(f"config key 'mesh.{axis}' must be >= 1")
    if not config.pet.pattern_ids:
        raise ConfigError("config key 'pet.pattern_ids' must list at least one pattern id")
    for section in ("pet", "classifier"):
        training: TrainingConfig = getattr(config, section)
        for name in ("repetitions", "max_seq_length", "train_batch_size", "accumulation_steps"):
            if getattr(training, name) < 1:
                raise ConfigError(f"config key '{section}.{name}' must be >= 1")
        # max_steps 0: evaluate the model as it is (pet: zero-shot members; classifier: the
        # checkpoint's classifier, untrained)
        if training.max_steps < 0 and training.num_train_epochs < 1:
            raise ConfigError(f"config key '{section}.max_steps' must be >= 0 (0 = evaluate "
                              "without training), or -1 with num_train_epochs >= 1")
    _check_choice(config.pet.reduction, REDUCTIONS, "pet.reduction")
    _check_choice(config.output.save_models, SAVE_MODELS, "output.save_models")
    ipet = config.ipet
    if config.method == "ipet":
        if ipet.generations < 1:
            raise ConfigError("config key 'ipet.generations' must be >= 1")
        if len(config.pet.pattern_ids) * config.pet.repetitions < 2:
            raise ConfigError("method ipet needs at least two members: raise 'pet.pattern_ids' "
                              "or 'pet.repetitions'")
    if not 0.0 < ipet.logits_percentage <= 1.0:
        raise ConfigError("config key 'ipet.logits_percentage' must lie in (0, 1]")
    if ipet.scale_factor <= 1.0:
        raise ConfigError("config key 'ipet.scale_factor' must be > 1")
    if not 0.0 <= config.pet.alpha <= 1.0:
        raise ConfigError("config key 'pet.alpha' must lie in [0, 1]")
    if config.pet.alpha > 0.5:
        # the original PET's --alpha weighs the cloze loss instead: alpha * CE + (1 - alpha) * MLM
        warnings.warn(f"pet.alpha={config.pet.alpha} weighs the MLM loss above the cloze loss: "
                      "jaxpet follows the paper, (1 - alpha) * cloze + alpha * MLM (default 1e-4); "
                      "the original PET's --alpha is the other way round (its 0.9999 is "
                      "pet.alpha=1e-4 here)", stacklevel=2)
    if config.logging.tensorboard:
        require_tensorboard()
    if config.task.hf_dataset is not None:
        if not isinstance(config.task.hf_dataset, dict):
            raise ConfigError("config key 'task.hf_dataset' must be a mapping {path: ..., "
                              f"columns: ...}}, got {config.task.hf_dataset!r}")
        require_datasets()
    _check_choice(config.petal.score, ("llr", "ce"), "petal.score")
    for name in ("words_per_label", "num_candidates", "max_words"):
        if getattr(config.petal, name) < (1 if name == "words_per_label" else 0):
            raise ConfigError(f"config key 'petal.{name}' must be "
                              f"{'>= 1' if name == 'words_per_label' else '>= 0'}")
    if (config.mlm_pretrain.enabled or config.method == "mlm_pretrain") and (
            config.mlm_pretrain.steps < 1):
        raise ConfigError("config key 'mlm_pretrain.steps' must be >= 1 when enabled")
    validate_ranges(config)
    if config.method == "text2text":
        validate_text2text(config.text2text)


def require_tensorboard() -> None:
    """ConfigError saying how to install tensorboardX, raised before any model loads."""
    try:
        import tensorboardX  # noqa: F401 - optional: the check is whether it is installed
    except ImportError:
        raise ConfigError(TENSORBOARD_MISSING) from None


def require_datasets() -> None:
    """ConfigError saying how to install `datasets` (task.hf_dataset), before any model loads."""
    try:
        import datasets  # noqa: F401 - optional: the check is whether it is installed
    except ImportError:
        raise ConfigError(DATASETS_MISSING) from None


def _need(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key 'text2text.{key}' {message}")


def validate_text2text(section: Text2TextConfig) -> None:
    """Constraints that types cannot express; errors name the key."""
    _need(section.reader in TEXT2TEXT_READERS, "reader",
          f"must be one of {list(TEXT2TEXT_READERS)}, got {section.reader!r}")
    _need(section.format in TEXT2TEXT_FORMATS, "format",
          f"must be one of {list(TEXT2TEXT_FORMATS)}, got {section.format!r}")
    _need(section.metric in TEXT2TEXT_METRICS, "metric",
          f"must be one of {list(TEXT2TEXT_METRICS)}, got {section.metric!r}")
    if section.format == "template":
        _need(bool(section.template_inputs), "template_inputs",
               "is required with format 'template' (e.g. 'sentiment: {text}')")
        _need(bool(section.template_targets), "template_targets",
               "is required with format 'template' (e.g. '{label}')")
    for option in FORMAT_OPTIONS.get(section.format, ()):
        _need(bool(section.format_options.get(option)), f"format_options.{option}",
               f"is required with format {section.format!r}")
    if section.reader == "hf_dataset":
        _need(bool(section.reader_options.get("path")), "reader_options.path",
               "is required with reader 'hf_dataset' (a save_to_disk folder or a hub name)")
        try:
            import datasets  # noqa: F401 - optional: the check is whether it is installed
        except ImportError:
            raise ConfigError("config key 'text2text.reader' is 'hf_dataset' but the datasets "
                              "package is not installed: pip install jaxpet[datasets]") from None
    if section.reader == "glue_tsv":
        _need(section.reader_options.get("task") in ("mnli", "stsb"),
              "reader_options.task",
               "must be 'mnli' or 'stsb' with reader 'glue_tsv'")
    _need(section.repetitions == 1, "repetitions",
          "must be 1 (one model per text2text run)")
    for name in ("max_seq_length", "max_target_length", "train_batch_size", "accumulation_steps",
                 "num_beams"):
        _need(getattr(section, name) >= 1, name, "must be >= 1")
    # max_steps 0: the checkpoint is evaluated as it is (zero-shot), nothing is trained
    _need(section.max_steps >= 0 or section.num_train_epochs >= 1, "max_steps",
           "must be >= 0 (0 = evaluate without training), or -1 with num_train_epochs >= 1")
    _need(section.max_steps != 0 or bool(section.eval_file), "eval_file",
           "is required with text2text.max_steps 0 (an evaluation-only run)")
    _need(section.max_steps == 0 or bool(section.train_file), "train_file",
           "is required unless text2text.max_steps is 0 (an evaluation-only run)")
    _need(0.0 <= section.label_smoothing < 1.0, "label_smoothing", "must lie in [0, 1)")
    _need(section.z_loss >= 0.0, "z_loss", "must be >= 0")
    _need(section.max_new_tokens >= 0, "max_new_tokens", "must be >= 0")
