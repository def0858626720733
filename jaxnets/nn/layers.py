"""Stock layers with logical axis names on their parameters (what each dimension *is*).

    layer = Linear(d_model, d_ff, axes=("embed", "mlp"), rngs=rngs)   # kernel [embed, mlp], bias [mlp]

The names (maxtext/levanter style):
  embed      model width in weights: FSDP shards it
  mlp, heads, kv_heads, vocab   Megatron-style tensor-parallel dimensions
  conv_in, conv_out             convolution channels
  layers     the leading axis of scanned (stacked) layers: never split
  None       replicated
Activations are named with `jaxnets.parallel.sharding.constrain(x, ("batch", None, "embed_act"))`.
Where each name lives on a mesh is decided by the rules in jaxnets.parallel.sharding (from
`config.sharding_rules`), never here. The constructors return the stock `nnx` layers with the
names stored as `out_sharding` metadata (`nnx.with_partitioning`), so parameter paths,
checkpoints and `isinstance` checks are unchanged.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnets.kernels import dense_weight_grad as dwg
from jaxnets.kernels import layer_norm as native_layer_norm
from jaxnets.nn import batch_norm
from jaxnets.parallel.sharding import constrain

Axes = Sequence[str | None]


def meta(axes: Axes) -> dict:
    """`kernel_metadata=` / `embedding_metadata=` value storing logical names."""
    # eager_sharding off: the names are resolved by the rules of jaxnets.parallel.sharding,
    # so a model builds anywhere, with or without a mesh (research code, tests, notebooks).
    return {"out_sharding": tuple(axes), "eager_sharding": False}


def Linear(in_features: int, out_features: int, *, axes: Axes = ("embed", "mlp"), **kw) -> nnx.Linear:
    """nnx.Linear whose kernel is named `axes` and bias `axes[1:]`. `dot_general=rows_dot` (a
    `Lowering.dot_general` choice) merges the input's leading dims into rows."""
    return nnx.Linear(in_features, out_features, kernel_metadata=meta(axes),
                      bias_metadata=meta(axes[1:]), **kw)


def rows_dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
             out_sharding=None, *, native_threads: int | None = None):
    """lax.dot_general for x [..., in] @ W [in, out], with x's leading dims merged into rows.

    The kernel's gradient is then one 2-D product, x^T dy. Traced on [B, T, in], its transpose
    rule contracts two dims, and XLA:CPU runs that through a transposed copy of dy at about a
    third of matmul speed (a Transformer-LM feed-forward weight gradient; docs/cpu_choices.md).
    `native_threads` (not None: `native_rows_dot`): that x^T dy by the native kernel of
    `jaxnets.kernels.dense_weight_grad` where its operands allow, with these threads.
    """
    (lc, rc), (lb, rb) = dimension_numbers
    plain = (lhs.ndim >= 2 and rhs.ndim == 2 and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,)
             and not lb and not rb and out_sharding is None)
    if not plain or (lhs.ndim == 2 and native_threads is None):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type,
                                   out_sharding=out_sharding)
    x = lhs.reshape(-1, lhs.shape[-1])
    grads = jax.ShapeDtypeStruct((x.shape[0], rhs.shape[1]), rhs.dtype)
    if (native_threads is not None and preferred_element_type in (None, jnp.float32)
            and rhs.dtype == jnp.float32 and dwg.supported(x, grads)):
        y = _native_grad_dot(x, rhs, precision, native_threads)
    else:
        y = jax.lax.dot_general(x, rhs, (((1,), (0,)), ((), ())), precision=precision,
                                preferred_element_type=preferred_element_type)
    return y.reshape(lhs.shape[:-1] + rhs.shape[1:])


