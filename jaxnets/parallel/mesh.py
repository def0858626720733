"""Mesh construction from config and the shardings the trainer needs.

Parameters are replicated unless they carry logical axis names (`nnx.with_partitioning`)
that `config.sharding_rules` maps to mesh axes; batches are sharded on their leading axis
over the data-parallel axes ("data", and "fsdp" when present).
"""
from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxnets.errors import UserError

DATA_AXES = ("data", "fsdp")


def maybe_initialize_distributed() -> None:
    """Join a multi-controller job when launched as one (env set by SLURM/launchers or by hand).

    `JAXNETS_COORDINATOR=host:port JAXNETS_NUM_PROCESSES=N JAXNETS_PROCESS_ID=i` on each host,
    or nothing at all on a cluster that jax.distributed auto-detects (SLURM, TPU pods).
    """
    # Must run before anything touches the backend (even jax.devices()).
    if "JAXNETS_COORDINATOR" not in os.environ or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=os.environ["JAXNETS_COORDINATOR"],
        num_processes=int(os.environ["JAXNETS_NUM_PROCESSES"]),
        process_id=int(os.environ["JAXNETS_PROCESS_ID"]),
    )


def make_mesh(axes: dict[str, int], num_devices: int = 0) -> Mesh:
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise UserError(f"mesh_devices={num_devices} but only {len(devices)} devices are present.")
        devices = devices[:num_devices]
    names = tuple(axes)
    sizes = [int(axes[n]) for n in names]
    if sizes.count(-1) > 1:
        raise UserError(f"Mesh {dict(axes)}: at most one axis may be -1.")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % fixed:
            raise UserError(f"Mesh {dict(axes)} does not divide the {len(devices)} devices present.")
        sizes[sizes.index(-1)] = len(devices) // fixed
    if math.prod(sizes) != len(devices):
        raise UserError(f"Mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
                        f"{len(devices)} are present.")
    return Mesh(np.asarray(devices).reshape(sizes), names)


def data_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in DATA_AXES if a in mesh.axis_names)


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in data_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(data_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(mesh: Mesh, abstract_state, rules) -> object:
    """NamedShardings for an abstract nnx.State: logical names mapped by `rules`, else replicated."""
    from flax import nnx

    rule_map = dict(rules)
    specs = nnx.get_partition_spec(abstract_state)

    def to_sharding(spec):
        if not isinstance(spec, P):
            return replicated(mesh)
        axes = [rule_map.get(name) if name is not None else None for name in spec]
        return NamedSharding(mesh, P(*axes))

    return jax.tree.map(to_sharding, specs, is_leaf=lambda x: isinstance(x, P) or x is None)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assemble this process's slice of the batch into global arrays sharded over data."""
    out = {}
    for key, value in local.items():
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
