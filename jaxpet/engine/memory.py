"""Per-device memory estimate for training a backbone on a mesh, checked before compilation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from jaxpet.engine.backbone_shapes import BackboneShape, get_backbone, parameter_shapes

GIB = 1024**3
REMAT_POLICIES = ("none", "dots", "full")
_DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


def _shard_factor(tensor_shape: tuple[int, ...], fsdp: int, tensor: int) -> int:
    """How many ways a parameter is split: FSDP on its largest divisible dim, tensor on another.

    Vectors (biases, norm scales) are counted whole: under 1% of any real backbone.
    """
    if len(tensor_shape) < 2:
        return 1
    dims = sorted(range(len(tensor_shape)), key=lambda d: -tensor_shape[d])
    fsdp_dim = next((d for d in dims if tensor_shape[d] % fsdp == 0), None)
    factor = fsdp if fsdp_dim is not None else 1
    tensor_dim = next((d for d in dims if d != fsdp_dim and tensor_shape[d] % tensor == 0), None)
    return factor * (tensor if tensor_dim is not None else 1)


def _block_activations(attentions: list[tuple[int, int]], shape: BackboneShape, remat: str,
                       c_bytes: int, dropout: bool, fused_attention: bool) -> tuple[float, float]:
    """Bytes one transformer layer keeps per example: (replicated, split by `tensor`).

    `attentions` lists (query length, key length) of the layer's attention sub-blocks.
    `none` is calibrated against XLA's buffer assignment (docs/scale.md): per sub-block a
    residual sum, the norm's copies (LayerNorm: centred and normalised; T5's RMSNorm:
    normalised) and the sub-block's output; q, k, v and the attention context; the FFN
    pre-activation, activation and, for GELU, its inner term; and score-sized tensors: the
    scores and fp32 exponentials and probabilities, or, with attention dropout, scores, fp32
    probabilities, the keep mask, the dropped fp32 probabilities and their cast. A fused
    attention kernel (cuDNN flash attention) keeps no score-sized tensor.
    `dots` (jax.checkpoint_policies.dots_with_no_batch_dims_saveable) keeps the layer input
    and the outputs of weight matmuls; `full` (nothing_saveable) keeps the layer input.
    """
    H, A, heads, q_len = shape.hidden_size, shape.attention_width, shape.num_heads, attentions[0][0]
    ffn_in = shape.intermediate_size * (2 if shape.gated_ffn else 1)
    if remat == "full":
        return q_len * H * c_bytes, 0.0
    if remat == "dots":
        split = sum(q * A + 2 * k * A for q, k in attentions) + q_len * ffn_in
        return q_len * H * (2 + len(attentions)) * c_bytes, split * c_bytes
    sub_blocks = len(attentions) + 1
    per_norm = 3 if shape.family == "t5" else 4
    replicated = per_norm * sub_blocks * q_len * H * c_bytes
    replicated += sub_blocks * q_len * H if dropout else 0
    split = c_bytes * sum(2 * q * A + 2 * k * A for q, k in attentions)
    gelu = shape.family != "t5" or shape.gated_ffn  # T5 v1.0 uses ReLU: no inner term
    split += c_bytes * q_len * (ffn_in + shape.intermediate_size * (2 if gelu else 1))
    if not fused_attention:
        # Softmax runs in fp32 whatever the compute dtype.
        per_score = (2 * c_bytes + 9) if dropout else (c_bytes + 8)
        split += sum(heads * q * k * per_score for q, k in attentions)
    return replicated, split


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one training step; the inputs are kept so variants can be tried."""

    backbone: BackboneShape
    batch_size: int
    seq_len: int
    target_len: int
    remat: str
    compute_dtype: str
    param_dtype: str
    data: int
    fsdp: int
    tensor: int
    head_positions: int
    dropout: bool
    fused_attention: bool
    num_parameters: int
    params_bytes: int
    optimizer_bytes: int
    gradients_bytes: int
    activations_bytes: int
    transient_bytes: int
    inputs_bytes: int

    @property
    def num_devices(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def state_bytes(self) -> int:
        """Parameters plus optimizer state: what lives on the device between steps."""
        return self.params_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> int:
        return (self.state_bytes + self.gradients_bytes + self.activations_bytes
                + self.transient_bytes + self.inputs_bytes)

    def replace(self, **changes) -> MemoryEstimate:
        """Re-estimate with some inputs changed (batch_size, remat, fsdp, data, ...)."""
        keys = ("batch_size", "seq_len", "target_len", "remat", "compute_dtype", "param_dtype",
                "data", "fsdp", "tensor", "head_positions", "dropout", "fused_attention")
        kwargs = {k: getattr(self, k) for k in keys} | changes
        return estimate_memory(self.backbone, **kwargs)

    def breakdown(self) -> dict[str, int]:
        return {"params": self.params_bytes, "optimizer": self.optimizer_bytes,
                "gradients": self.gradients_bytes, "activations": self.activations_bytes,
                "transient": self.transient_bytes, "inputs": self.inputs_bytes,
                "total": self.total_bytes}

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in self.breakdown().items())
        return (f"{self.backbone.name} ({self.num_parameters / 1e6:.0f}M params), batch "
                f"{self.batch_size}, seq {self.seq_len}, remat={self.remat}, mesh data="
                f"{self.data} fsdp={self.fsdp} tensor={self.tensor}: GiB per device: {parts}")


