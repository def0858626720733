"""Device meshes from config, and the arrays that live on them (global batches, state bytes).

What lives where on a mesh (parameters, activations, batches) is decided by one rules table in
jaxnets.parallel.sharding.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding

from jaxnets.errors import UserError
from jaxnets.parallel import distributed



def maybe_initialize_distributed() -> str:
    """Join a multi-controller job if this process is part of one (jaxnets.parallel.distributed)."""
    return distributed.initialize()


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
    Auto axis types (`jaxnets compile` passes a TPU slice's abstract devices).

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
        try:
            return jax.make_mesh(tuple(shape.values()), tuple(shape), axis_types=types,
                                 devices=every)
        except NotImplementedError:
            # A logical axis that is no product of whole physical axes (fsdp=8 x tensor=8 on a
            # v5p 4x4x4 slice): split a physical axis between two logical ones. The rings are
            # then shared, which is slower than a layout that follows the topology, not wrong.
            grid = mesh_utils.create_device_mesh(tuple(shape.values()), every,
                                                 allow_split_physical_axes=True)
            return Mesh(grid, tuple(shape), axis_types=types)
    return Mesh(np.asarray(devices).reshape(tuple(shape.values())), tuple(shape), axis_types=types)


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
        largest = int(np.max(multihost_utils.process_allgather(np.int64(largest))))
    return int(total), int(largest)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assemble this process's slice of the batch into global arrays sharded over data."""
    out = {}
    for key, value in local.items():
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def check_input_feed(mesh: Mesh, rules) -> None:
    """UserError unless the input feed can serve `mesh`: every process reads its own 1/P share
    of each global batch (jaxnets.data's per-process share, `global_batch`), so the rows each
    device holds (the "batch" rule's mesh axes) must come from one process only, and every
    process must hold as many rows. An axis outside the batch rule (tensor, or fsdp under rules
    that do not split the batch over it) that spans processes breaks this: devices of two
    processes would hold the same rows, read differently by each."""
    if jax.process_count() == 1:
        return
    from_rules = dict(rules).get("batch")
    batch_axes = (from_rules,) if isinstance(from_rules, str) else tuple(from_rules or ())
    problem = input_feed_problem(np.vectorize(lambda d: d.process_index)(mesh.devices),
                                 tuple(mesh.axis_names), batch_axes)
    if problem:
        raise UserError(
            f"Mesh {dict(mesh.shape)} cannot be fed: {problem}. The rule: each process reads its "
            f"own share of every batch, so a mesh axis that does not split the batch (the "
            f"'batch' sharding rule: {batch_axes}) must stay within one process. Make such axes "
            f"at most the devices of one process ({jax.local_device_count()}), e.g. "
            f"--config.mesh.tensor=1, or add the axis to the batch rule.")


def input_feed_problem(process_ids: np.ndarray, axis_names: tuple, batch_axes: tuple) -> str:
    """"" if each batch shard (a point of the batch axes) lives on one process and every process
    holds as many batch shards; else what is wrong. `process_ids`: the mesh's devices' process
    indices, shaped as the mesh."""
    batch_dims = [i for i, n in enumerate(axis_names) if n in batch_axes]
    other = [i for i in range(len(axis_names)) if i not in batch_dims]
    # [batch shard, devices holding it]: every device of one shard must be in one process.
    grouped = np.transpose(process_ids, batch_dims + other).reshape(
        int(np.prod([process_ids.shape[i] for i in batch_dims], dtype=int)), -1)
    spanning = [axis_names[i] for i in other if process_ids.shape[i] > 1 and np.any(
        np.take(process_ids, [0], axis=i) != process_ids)]
    if np.any(grouped != grouped[:, :1]):
        return (f"axis {', '.join(spanning) or '?'} spans processes, so devices of different "
                f"processes would hold the same batch rows")
    counts = np.bincount(grouped[:, 0])
    if len(set(counts[counts > 0])) > 1 or (counts == 0).any():
        return f"the processes hold unequal shares of the batch ({counts.tolist()} shards)"
    return ""
