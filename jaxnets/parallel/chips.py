"""What one accelerator chip can do: peak dense bf16 FLOP/s, HBM bytes and HBM bandwidth.

The one table the trainer (train/mfu), `jaxnets compile` (fits, roofline) and the benchmarks
read. Figures are per chip as the vendor publishes them (a TPU v4/v5p chip is one JAX device:
its two TensorCores run as one "megacore" device).
"""
from __future__ import annotations

import dataclasses

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str                 # the name `--target` uses (tpu:v5p-64 -> "v5p")
    peak_flops: float         # dense bf16 FLOP/s per chip
    hbm_bytes: int            # HBM per chip
    hbm_bandwidth: float      # HBM bytes/s per chip


CHIPS = {
    # https://cloud.google.com/tpu/docs/v4 : 275 TFLOP/s bf16, 32 GiB HBM2, 1,200 GB/s
    "v4": Chip("v4", 275e12, 32 * GiB, 1200e9),
    # https://cloud.google.com/tpu/docs/v5e : 197 TFLOP/s bf16, 16 GiB HBM2, 819 GB/s
    "v5e": Chip("v5e", 197e12, 16 * GiB, 819e9),
    # https://cloud.google.com/tpu/docs/v5p : 459 TFLOP/s bf16, 95 GiB HBM2e, 2,765 GB/s
    "v5p": Chip("v5p", 459e12, 95 * GiB, 2765e9),
    # https://cloud.google.com/tpu/docs/v6e : 918 TFLOP/s bf16, 32 GiB HBM, 1,640 GB/s
    "v6e": Chip("v6e", 918e12, 32 * GiB, 1640e9),
    # https://www.nvidia.com/en-us/data-center/h100/ (SXM): 989 TFLOP/s dense bf16, 80 GB, 3.35 TB/s
    "H100": Chip("H100", 989e12, 80 * 10**9, 3.35e12),
    # https://www.nvidia.com/en-us/data-center/h200/ : 989 TFLOP/s dense bf16, 141 GB, 4.8 TB/s
    "H200": Chip("H200", 989e12, 141 * 10**9, 4.8e12),
    # https://www.nvidia.com/en-us/data-center/a100/ (SXM 80 GB): 312 TFLOP/s bf16, 2,039 GB/s
    "A100": Chip("A100", 312e12, 80 * 10**9, 2.039e12),
}

# jax's `device_kind` -> table entry, first match wins (substring, case-sensitive). Cloud TPU
# v5e and v6e report "TPU v5 lite" / "TPU v6 lite"; v5p reports "TPU v5p" (older libtpu: "TPU v5").
_KINDS = (("TPU v6", "v6e"), ("TPU v5 lite", "v5e"), ("TPU v5e", "v5e"), ("TPU v5", "v5p"),
          ("TPU v4", "v4"), ("H200", "H200"), ("H100", "H100"), ("A100", "A100"))


def chip_of(device_kind: str) -> Chip | None:
    """The chip a device kind names, or None (CPUs and unlisted accelerators)."""
    return next((CHIPS[name] for pattern, name in _KINDS if pattern in device_kind), None)


def peak_flops(device_kind: str) -> float | None:
    chip = chip_of(device_kind)
    return chip.peak_flops if chip else None
