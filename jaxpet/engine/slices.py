"""Accelerator slices and which backbone fits which, from the engine's memory estimate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from jaxpet.engine.backbone_shapes import BackboneShape, count_parameters, get_backbone
from jaxpet.engine.memory import GIB, REMAT_POLICIES, MemoryEstimate, divisors, estimate_memory


@dataclass(frozen=True)
class DeviceSpec:
    """An accelerator slice as JAX sees it: devices and bytes of memory per device."""

    name: str
    num_devices: int
    device_memory_bytes: int
    hosts: int
    source: str


_TPU_DOCS = "https://cloud.google.com/tpu/docs/"
# HBM per JAX device. v4 and v5p chips are one megacore device each; v5e/v6e have one
# TensorCore per chip; v3 shows each of a chip's two cores (16 GiB each) as a device.
SLICES: dict[str, DeviceSpec] = {
    s.name: s
    for s in (
        DeviceSpec("v3-8", 8, 16 * GIB, 1, _TPU_DOCS + "v3 (32 GiB HBM per chip, 2 cores)"),
        DeviceSpec("v4-8", 4, 32 * GIB, 1, _TPU_DOCS + "v4 (32 GiB HBM2 per chip)"),
        DeviceSpec("v4-32", 16, 32 * GIB, 4, _TPU_DOCS + "v4 (32 GiB HBM2 per chip)"),
        DeviceSpec("v5e-8", 8, 16 * GIB, 1, _TPU_DOCS + "v5e (16 GB HBM2 per chip)"),
        DeviceSpec("v5e-32", 32, 16 * GIB, 8, _TPU_DOCS + "v5e (16 GB HBM2 per chip)"),
        DeviceSpec("v5p-8", 4, 95 * GIB, 1, _TPU_DOCS + "v5p (95 GB HBM2e per chip)"),
        DeviceSpec("v5p-32", 16, 95 * GIB, 4, _TPU_DOCS + "v5p (95 GB HBM2e per chip)"),
        DeviceSpec("v6e-8", 8, 32 * GIB, 1, _TPU_DOCS + "v6e (32 GB HBM per chip)"),
        DeviceSpec("H100-80GB", 1, 80 * GIB, 1, "NVIDIA H100 SXM datasheet (80 GB HBM3)"),
        DeviceSpec("8xH100-80GB", 8, 80 * GIB, 1, "NVIDIA H100 SXM datasheet (80 GB HBM3)"),
    )
}


def best_fit(backbone: BackboneShape | str, device: DeviceSpec | str, *, seq_len: int = 256,
             batch_per_device: int = 8, usable_fraction: float = 0.9,
             **kwargs) -> MemoryEstimate | None:
    """The first setup that fits: remat none, dots, full; for each, the smallest fsdp."""
    device = SLICES[device] if isinstance(device, str) else device
    budget = device.device_memory_bytes * usable_fraction
    n = device.num_devices
    for remat in REMAT_POLICIES:
        for fsdp in divisors(n):
            est = estimate_memory(backbone, batch_size=batch_per_device * n, seq_len=seq_len,
                                  remat=remat, data=n // fsdp, fsdp=fsdp, **kwargs)
            if est.total_bytes <= budget:
                return est
    return None


def fits_table(backbones: Iterable[BackboneShape | str] = ("bert-base-uncased", "roberta-large",
                                                           "albert-xxlarge-v2", "t5-3b",
                                                           "t5-11b"),
               slices: Sequence[str] = tuple(SLICES), **kwargs) -> str:
    """A markdown table: for each backbone and slice, the cheapest fitting setup or `no`."""
    slices = list(slices)
    lines = ["| backbone | params | " + " | ".join(slices) + " |",
             "|---|---:|" + "---|" * len(slices)]
    for backbone in backbones:
        shape = get_backbone(backbone)
        cells = []
        for name in slices:
            est = best_fit(shape, name, **kwargs)
            if est is None:
                cells.append("no")
                continue
            setup = [f"fsdp={est.fsdp}"] if est.fsdp > 1 else []
            setup += [f"remat={est.remat}"] if est.remat != "none" else []
            cells.append(f"{' '.join(setup) or 'yes'} ({est.total_bytes / GIB:.1f} GiB)")
        lines.append(f"| {shape.name} | {count_parameters(shape) / 1e6:,.0f}M | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)