def _dtype_bytes(dtype: str) -> int:
    key = str(dtype).lower().removeprefix("jnp.").removeprefix("numpy.")
    if key not in _DTYPE_BYTES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[key]


def estimate_memory(
    backbone: BackboneShape | str, *, batch_size: int, seq_len: int, target_len: int = 128,
    remat: str = "none", compute_dtype: str = "bfloat16", param_dtype: str = "float32",
    data: int = 1, fsdp: int = 1, tensor: int = 1, head_positions: int | None = None,
    dropout: bool = True, fused_attention: bool = False,
) -> MemoryEstimate:
    """Estimate per-device bytes of an AdamW training step.

    batch_size is global; it is split over `data * fsdp` (the batch axes), and the tensor
    axis splits attention heads and FFN width. `head_positions` is how many positions per
    example the MLM head runs on (default: 15% of seq_len, as jaxpet runs the head only at
    loss positions); T5 runs its head on all `target_len` decoder positions. `dropout` adds
    the keep masks (jaxpet spells attention out when it drops attention probabilities);
    `fused_attention` says attention runs as a fused kernel that stores no [S, S] scores
    (e.g. jax.nn.dot_product_attention with implementation="cudnn" on GPU).
    AdamW keeps two fp32 moments per parameter, plus an fp32 master copy when parameters
    are stored in a 16-bit dtype; gradients have the parameters' dtype and sharding.
    """
    shape = get_backbone(backbone)
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}: use one of {', '.join(REMAT_POLICIES)}")
    for key, value in (("mesh.data", data), ("mesh.fsdp", fsdp), ("mesh.tensor", tensor),
                       ("batch_size", batch_size), ("seq_len", seq_len)):
        if int(value) < 1:
            raise ValueError(f"{key}={value} must be a positive integer")
    if batch_size % (data * fsdp):
        raise ValueError(f"batch_size={batch_size} is not divisible by mesh.data * mesh.fsdp = "
                         f"{data * fsdp}: the batch is split over both axes")
    p_bytes, c_bytes = _dtype_bytes(param_dtype), _dtype_bytes(compute_dtype)
    shapes = parameter_shapes(shape)
    n_params = sum(math.prod(s) for s in shapes)
    local_params = sum(math.prod(s) / _shard_factor(s, fsdp, tensor) for s in shapes)
    params = local_params * p_bytes
    optimizer = local_params * (8 + (4 if p_bytes < 4 else 0))
    gradients = local_params * p_bytes

    per_device = batch_size // (data * fsdp)
    S, T, H, V = seq_len, target_len, shape.hidden_size, shape.vocab_size
    # (number of layers, their attention sub-blocks as (query length, key length))
    layers: list[tuple[int, list[tuple[int, int]]]]
    if shape.family == "t5":
        layers = [(shape.num_layers, [(S, S)]), (shape.num_decoder_layers, [(T, T), (T, S)])]
        head_len, embed = T, (S + T) * H
    else:
        layers = [(shape.num_layers, [(S, S)])]
        head_len = head_positions if head_positions is not None else max(1, math.ceil(0.15 * S))
        embed = S * (shape.embedding_size or H) + S * H
    saved = embed * c_bytes + 2 * head_len * V * 4  # fp32 logits and their log-softmax
    worst_layer = 0.0
    for count, attentions in layers:
        rep, split = _block_activations(attentions, shape, remat, c_bytes, dropout,
                                        fused_attention)
        saved += count * (rep + split / tensor)
        if remat != "none":  # the backward pass rebuilds one layer's full activations
            rep, split = _block_activations(attentions, shape, "none", c_bytes, dropout,
                                            fused_attention)
            worst_layer = max(worst_layer, rep + split / tensor)
    activations = per_device * saved
    transient = per_device * worst_layer
    # Weights are used in compute dtype: a converted local copy, or under FSDP, gathered
    # layers in flight (two: the one in use and the one being prefetched).
    if fsdp > 1:
        per_layer = n_params / max(1, shape.num_layers + shape.num_decoder_layers)
        transient += 2 * per_layer * c_bytes / tensor
    elif c_bytes != p_bytes:
        transient += local_params * c_bytes
    inputs = per_device * (S + T if shape.family == "t5" else S) * 4 * 3  # ids, mask, types
    return MemoryEstimate(
        shape, batch_size, seq_len, target_len, remat, compute_dtype, param_dtype, data, fsdp,
        tensor, head_len, dropout, fused_attention, n_params, int(params), int(optimizer),
        int(gradients), int(activations), int(transient), int(inputs))