@functools.cache
def native_rows_dot(threads: int):
    """`rows_dot` whose weight gradient is the native kernel's (one object per `threads`: a
    module's static attribute compares equal across rebuilds)."""
    return functools.partial(rows_dot, native_threads=threads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _native_grad_dot(x, w, precision, threads):
    """x [M, K] @ w [K, N]; the backward's dw = x^T dy by `dense_weight_grad`."""
    return jax.lax.dot_general(x, w, (((1,), (0,)), ((), ())), precision=precision)


def _native_grad_dot_fwd(x, w, precision, threads):
    return _native_grad_dot(x, w, precision, threads), (x, w)


def _native_grad_dot_bwd(precision, threads, res, g):
    x, w = res
    dx = jax.lax.dot_general(g, w, (((1,), (1,)), ((), ())), precision=precision)
    return dx, dwg.dense_weight_grad(x, g, threads)


_native_grad_dot.defvjp(_native_grad_dot_fwd, _native_grad_dot_bwd)


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


class LayerNorm(nnx.LayerNorm):
    """nnx.LayerNorm with scale and bias named `axis`. `native_threads` (not None: a
    `Lowering.norm_threads` choice): the CPU kernel of `jaxnets.kernels.layer_norm` with these
    threads where the call allows (float32, last-axis statistics, scale and bias, no mask);
    XLA's form otherwise. Parameters are nnx.LayerNorm's either way."""

    def __init__(self, features: int, *, axis: str | None = "embed",
                 native_threads: int | None = None, **kw):
        super().__init__(features, scale_metadata=meta((axis,)), bias_metadata=meta((axis,)), **kw)
        self.native_threads = native_threads

    def __call__(self, x, *, mask=None):
        if self._native(x, mask):
            return native_layer_norm.layer_norm(x, self.scale[...], self.bias[...], eps=self.epsilon,
                                                threads=self.native_threads)
        return super().__call__(x, mask=mask)

    def _native(self, x, mask) -> bool:
        last = lambda axes: tuple(np.atleast_1d(axes)) in ((-1,), (x.ndim - 1,))   # noqa: E731
        return (self.native_threads is not None and mask is None and self.use_scale
                and self.use_bias and last(self.reduction_axes) and last(self.feature_axes)
                and self.dtype in (None, jnp.float32) and self.param_dtype == jnp.float32
                and native_layer_norm.supported(x))


def RMSNorm(features: int, *, axis: str | None = "embed", **kw) -> nnx.RMSNorm:
    """x / sqrt(mean(x^2) + eps) * scale (Zhang & Sennrich 2019): no centring, no bias."""
    return nnx.RMSNorm(features, scale_metadata=meta((axis,)), **kw)


def Norm(kind: str, features: int, *, native_threads: int | None = None, **kw):
    """"layer" (LayerNorm, `native_threads` as there) or "rms" (RMSNorm) over the model width."""
    if kind == "layer":
        return LayerNorm(features, native_threads=native_threads, **kw)
    if kind == "rms":
        return RMSNorm(features, **kw)
    raise ValueError(f"norm must be 'layer' or 'rms', got {kind!r}.")


def BatchNorm(features: int, *, axis: str | None = "conv_out", **kw) -> nnx.BatchNorm:
    """`jaxnets.nn.batch_norm.BatchNorm` (nnx.BatchNorm with its training gradient written out)."""
    return _norm(batch_norm.BatchNorm, features, axis, **kw)


def GroupNorm(features: int, *, axis: str | None = "conv_out", **kw) -> nnx.GroupNorm:
    return _norm(nnx.GroupNorm, features, axis, **kw)


def Param(value, axes: Axes) -> nnx.Param:
    """A raw parameter with logical names (one per dimension)."""
    if len(axes) != value.ndim:
        raise ValueError(f"{len(axes)} logical names {tuple(axes)} for a {value.ndim}-d parameter")
    return nnx.Param(value, **meta(axes))


def lookup(embed: nnx.Embed, ids):
    """`embed(ids)` with the table gathered whole first (one all-gather per step under FSDP/TP).

    Why: a row lookup (gather) from a table split over both of its dimensions is something
    XLA's SPMD partitioner cannot partition; it falls back to replicating the table through an
    "involuntary full rematerialization" with a warning per call. Same numbers as `embed(ids)`.
    """
    (table,) = embed.promote_dtype((embed.embedding[...],), dtype=embed.dtype, inexact=False)
    return jax.numpy.take(constrain(table, (None, None)), ids, axis=0)
