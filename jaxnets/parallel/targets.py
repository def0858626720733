"""Compile targets: `tpu:v5p-64`, `tpu:v5e-16`, `tpu:v6e-256`, `tpu:v4-8`, `cpu:8`.

A TPU target is an abstract topology from libtpu's compiler (no TPU needed: the XLA TPU
compiler runs on this CPU); `N` counts chips, one JAX device each (v4 and v5p run their two
TensorCores as one "megacore" device). A CPU target is N forced host devices, which must be
set up before JAX starts (`prepare`); the same code path then compiles for them.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

from jaxnets.errors import UserError
from jaxnets.parallel.chips import CHIPS, Chip

# Chip -> (topology dimensions, chip config, chips per host) for libtpu's topology names.
_TPU = {"v4": (3, "megacore", None), "v5p": (3, "default", (2, 2, 1)),
        "v5e": (2, "default", None), "v6e": (2, "default", None)}
_PATTERN = re.compile(r"^(tpu):(v4|v5p|v5e|v6e)-(\d+)$|^(cpu):(\d+)$")


@dataclasses.dataclass(frozen=True)
class Target:
    text: str            # as given: "tpu:v5p-64"
    platform: str        # "tpu" | "cpu"
    chip: Chip | None    # None for CPU
    count: int           # devices (chips)

    @property
    def topology_name(self) -> str:
        """libtpu's name for a (near-)cubic slice of `count` chips: v5p-64 -> "v5p:4x4x4"."""
        dims_count, _, _ = _TPU[self.chip.name]
        dims = [1] * dims_count
        for _ in range(int(math.log2(self.count))):
            dims[dims.index(min(dims))] *= 2
        dims = sorted(d for d in dims if d > 1) + [1] * dims.count(1)   # 2x2x1, 2x2x4, 4x8x8
        return f"{self.chip.name}:" + "x".join(map(str, dims))


def parse_target(text: str) -> Target:
    m = _PATTERN.match(text.strip())
    if not m:
        raise UserError(f"Unknown --target {text!r}: use tpu:v5p-N, tpu:v5e-N, tpu:v6e-N, "
                        "tpu:v4-N (N chips, a power of two) or cpu:N (N forced host devices), "
                        "e.g. --target tpu:v5p-64.")
    if m.group(4):
        count = int(m.group(5))
        if count < 1:
            raise UserError(f"--target {text!r}: cpu:N needs N >= 1.")
        return Target(text, "cpu", None, count)
    chip, count = CHIPS[m.group(2)], int(m.group(3))
    minimum = math.prod(_TPU[chip.name][2] or (1,))
    if count < minimum or count & (count - 1):
        raise UserError(f"--target {text!r}: {chip.name} slices come in powers of two of at least "
                        f"{minimum} chips (e.g. tpu:{chip.name}-{max(minimum, 8)}).")
    return Target(text, "tpu", chip, count)


def prepare(target: Target) -> None:
    """Before JAX starts: force N host devices for cpu:N; let libtpu load beside another
    process that has it loaded (compiling needs no exclusive access to a TPU)."""
    if target.platform == "tpu":
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        return
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        return   # checked by `devices` (a test process, say, with its own forced devices)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={target.count}".strip()


def devices(target: Target) -> list:
    """The target's devices: abstract TPU devices of its topology, or the first N CPU devices."""
    import jax

    if target.platform == "cpu":
        cpus = jax.devices("cpu")
        if len(cpus) < target.count:
            raise UserError(f"--target {target.text}: this process has {len(cpus)} CPU devices "
                            f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); run `jaxnets compile` "
                            "in a fresh process, or set --xla_force_host_platform_device_count.")
        return cpus[:target.count]
    try:
        import libtpu  # noqa: F401  (only to tell a missing extra from a failing compiler)
    except ImportError:
        raise UserError(f"--target {target.text} needs the TPU compiler: pip install -e \".[tpu]\" "
                        "(libtpu; no TPU is needed to compile).") from None
    from jax.experimental import topologies
    dims, config, per_host = _TPU[target.chip.name]
    options = {"chips_per_host_bounds": per_host} if per_host else {}
    topology = topologies.get_topology_desc(platform="tpu", topology_name=target.topology_name,
                                            chip_config_name=config, num_slices=1, **options)
    found = list(topology.devices)
    if len(found) != target.count:   # libtpu's naming changed under us: say so, never guess
        raise RuntimeError(f"{target.topology_name} gave {len(found)} devices, expected {target.count}")
    return found
