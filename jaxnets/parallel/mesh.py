"""Mesh construction from config and the shardings the trainer needs.

Every parameter carries logical axis names (jaxnets.nn.partitioning); `config.sharding_rules`
maps them to mesh axes (FSDP: "embed"/"conv_out" -> "fsdp"; tensor parallelism: "heads", "mlp",
"vocab" -> "tensor"); a dimension its mesh axes do not divide stays whole. Batches are sharded
on their leading axis over the data-parallel axes ("data" and "fsdp").
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxnets.errors import UserError

DATA_AXES = ("data", "fsdp")


def maybe_initialize_distributed() -> str:
    """Join a multi-controller job if this process is part of one (jaxnets.parallel.distributed)."""
    from jaxnets.parallel.distributed import initialize
    return initialize()


AXIS_ORDER = ("data", "fsdp", "tensor")   # outer to inner: "tensor" neighbours stay within a host


def mesh_shape(axes: dict[str, int], num_devices: int) -> dict[str, int]:
    """Axis sizes for `num_devices` devices: -1 fills the rest; order data, fsdp, tensor, others."""
    names = sorted(axes, key=lambda n: (AXIS_ORDER.index(n) if n in AXIS_ORDER else len(AXIS_ORDER), n))
    sizes = [int(axes[n]) for n in names]
    if sizes.count(-1) > 1:
        raise UserError(f"Mesh {dict(axes)}: at most one axis may be -1.")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"Mesh {dict(axes)}: axis sizes must be positive (or -1 for the rest).")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise UserError(f"Mesh {dict(axes)} does not divide the {num_devices} devices present "
                            f"(the fixed axes need a multiple of {fixed}).")
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise UserError(f"Mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
                        f"{num_devices} are in use. Change --config.mesh.* (one axis may be -1) "
                        "or --config.mesh_devices.")
    return dict(zip(names, sizes))


def make_mesh(axes: dict[str, int], num_devices: int = 0, devices: list | None = None) -> Mesh:
    """A mesh over the first `num_devices` of `devices` (default jax.devices(); 0: all) with
    Auto axis types.

    Auto (not jax.make_mesh's default Explicit) so that XLA's partitioner places every op from
    the parameter and batch shardings, and custom kernels need shard_map only where they are
    called. `mesh_devices=1` means one device, whatever the axes say (the reference run).
    """
    every = list(devices) if devices is not None else jax.devices()
    devices = every
    if num_devices:
        if num_devices > len(devices):
            raise UserError(f"mesh_devices={num_devices} but only {len(devices)} devices are present.")
        devices = devices[:num_devices]
    if len(devices) == 1:
        axes = {name: 1 for name in axes} or {"data": 1}
    shape = mesh_shape(axes, len(devices))
    types = (jax.sharding.AxisType.Auto,) * len(shape)
    if len(devices) == len(every):
        # jax.make_mesh orders devices by their physical topology (ICI rings, hosts).
        return jax.make_mesh(tuple(shape.values()), tuple(shape), axis_types=types,
                             devices=every)
    return Mesh(np.asarray(devices).reshape(tuple(shape.values())), tuple(shape), axis_types=types)


def data_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in DATA_AXES if a in mesh.axis_names)


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in data_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(data_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _logical_names(variable) -> tuple | None:
    names = variable.get_metadata().get("out_sharding") if hasattr(variable, "get_metadata") else None
    return tuple(names) if names else None


def state_layout(mesh: Mesh, abstract_state, rules) -> list[dict]:
    """One row per state array: path, shape, dtype, logical names, PartitionSpec and notes."""
    from flax import nnx

    from jaxnets.nn.partitioning import resolve
    rows = []
    for path, var in nnx.to_flat_state(abstract_state):
        value = var.get_value() if hasattr(var, "get_value") else var
        shape = tuple(getattr(value, "shape", ()))
        names = _logical_names(var)
        if names is not None and len(names) != len(shape):
            raise ValueError(f"{'/'.join(map(str, path))}: {len(names)} logical names {names} "
                             f"for shape {shape}")
        spec, notes = resolve(names, shape, mesh, rules) if names else (P(), [])
        rows.append({"path": "/".join(map(str, path)), "shape": shape,
                     "dtype": str(getattr(value, "dtype", "")), "kind": type(var).__name__,
                     "names": names, "spec": spec, "notes": notes})
    return rows


def state_shardings(mesh: Mesh, abstract_state, rules) -> object:
    """NamedShardings for an abstract nnx.State: logical names mapped by `rules`, else replicated."""
    from flax import nnx

    specs = iter([row["spec"] for row in state_layout(mesh, abstract_state, rules)])
    flat = nnx.to_flat_state(abstract_state)
    shardings = [(path, var.replace(NamedSharding(mesh, next(specs)))) for path, var in flat]
    return nnx.from_flat_state(shardings)


def shard_count(mesh, spec: P) -> int:
    """Into how many pieces `spec` cuts an array on `mesh` (its per-device share is 1/that)."""
    return math.prod(math.prod(mesh.shape[a] for a in ((e,) if isinstance(e, str) else e))
                     for e in spec if e is not None)


def layout_bytes(mesh: Mesh, rows: list[dict]) -> tuple[int, int]:
    """(global bytes, bytes per device) of a `state_layout`: what `state_bytes` reads from the
    allocated arrays, known before anything is allocated (a PRNG key counts its 8 data bytes)."""
    total = per_device = 0
    for r in rows:
        itemsize = np.dtype(r["dtype"]).itemsize if r["dtype"] and "key" not in r["dtype"] else 8
        nbytes = math.prod(r["shape"]) * itemsize
        total, per_device = total + nbytes, per_device + nbytes // shard_count(mesh, r["spec"])
    return total, per_device


def format_layout(mesh: Mesh, rows: list[dict]) -> str:
    """The table `jaxnets train --print_layout` prints: where every array of the state lives."""
    lines = [f"mesh {dict(mesh.shape)} over {mesh.size} devices"]
    width = max(len(r["path"]) for r in rows)
    total, per_device = layout_bytes(mesh, rows)
    for r in rows:
        names = "(" + ", ".join(str(n) for n in r["names"]) + ")" if r["names"] else "-"
        spec = "P(" + ", ".join(repr(e) for e in r["spec"]) + ")"
        note = ("   !! " + "; ".join(r["notes"])) if r["notes"] else ""
        lines.append(f"{r['path']:<{width}}  {str(r['shape']):<18} {names:<28} {spec:<24}{note}")
    lines.append(f"state: {total / 2**20:.2f} MiB in all, {per_device / 2**20:.2f} MiB per device")
    return "\n".join(lines)


def state_bytes(state) -> tuple[int, int]:
    """(global bytes, largest per-device bytes) of a state's arrays, read from their shards.

    Every process sees only its own devices' shards; the per-device maximum is taken over all
    processes (a collective: every process must call this).
    """
    total, per_device = 0, {}
    for leaf in jax.tree.leaves(state):
        if not isinstance(leaf, jax.Array):
            continue
        data = jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf
        total += data.size * data.dtype.itemsize
        for shard in data.addressable_shards:
            per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
    largest = max(per_device.values(), default=0)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        largest = int(np.max(multihost_utils.process_allgather(np.int64(largest))))
    return int(total), int(largest)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assemble this process's slice of the batch into global arrays sharded over data."""
    out = {}
    for key, value in local.items():
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