class DoesNotFit(ValueError):
    """The estimate says a training step will not fit in device memory; `suggestions` holds
    each way to fit as the `key=value` config overrides that apply it."""

    def __init__(self, message: str, suggestions: list[list[str]] = ()):
        super().__init__(message)
        self.suggestions = [list(s) for s in suggestions]


def _suggestions(estimate: MemoryEstimate, budget: float, section: str,
                 batch_sizes: dict[str, int], accumulation_steps: int
                 ) -> list[tuple[list[str], str]]:
    """(config overrides, why) for each change that makes the estimate fit."""
    fits = lambda e: e.total_bytes <= budget
    tips = []
    batch_devices = estimate.data * estimate.fsdp
    for fsdp in divisors(batch_devices):
        if fsdp > estimate.fsdp:
            alt = estimate.replace(fsdp=fsdp, data=batch_devices // fsdp)
            if fits(alt):
                tips.append(([f"mesh.fsdp={fsdp}", f"mesh.data={batch_devices // fsdp}"],
                             f"shard parameters wider ({alt.total_bytes / GIB:.1f} GiB)"))
                break
    for policy in REMAT_POLICIES[REMAT_POLICIES.index(estimate.remat) + 1:]:
        if policy == "dots" and estimate.backbone.family == "t5":
            continue  # T5 rematerialises whole blocks only (model.remat_policy is ignored)
        alt = estimate.replace(remat=policy)
        if fits(alt):
            overrides = ["model.remat=true"]
            if estimate.backbone.family != "t5":
                overrides.append(f"model.remat_policy={policy}")
            tips.append((overrides, f"rematerialise ({policy}; {alt.total_bytes / GIB:.1f} GiB)"))
            break
    batch, factor = estimate.batch_size, 1
    while batch % 2 == 0 and batch // 2 >= batch_devices and batch // 2 % batch_devices == 0:
        batch, factor = batch // 2, factor * 2
        if any(size % factor for size in batch_sizes.values()):
            break  # the config's batch sizes cannot be divided evenly any further
        alt = estimate.replace(batch_size=batch)
        if fits(alt):
            overrides = [f"{section}.{key}={size // factor}" for key, size in batch_sizes.items()]
            overrides.append(f"{section}.accumulation_steps={accumulation_steps * factor}")
            tips.append((overrides, "smaller micro-batch, same effective batch "
                                    f"({alt.total_bytes / GIB:.1f} GiB)"))
            break
    if not tips:
        state = estimate.replace(fsdp=batch_devices, data=1, remat="full", batch_size=batch_devices)
        whole = (state.state_bytes + state.gradients_bytes) * estimate.num_devices
        need = math.ceil(whole / max(budget, 1))
        tips.append(([], f"nothing tried on {estimate.num_devices} devices fits; parameters, "
                         f"gradients and optimizer state alone need more than {max(need, 1) - 1} "
                         "devices of this size with full FSDP; use a larger slice or a smaller "
                         "backbone"))
    return tips


def divisors(n: int) -> list[int]:
    """Every d that divides n: the ways to split n devices between two mesh axes."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_fits(estimate: MemoryEstimate, device_memory_bytes: float,
               usable_fraction: float = 0.9, section: str = "pet",
               batch_sizes: dict[str, int] | None = None,
               accumulation_steps: int = 1) -> MemoryEstimate:
    """Raise `DoesNotFit` naming what to change when the estimate exceeds device memory.

    `usable_fraction` leaves room for XLA's own buffers and fragmentation. The advice names
    config keys of `section` (pet, classifier, text2text): `batch_sizes` maps its batch-size
    keys to their values, which together make the estimate's batch (default: all of it is
    `train_batch_size`). Returns the estimate unchanged when it fits, so calls can be chained.
    """
    budget = device_memory_bytes * usable_fraction
    if estimate.total_bytes <= budget:
        return estimate
    sizes = batch_sizes or {"train_batch_size": estimate.batch_size}
    tips = _suggestions(estimate, budget, section, sizes, accumulation_steps)
    lines = "\n  - ".join(f"{why}: {' '.join(overrides)}" if overrides else why
                          for overrides, why in tips)
    raise DoesNotFit(
        f"estimated {estimate.total_bytes / GIB:.1f} GiB per device exceeds "
        f"{budget / GIB:.1f} GiB ({usable_fraction:.0%} of {device_memory_bytes / GIB:.1f} GiB) "
        f"for {estimate.describe()}.\nTo fit, try one of:\n  - {lines}",
        [overrides for overrides, _ in tips if overrides])


def device_memory_bytes(device=None) -> int | None:
    """Bytes a JAX device may allocate (`memory_stats()['bytes_limit']`), None if unknown."""
    import jax  # deferred: the estimate is arithmetic, and slices.fits_table runs without JAX

    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None

