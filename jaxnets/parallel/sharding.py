"""Sharding in one room: the logical-axis rules, their resolution to mesh axes, and their
application to parameters, activations and input batches.

Layers name what each dimension *is* (jaxnets.nn.layers: "embed", "heads", "conv_out", ...);
one rules table (`config.sharding_rules`, default DEFAULT_RULES) maps each name to mesh axes:

    parameters   state_layout / state_shardings  (the trainer's in/out shardings)
    activations  constrain(x, ("batch", None, "embed_act"))   (inside a step)
    batches      batch_sharding(mesh, rules): the leading axis by the "batch" rule

The context is JAX's and flax's own: `jax.set_mesh(mesh)` sets the mesh and
`nnx.logical_axis_rules(rules)` the rules (`axis_rules(mesh, rules)` enters both; the trainer
holds it while tracing its steps). Research code that sets only `jax.set_mesh(mesh)` gets
DEFAULT_RULES, so modules imported from jaxnets follow the researcher's mesh: activation
constraints apply and per-shard kernels (Pallas, blockwise attention) run per shard, as inside
the trainer. Outside any mesh, or on one device, nothing is constrained.

A dimension its mesh axes do not divide stays whole (replicated) rather than padded, with a
note that `--print_layout` shows; a mesh axis is used at most once per array.
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Axes = Sequence[str | None]

# Logical name -> mesh axis (or tuple of mesh axes); names missing here are replicated.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("conv_out", "fsdp"),
    ("conv_in", None),
    ("layers", None),
    ("embed_act", None),   # the residual stream's width: whole on every device (gathered weights)
)


# ------------------------------------------------------------------ rules -> mesh axes
def _targets(name, rules, mesh_shape) -> tuple[str, ...]:
    """The mesh axes (of size > 1) logical `name` maps to under `rules`."""
    target = dict(rules).get(name) if name is not None else None
    names = (target,) if isinstance(target, str) else tuple(target or ())
    return tuple(a for a in names if a in mesh_shape and mesh_shape[a] > 1)


def resolve(axes: Axes, shape: Sequence[int], mesh, rules) -> tuple[P, list[str]]:
    """PartitionSpec for a `shape` named `axes`, plus notes on the dimensions left whole."""
    used, spec, notes = set(), [], []
    for dim, name in enumerate(axes):
        mesh_axes = _targets(name, rules, dict(mesh.shape))
        if not mesh_axes:
            spec.append(None)
            continue
        size = math.prod(mesh.shape[a] for a in mesh_axes)
        if any(a in used for a in mesh_axes):
            notes.append(f"dim {dim} ({name}) whole: {'/'.join(mesh_axes)} already splits another dim")
            spec.append(None)
        elif shape[dim] % size:
            notes.append(f"dim {dim} ({name}={shape[dim]}) whole: not divisible by "
                         f"{'x'.join(mesh_axes)}={size}")
            spec.append(None)
        else:
            used.update(mesh_axes)
            spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec), notes


# ------------------------------------------------------------------ the context (JAX's and flax's)
@contextlib.contextmanager
def axis_rules(mesh, rules):
    """The mesh (as its abstract mesh, `jax.sharding.use_abstract_mesh`: what constraints and
    shard_map read while tracing, and allowed inside a trace where `jax.set_mesh` is not) and
    `nnx.logical_axis_rules(rules)` together: what the trainer holds while tracing its steps."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nnx.logical_axis_rules(tuple(rules)):
        yield


def current():
    """(mesh, rules) in effect: the mesh set with `jax.set_mesh` (None if none) and the rules of
    `nnx.logical_axis_rules` (DEFAULT_RULES when a mesh is set without rules)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None, ()
    return mesh, tuple(flax_spmd.get_logical_axis_rules() or DEFAULT_RULES)


def current_platform() -> str:
    """The platform the program being traced is for: the current mesh's devices' ("tpu" while
    `jaxnets compile` traces for a TPU slice on a CPU host, where `jax.default_backend()` stays
    "cpu"), else JAX's default backend. Kernels are chosen by it."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def mesh_axes_of(name: str) -> tuple[str, ...]:
    """The mesh axes (of size > 1) a logical name maps to in the current context."""
    mesh, rules = current()
    return () if mesh is None else _targets(name, rules, dict(mesh.shape))


