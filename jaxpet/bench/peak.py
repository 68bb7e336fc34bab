"""Measured dense-matmul FLOP/s of the default device, the yardstick for achieved FLOP/s."""

import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s, no sparsity).
DATASHEET_BF16_PEAK = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def datasheet_peak(device: jax.Device | None = None) -> float | None:
    """The datasheet dense bf16 peak of a known accelerator, None for CPUs and unknown chips."""
    kind = (device or jax.devices()[0]).device_kind
    for name, flops in DATASHEET_BF16_PEAK.items():
        if name.lower() in kind.lower():
            return flops
    return None


def measure_matmul_peak(size: int | None = None, dtype=jnp.float32, repeats: int = 5) -> dict:
    """Median FLOP/s of a jitted [n,n] @ [n,n] matmul in `dtype` (2 n^3 FLOPs each)."""
    device = jax.devices()[0]
    if size is None:
        size = 2048 if device.platform == "cpu" else 8192
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((size, size)), dtype)
    b = jnp.asarray(rng.standard_normal((size, size)), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {
        "device": device.device_kind,
        "dtype": jnp.dtype(dtype).name,
        "size": size,
        "seconds": seconds,
        "flops_per_s": 2.0 * size**3 / seconds,
        "datasheet_flops_per_s": datasheet_peak(device),
    }
