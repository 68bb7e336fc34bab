"""The PET train-step benchmark: jaxpet's compiled step, optionally against PyTorch references.

Every way runs the same step on the same weights and the same synthetic batch: labeled rows
(cloze loss at one mask slot) plus unlabeled rows (auxiliary MLM loss), AdamW update included.
"""

import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet.bench.profile import profile_steps_by_op
from jaxpet.bench.torch_pet import make_torch_step, mlm_labels
from jaxpet.data.masking import mask_tokens_positions
from jaxpet.engine.flops import train_step_flops
from jaxpet.engine.optim import make_optimizer
from jaxpet.engine.sharding import global_batch, make_mesh
from jaxpet.engine.training import Trainer
from jaxpet.models.config import EncoderConfig
from jaxpet.models.pretrained import init_model, save_pretrained
from jaxpet.scoring.cloze_step import make_pet_loss

_BERT = dict(model_type="bert", vocab_size=30522, type_vocab_size=2, pad_token_id=0)
_ROBERTA = dict(
    model_type="roberta",
    vocab_size=50265,
    type_vocab_size=1,
    pad_token_id=1,
    layer_norm_eps=1e-5,
    max_position_embeddings=514,
)
SIZES: dict[str, dict] = {
    "tiny": dict(
        _BERT,
        vocab_size=1024,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
    ),
    "small": dict(
        _BERT, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
    ),
    "base": dict(
        _BERT, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    "large": dict(
        _ROBERTA,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
    ),
}
NUM_LABELS = 4


def model_config(size: str, seq_len: int, dropout: float = 0.1,
                 attention_dropout: float | None = None, attention: str = "xla") -> EncoderConfig:
    """The benchmark model of `size`, room for `seq_len` positions; `dropout` on hidden states
    and, unless `attention_dropout` is given, on attention probabilities."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    attention_dropout = dropout if attention_dropout is None else attention_dropout
    fields = dict(SIZES[size], hidden_dropout_prob=dropout,
                  attention_probs_dropout_prob=attention_dropout, attention=attention)
    config = EncoderConfig(embedding_size=fields["hidden_size"], **fields)
    needed = seq_len + config.position_offset
    if config.max_position_embeddings < needed:
        config = config.replace(max_position_embeddings=needed)
    return config


@dataclass(frozen=True)
class SpecialIds:
    """Synthetic special-token ids: CLS first, SEP last, MASK at the cloze slot."""

    pad: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def for_config(cls, config: EncoderConfig) -> "SpecialIds":
        first = [i for i in range(5) if i != config.pad_token_id]
        return cls(pad=config.pad_token_id, cls=first[0], sep=first[1], mask=first[2])


def synthetic_batch(
    config: EncoderConfig, labeled: int, unlabeled: int, seq_len: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Full-length random sequences; each labeled row has one mask at a random position."""
    ids = SpecialIds.for_config(config)
    rng = np.random.default_rng(seed)

    def rows(n: int) -> np.ndarray:
        x = rng.integers(5, config.vocab_size, size=(n, seq_len), dtype=np.int32)
        x[:, 0], x[:, -1] = ids.cls, ids.sep
        return x

    input_ids = rows(labeled)
    mask_positions = rng.integers(1, seq_len - 1, size=(labeled, 1), dtype=np.int32)
    input_ids[np.arange(labeled), mask_positions[:, 0]] = ids.mask
    ones = lambda n: np.ones((n, seq_len), np.int32)  # noqa: E731
    zeros = lambda n: np.zeros((n, seq_len), np.int32)  # noqa: E731
    return {
        "input_ids": input_ids,
        "attention_mask": ones(labeled),
        "token_type_ids": zeros(labeled),
        "mask_positions": mask_positions,
        "labels": rng.integers(0, NUM_LABELS, size=labeled, dtype=np.int32),
        "unlabeled_input_ids": rows(unlabeled),
        "unlabeled_attention_mask": ones(unlabeled),
        "unlabeled_token_type_ids": zeros(unlabeled),
    }


def verbalizer_ids(config: EncoderConfig) -> np.ndarray:
    return np.arange(10, 10 + NUM_LABELS, dtype=np.int32)[:, None]


def masked_unlabeled(rng: jax.Array, batch: dict, config: EncoderConfig, max_targets: int) -> dict:
    """The MLM masking jaxpet's step draws from `rng`, materialised for the PyTorch ways."""
    ids = SpecialIds.for_config(config)
    specials = np.isin(batch["unlabeled_input_ids"], [ids.pad, ids.cls, ids.sep, ids.mask])
    inputs, positions, targets, weights = mask_tokens_positions(
        rng,
        batch["unlabeled_input_ids"],
        specials,
        vocab_size=config.vocab_size,
        mask_token_id=ids.mask,
        max_targets=max_targets,
        attention_mask=batch["unlabeled_attention_mask"],
    )
    positions, targets, weights = np.asarray(positions), np.asarray(targets), np.asarray(weights)
    seq_len = batch["unlabeled_input_ids"].shape[1]
    return dict(
        batch,
        unlabeled_input_ids=np.asarray(inputs),
        unlabeled_mlm_positions=positions,
        unlabeled_mlm_targets=targets,
        unlabeled_mlm_weights=weights,
        unlabeled_mlm_labels=mlm_labels(positions, targets, weights, seq_len),
    )


@dataclass
class WayResult:
    """Timings of one way of running the step."""

    name: str
    step_seconds: float
    compile_seconds: float
    flops_per_step: float
    loss: float
    peak_memory_bytes: int | None = None
    times: list[float] = field(default_factory=list)
    profile: dict | None = None


def _median_time(step, batch, steps: int, warmup: int) -> tuple[float, float, float, list[float]]:
    start = time.perf_counter()
    loss = step(batch)
    first = time.perf_counter() - start
    for _ in range(warmup):
        step(batch)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step(batch)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return median, max(first - median, 0.0), float(loss), times


def _device_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _batch_mesh(*batch_sizes: int):
    """A data-parallel mesh over as many devices as evenly split every batch."""
    num_devices = jax.device_count()
    size = max(d for d in range(1, num_devices + 1)
               if num_devices % d == 0 and all(b % d == 0 for b in batch_sizes))
    return make_mesh(data=size, devices=jax.devices()[:size])


def bench_jaxpet(config, batch, dtype, max_targets, steps, warmup, seed=0,
                 prng_impl: str | None = None, profile_steps: int = 0) -> WayResult:
    lm = init_model(config, head="mlm", seed=seed, dtype=dtype)
    ids = SpecialIds.for_config(config)
    loss_fn = make_pet_loss(
        lm.module.apply,
        verbalizer_ids(config),
        alpha=1e-4,
        mask_token_id=ids.mask,
        vocab_size=config.vocab_size,
        max_mlm_targets=max_targets,
        pad_id=ids.pad,
        special_token_ids=(ids.cls, ids.sep),
    )
    mesh = _batch_mesh(batch["input_ids"].shape[0], batch["unlabeled_input_ids"].shape[0])
    trainer = Trainer(loss_fn, make_optimizer(1e-5, num_steps=10_000), mesh)
    state = trainer.init(lm.params)
    device_batch = global_batch(batch, mesh)
    rng = jax.random.key(seed, impl=prng_impl)
    holder = {"state": state}

    def step(_):
        holder["state"], metrics = trainer.train_step(holder["state"], device_batch, rng)
        return jax.block_until_ready(metrics["loss"])

    median, compile_s, loss, times = _median_time(step, None, steps, warmup)
    labeled, unlabeled = batch["input_ids"].shape[0], batch["unlabeled_input_ids"].shape[0]
    seq_len = batch["input_ids"].shape[1]
    flops = train_step_flops(
        config, labeled + unlabeled, seq_len, labeled + unlabeled * max_targets
    )
    result = WayResult("jaxpet", median, compile_s, flops.total, loss, _device_peak_bytes(), times)
    if profile_steps:
        try:
            hlo = trainer.compiled_text(holder["state"], device_batch, rng)
            result.profile = profile_steps_by_op(step, profile_steps, hlo)
        except Exception as error:  # noqa: BLE001  (a profiler that fails keeps the timings)
            result.profile = {"error": f"{type(error).__name__}: {error}"}
    return result


def bench_torch(config, batch, way, dtype, max_targets, steps, warmup, seed=0) -> WayResult:
    # torch is not a jaxpet dependency: only the PyTorch reference way needs it
    import torch
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(init_model(config, head="mlm", seed=seed), folder)
        model = AutoModelForMaskedLM.from_pretrained(folder).to(device)
    masked = masked_unlabeled(jax.random.key(seed), batch, config, max_targets)
    on_device = {k: torch.as_tensor(np.array(v)).to(device) for k, v in masked.items()}
    step = make_torch_step(model, way, verbalizer_ids(config), 1e-4, 1e-5)
    autocast = way == "fused" and jnp.dtype(dtype) == jnp.bfloat16
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def run(b):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = step(b)
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    median, compile_s, loss, times = _median_time(run, on_device, steps, warmup)
    labeled, unlabeled = batch["input_ids"].shape[0], batch["unlabeled_input_ids"].shape[0]
    seq_len = batch["input_ids"].shape[1]
    rows = labeled + unlabeled
    head_positions = rows * seq_len if way == "original" else labeled + unlabeled * max_targets
    flops = train_step_flops(config, rows, seq_len, head_positions)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    name = {"original": "torch (a) original PET", "fused": "torch (b) jaxpet's algorithm"}[way]
    return WayResult(name, median, compile_s, flops.total, loss, peak, times)


def run_train_benchmark(
    size: str = "small",
    seq_len: int = 128,
    batch_size: int = 8,
    unlabeled_batch_size: int = 8,
    dtype: str = "float32",
    steps: int = 10,
    warmup: int = 2,
    compare_torch: bool = False,
    max_mlm_targets: int | None = None,
    seed: int = 0,
    dropout: float = 0.1,
    prng_impl: str | None = None,
    profile_steps: int = 0,
    attention_dropout: float | None = None,
    attention: str = "xla",
) -> dict:
    """Runs jaxpet's step (and the PyTorch ways with compare_torch) and returns a report dict.

    prng_impl: the key type of jaxpet's dropout and masking bits (None: JAX's default,
    threefry2x32). profile_steps > 0 traces that many extra jaxpet steps with jax.profiler and
    adds the time per op category (jaxpet.bench.profile) to the report.
    """
    if size == "large" and jax.devices()[0].platform == "cpu":
        raise ValueError("size 'large' (RoBERTa-large) is meant for a GPU or TPU")
    config = model_config(size, seq_len, dropout, attention_dropout, attention)
    max_targets = max_mlm_targets or max(1, int(np.ceil(0.15 * seq_len)))
    batch = synthetic_batch(config, batch_size, unlabeled_batch_size, seq_len, seed)
    compute_dtype = jnp.dtype(dtype)
    ways = [bench_jaxpet(config, batch, compute_dtype, max_targets, steps, warmup, seed,
                         prng_impl, profile_steps)]
    if compare_torch:
        ways.append(
            bench_torch(config, batch, "original", compute_dtype, max_targets, steps, warmup, seed)
        )
        ways.append(
            bench_torch(config, batch, "fused", compute_dtype, max_targets, steps, warmup, seed)
        )
    rows = batch_size + unlabeled_batch_size
    report = {
        "benchmark": "train",
        "size": size,
        "seq_len": seq_len,
        "labeled_batch": batch_size,
        "unlabeled_batch": unlabeled_batch_size,
        "dtype": compute_dtype.name,
        "max_mlm_targets": max_targets,
        "dropout": dropout,
        "attention_dropout": config.attention_probs_dropout_prob,
        "attention": attention,
        "prng_impl": prng_impl or jax.config.jax_default_prng_impl,
        "device": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "ways": [],
    }
    for way in ways:
        report["ways"].append(
            {
                "name": way.name,
                "step_seconds": way.step_seconds,
                "compile_seconds": way.compile_seconds,
                "examples_per_s": rows / way.step_seconds,
                "tokens_per_s": rows * seq_len / way.step_seconds,
                "flops_per_step": way.flops_per_step,
                "achieved_flops_per_s": way.flops_per_step / way.step_seconds,
                "loss": way.loss,
                "peak_memory_bytes": way.peak_memory_bytes,
            }
        )
    if compare_torch:
        jax_s = ways[0].step_seconds
        report["speedup_vs_torch_original"] = ways[1].step_seconds / jax_s
        report["speedup_vs_torch_fused"] = ways[2].step_seconds / jax_s
    if ways[0].profile is not None:
        report["jaxpet_profile"] = ways[0].profile
    return report