def per_batch_shard(fn, args, in_batch_dims, out_batch_dims):
    """`fn(*args)` on each device's block of the batch, inside shard_map.

    `in_batch_dims[i]` is the batch dimension of args[i] (None: the whole array on every
    device), `out_batch_dims` the same for fn's outputs (a tuple). For a custom kernel, opaque to
    XLA's partitioner, which would otherwise all-gather its operands onto every device: with the
    batch split over the "batch" rule's mesh axes, each device runs the kernel on its own rows.
    Outside a mesh, on one device, or where those axes do not divide the batch, fn is called
    directly."""
    mesh, _ = current()
    axes = mesh_axes_of("batch")
    size = next(a.shape[d] for a, d in zip(args, in_batch_dims) if d is not None)
    if mesh is None or mesh.size == 1 or not axes or size % math.prod(mesh.shape[a] for a in axes):
        return fn(*args)
    b = axes if len(axes) > 1 else axes[0]
    spec = lambda ndim, d: P() if d is None else P(*(b if i == d else None for i in range(ndim)))
    outs = jax.eval_shape(fn, *args)
    return jax.shard_map(fn, in_specs=tuple(spec(a.ndim, d) for a, d in zip(args, in_batch_dims)),
                         out_specs=tuple(spec(o.ndim, d) for o, d in zip(outs, out_batch_dims)),
                         check_vma=False)(*args)


def summed_over_batch(fn, batched, whole=()):
    """`fn(*batched, *whole)` summed over the batch: fn maps a block of examples (dimension 0 of
    every `batched` array; `whole` arrays are the same on every device) to a small array of
    sums, and each device's result is added up with one psum over the "batch" rule's mesh axes.

    Why: XLA's partitioner places an all-reduce after every reduction over a split batch, and
    several reductions of one layer become one all-reduce of a tuple, which XLA:CPU's
    in-process collectives carry out as one rendezvous of the devices per array. fn returns its
    sums as one array: one psum, one rendezvous (`jaxnets.nn.batch_norm`: a layer's
    statistics). Outside a mesh, on one device, or where those axes do not divide the batch, fn
    is called directly."""
    mesh, _ = current()
    axes = mesh_axes_of("batch")
    size = batched[0].shape[0]
    if mesh is None or mesh.size == 1 or not axes or size % math.prod(mesh.shape[a] for a in axes):
        return fn(*batched, *whole)
    b = axes if len(axes) > 1 else axes[0]
    local = lambda *args: jax.lax.psum(fn(*args), b)
    return jax.shard_map(local, in_specs=(*(P(b) for _ in batched), *(P() for _ in whole)),
                         out_specs=P(), check_vma=False)(*batched, *whole)


def constrain(x, axes: Axes):
    """with_sharding_constraint by logical names; a no-op outside a mesh (or on one device).

    Why: XLA's partitioner propagates shardings from parameters as well as from the batch; with
    FSDP-sharded weights it may otherwise keep an activation split over the model dimension and
    reshuffle it per op. Pinning the residual stream to [batch split, rest whole] makes each
    layer gather its weights instead (FSDP's contract).
    """
    mesh, rules = current()
    if mesh is None or mesh.size == 1:
        return x
    spec, _ = resolve(axes, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, spec)


# ------------------------------------------------------------------ batches
def data_axes(mesh, rules=DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the "batch" rule splits examples over (every one, whatever its size)."""
    target = dict(rules).get("batch")
    names = (target,) if isinstance(target, str) else tuple(target or ())
    return tuple(a for a in names if a in mesh.axis_names)


def data_parallel_size(mesh, rules=DEFAULT_RULES) -> int:
    return math.prod(mesh.shape[a] for a in data_axes(mesh, rules))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Input batches: the leading (example) axis split as the "batch" rule says, the rest whole."""
    return NamedSharding(mesh, P(data_axes(mesh, rules)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# ------------------------------------------------------------------ parameters and optimizer state
def _logical_names(variable) -> tuple | None:
    names = variable.get_metadata().get("out_sharding") if hasattr(variable, "get_metadata") else None
    return tuple(names) if names else None


def state_layout(mesh: Mesh, abstract_state, rules) -> list[dict]:
    """One row per state array: path, shape, dtype, logical names, PartitionSpec and notes."""
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
    """NamedShardings for an abstract nnx state: logical names mapped by `rules`, else replicated."""
    specs = iter([row["spec"] for row in state_layout(mesh, abstract_state, rules)])
    flat = nnx.to_flat_state(abstract_state)
    shardings = [(path, var.replace(NamedSharding(mesh, next(specs)))) for path, var in flat]
    return nnx.from_flat_state(shardings)


def shard_count(mesh, spec: P) -> int:
    """Into how many pieces `spec` cuts an array on `mesh` (its per-device share is 1/that)."""
    return math.prod(math.prod(mesh.shape[a] for a in ((e,) if isinstance(e, str) else e))
                     for e in spec if e is not None)


def layout_bytes(mesh: Mesh, rows: list[dict]) -> tuple[int, int]:
    """(global bytes, bytes per device) of a `state_layout`: what `mesh.state_bytes` reads from
    the allocated arrays, known before anything is allocated (a PRNG key counts 8 data bytes)."""
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
