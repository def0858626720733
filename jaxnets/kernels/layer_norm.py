"""Layer normalisation over the last axis on CPU, by a native kernel, forward and backward.

    y = layer_norm(x, scale, bias, eps=1e-6)    # x [..., D], scale and bias [D]

equals `reference` ((x - mean) / sqrt(var + eps) * scale + bias per row, the variance taken
about the mean) as float32 sums in another order. The kernels are `layer_norm.cc` (why and how:
see there). The backward reads x, dy and the forward's per-row (mean, 1/std), so the residuals
are x and two floats per row. `supported` says whether a call with these operands takes it:
CPU backend, float32, a last axis of a non-zero multiple of 16 (vector code on every build) and
a built native library. `jaxnets.nn.layers.LayerNorm` takes it where the lowering says so
(`Lowering.layer_norm`).

Under a batch-sharded jit each device normalises its own rows (the parameter gradients are
then summed over the batch's mesh axes); under vmap and for derivatives of the kernels
themselves (second-order gradients) the op is `reference`, XLA's form of the same maths.

Threads (`threads`): 0 splits the rows over XLA's intra-op pool, 1 runs on the calling thread.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.kernels import native
from jaxnets.kernels.batch_op import rows_batch_op

NAME = "layer_norm"


def supported(x, isa: str | None = None) -> bool:
    return (jax.default_backend() == "cpu" and x.ndim >= 1 and x.size > 0
            and x.dtype == jnp.float32 and x.shape[-1] % 16 == 0
            and native.ffi_target(NAME, "LayerNormFwd", isa) is not None)


def layer_norm(x, scale, bias, *, eps: float, threads: int = 1, isa: str | None = None):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis (see module)."""
    if not supported(x, isa):
        raise ValueError(f"layer_norm: unsupported operand {x.shape} {x.dtype} on "
                         f"{jax.default_backend()} (see `supported`)")
    d = x.shape[-1]
    if scale.shape != (d,) or bias.shape != (d,):
        raise ValueError(f"layer_norm: scale and bias must be [{d}], got {scale.shape}, {bias.shape}")
    rows = x.reshape(-1, d)
    y = _op(float(eps), int(threads), isa)(rows, scale.astype(jnp.float32), bias.astype(jnp.float32))
    return y.reshape(x.shape)


def reference(x, scale, bias, eps: float):
    """The same normalisation computed by XLA."""
    return forward_reference(x, scale, bias, eps)[0]


def forward_reference(x, scale, bias, eps: float):
    """(y, stats): the forward kernel's results, stats [..., 2] = (mean, 1/std) per row."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    return centred * rstd * scale + bias, jnp.concatenate([mean, rstd], axis=-1)


def backward_reference(x, scale, stats, dy):
    """(dx, dparams): the backward kernel's results, dparams [2, D] = (dscale, dbias)."""
    mean, rstd = stats[..., :1], stats[..., 1:]
    xhat = (x - mean) * rstd
    h = dy * scale
    dx = rstd * (h - jnp.mean(h, axis=-1, keepdims=True)
                 - xhat * jnp.mean(h * xhat, axis=-1, keepdims=True))
    rows = lambda a: a.reshape(-1, a.shape[-1])   # noqa: E731
    return dx, jnp.stack([jnp.sum(rows(dy * xhat), axis=0), jnp.sum(rows(dy), axis=0)])


@functools.cache
def _op(eps: float, threads: int, isa: str | None):
    """The op for one (eps, threads) (attributes of the custom calls, fixed per program)."""
    fwd_target, bwd_target = (native.ffi_target(NAME, s, isa) for s in ("LayerNormFwd", "LayerNormBwd"))

    def forward_kernel(x, scale, bias):
        results = (jax.ShapeDtypeStruct(x.shape, jnp.float32),
                   jax.ShapeDtypeStruct((x.shape[0], 2), jnp.float32))
        return jax.ffi.ffi_call(fwd_target, results)(x, scale, bias, eps=np.float32(eps),
                                                     threads=np.int64(threads))

    def backward_kernel(x, scale, stats, dy):
        results = (jax.ShapeDtypeStruct(x.shape, jnp.float32),
                   jax.ShapeDtypeStruct((2, x.shape[1]), jnp.float32))
        return jax.ffi.ffi_call(bwd_target, results)(x, scale, stats, dy, threads=np.int64(threads))

    forward = rows_batch_op(forward_kernel, functools.partial(forward_reference, eps=eps),
                            rows=(True, False, False), summed=(False, False),
                            sharding_rule="n d, d, d -> n d, n s")
    backward = rows_batch_op(backward_kernel, backward_reference,
                             rows=(True, False, True, True), summed=(False, True),
                             sharding_rule="n d, d, n s, n d -> n d, p d")

    @jax.custom_vjp
    def op(x, scale, bias):
        return forward(x, scale, bias)[0]

    def op_fwd(x, scale, bias):
        y, stats = forward(x, scale, bias)
        return y, (x, scale, stats)

    def op_bwd(residuals, dy):
        dx, dparams = backward(*residuals, dy)
        return dx, dparams[0], dparams[1]

    op.defvjp(op_fwd, op_bwd)
    return op
