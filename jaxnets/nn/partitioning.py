"""Logical axis names for parameters and activations, resolved to mesh axes by one rules table.

Models name what each dimension *is*; the trainer decides where it lives:

    layer = Linear(d_model, d_ff, axes=("embed", "mlp"), rngs=rngs)   # kernel [embed, mlp], bias [mlp]
    x = constrain(x, ("batch", None, "embed_act"))                     # activation hint (no-op outside)

The names (maxtext/levanter style; see DEFAULT_RULES):
  batch      the example axis of activations: split over the data-parallel mesh axes
  embed      model width in weights: FSDP shards it ("embed" -> "fsdp")
  mlp, heads, kv_heads, vocab   Megatron-style tensor-parallel dimensions ("tensor")
  conv_in, conv_out             convolution channels (conv_out -> fsdp; convnets rarely want TP)
  layers     the leading axis of scanned (stacked) layers: never split
  None       replicated
The constructors below return the stock `nnx` layers with the names stored as `out_sharding`
metadata (`nnx.with_partitioning`), so parameter paths, checkpoints and `isinstance` checks are
unchanged. Outside the trainer nothing is sharded: `axis_rules` is the context the trainer
enters while tracing its steps, and `constrain` is a no-op without it.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

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


def meta(axes: Axes) -> dict:
    """`kernel_metadata=` / `embedding_metadata=` value storing logical names."""
    # eager_sharding off: the names are resolved by the trainer's rules (jaxnets.parallel.mesh),
    # so a model builds anywhere, with or without a mesh (research code, tests, notebooks).
    return {"out_sharding": tuple(axes), "eager_sharding": False}


def Linear(in_features: int, out_features: int, *, axes: Axes = ("embed", "mlp"), **kw) -> nnx.Linear:
    """nnx.Linear whose kernel is named `axes` and bias `axes[1:]`; rows flattened (`rows_dot`)."""
    kw.setdefault("dot_general", rows_dot)
    return nnx.Linear(in_features, out_features, kernel_metadata=meta(axes),
                      bias_metadata=meta(axes[1:]), **kw)


def rows_dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
             out_sharding=None):
    """lax.dot_general for x [..., in] @ W [in, out], with x's leading dims merged into rows.

    The kernel's gradient is then one 2-D product, x^T dy. Traced on [B, T, in], its transpose
    rule contracts two dims, and XLA:CPU runs that through a transposed copy of dy at a third
    of matmul speed (a Transformer-LM ff layer's weight gradient: 9.8 vs 3.1 ms on one core).
    """
    (lc, rc), (lb, rb) = dimension_numbers
    plain = (lhs.ndim > 2 and rhs.ndim == 2 and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,)
             and not lb and not rb and out_sharding is None)
    if not plain:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type,
                                   out_sharding=out_sharding)
    y = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())),
                            precision=precision, preferred_element_type=preferred_element_type)
    return y.reshape(lhs.shape[:-1] + rhs.shape[1:])


def Conv(in_features: int, out_features: int, kernel_size, *, axes: Axes = ("conv_in", "conv_out"),
         **kw) -> nnx.Conv:
    """nnx.Conv, kernel [*spatial, in, out] named (None, ..., *axes), bias [out]."""
    spatial = (None,) * len(tuple(kernel_size) if not isinstance(kernel_size, int) else (kernel_size,) * 2)
    return nnx.Conv(in_features, out_features, kernel_size, kernel_metadata=meta(spatial + tuple(axes)),
                    bias_metadata=meta(axes[1:]), **kw)


def ConvTranspose(in_features: int, out_features: int, kernel_size, *,
                  axes: Axes = ("conv_in", "conv_out"), **kw) -> nnx.ConvTranspose:
    spatial = (None,) * len(tuple(kernel_size))
    return nnx.ConvTranspose(in_features, out_features, kernel_size,
                             kernel_metadata=meta(spatial + tuple(axes)), bias_metadata=meta(axes[1:]),
                             **kw)


def Embed(num_embeddings: int, features: int, *, axes: Axes = ("vocab", "embed"), **kw) -> nnx.Embed:
    return nnx.Embed(num_embeddings, features, embedding_metadata=meta(axes), **kw)


def _norm(cls, features: int, axis: str | None, **kw):
    return cls(features, scale_metadata=meta((axis,)), bias_metadata=meta((axis,)), **kw)


def LayerNorm(features: int, *, axis: str | None = "embed", **kw) -> nnx.LayerNorm:
    return _norm(nnx.LayerNorm, features, axis, **kw)


def RMSNorm(features: int, *, axis: str | None = "embed", **kw) -> nnx.RMSNorm:
    """x / sqrt(mean(x^2) + eps) * scale (Zhang & Sennrich 2019): no centring, no bias."""
    return nnx.RMSNorm(features, scale_metadata=meta((axis,)), **kw)


def BatchNorm(features: int, *, axis: str | None = "conv_out", **kw) -> nnx.BatchNorm:
    return _norm(nnx.BatchNorm, features, axis, **kw)


def GroupNorm(features: int, *, axis: str | None = "conv_out", **kw) -> nnx.GroupNorm:
    return _norm(nnx.GroupNorm, features, axis, **kw)


def Param(value, axes: Axes) -> nnx.Param:
    """A raw parameter with logical names (one per dimension)."""
    if len(axes) != value.ndim:
        raise ValueError(f"{len(axes)} logical names {tuple(axes)} for a {value.ndim}-d parameter")
    return nnx.Param(value, **meta(axes))


# ------------------------------------------------------------------ rules -> mesh axes
def resolve(axes: Axes, shape: Sequence[int], mesh, rules) -> tuple[P, list[str]]:
    """PartitionSpec for a `shape` named `axes`, plus notes on the dimensions left whole.

    A dimension whose size its mesh axes do not divide stays whole (replicated) rather than
    being padded: the note says so, and `--print_layout` shows it. A mesh axis is used at most
    once per array (the first dimension that asks for it wins).
    """
    table, used, spec, notes = dict(rules), set(), [], []
    for dim, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        mesh_axes = tuple(a for a in ((target,) if isinstance(target, str) else (target or ()))
                          if a in mesh.shape and mesh.shape[a] > 1)
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


class _Context(threading.local):
    mesh = None
    rules: tuple = ()


_context = _Context()


@contextlib.contextmanager
def axis_rules(mesh, rules):
    """While active (the trainer holds it when tracing a step), `constrain` and the attention
    kernels' shard_map use `mesh` and `rules`."""
    saved = _context.mesh, _context.rules
    _context.mesh, _context.rules = mesh, tuple(rules)
    try:
        yield
    finally:
        _context.mesh, _context.rules = saved


def current():
    """(mesh, rules) of the active `axis_rules` context, or (None, ())."""
    return _context.mesh, _context.rules


def mesh_axes_of(name: str) -> tuple[str, ...]:
    """The mesh axes (of size > 1) a logical name maps to in the active context."""
    mesh, rules = current()
    if mesh is None:
        return ()
    target = dict(rules).get(name)
    names = (target,) if isinstance(target, str) else tuple(target or ())
    return tuple(a for a in names if a in mesh.shape and mesh.shape[a] > 1)


def constrain(x, axes: Axes):
    """with_sharding_constraint by logical names; a no-op outside `axis_rules` (or on one device).

    Why: XLA's partitioner propagates shardings from parameters as well as from the batch; with
    FSDP-sharded weights it may otherwise keep an activation split over the model dimension and
    reshuffle it per op. Pinning the residual stream to [batch split, rest whole] makes each
    layer gather its weights instead (FSDP's contract).
    """
    mesh, rules = current()
    if mesh is None or mesh.size == 1:
        return x
    spec, _ = resolve(axes, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def lookup(embed: nnx.Embed, ids):
    """`embed(ids)` with the table gathered whole first (one all-gather per step under FSDP/TP).

    Why: a row lookup (gather) from a table split over both of its dimensions is something
    XLA's SPMD partitioner cannot partition; it falls back to replicating the table through an
    "involuntary full rematerialization" with a warning per call. Same numbers as `embed(ids)`.
    """
    (table,) = embed.promote_dtype((embed.embedding[...],), dtype=embed.dtype, inexact=False)
    return jax.numpy.take(constrain(table, (None, None)), ids, axis=0)
