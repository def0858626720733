"""A batch norm's per-channel sums on CPU, by a native kernel: one pass over its operands.

    m = channel_moments(a, b, shift)    # a, b [..., C], shift [C] -> m [2, C]
    m[0] = sum of a over all axes but the last
    m[1] = sum of a * (b - shift) over the same axes

(x, x, 0) gives the forward statistics' sums (x and x^2), (dy, x, mean) the backward ones (dy
and dy (x - mean)); `jaxnets.nn.batch_norm` takes it where its `sums` choice says "native". The
kernel is `channel_moments.cc` (why and how: see there). `supported` says whether a call with
these operands takes it: CPU backend, float32, channels a multiple of 16 (vector code on every
build), and a built native library. Under vmap and for derivatives the op is `reference`, XLA's
form of the same sums (a custom call has neither a batching nor a differentiation rule).

Threads (`threads`, decided ahead by jaxnets.platform as for the other kernels): 0 splits the
rows over XLA's intra-op pool, 1 runs on the calling thread.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.kernels import native

NAME = "channel_moments"


def supported(a, b, isa: str | None = None) -> bool:
    return (jax.default_backend() == "cpu" and a.ndim >= 1 and a.shape == b.shape
            and a.dtype == jnp.float32 and b.dtype == jnp.float32 and a.shape[-1] % 16 == 0
            and native.ffi_target(NAME, "ChannelMoments", isa) is not None)


def channel_moments(a, b, shift, threads: int = 1, isa: str | None = None):
    """[2, C]: the sums of a and of a * (b - shift) over all axes but the last (see module)."""
    if not supported(a, b, isa):
        raise ValueError(f"channel_moments: unsupported operands {a.shape} {a.dtype}, {b.shape} "
                         f"{b.dtype} on {jax.default_backend()} (see `supported`)")
    return _op(int(threads), isa)(a, b, shift.astype(jnp.float32))


def reference(a, b, shift):
    """The same sums computed by XLA."""
    axes = tuple(range(a.ndim - 1))
    return jnp.stack([jnp.sum(a, axis=axes), jnp.sum(a * (b - shift), axis=axes)])


@functools.cache
def _op(threads: int, isa: str | None):
    """The op for one `threads` setting (an attribute of the custom call, fixed per program)."""

    @jax.custom_batching.custom_vmap
    def op(a, b, shift):
        out = jax.ShapeDtypeStruct((2, a.shape[-1]), jnp.float32)
        return jax.ffi.ffi_call(native.ffi_target(NAME, "ChannelMoments", isa), out)(
            a, b, shift, threads=np.int64(threads))

    @op.def_vmap
    def op_vmap(axis_size, in_batched, a, b, shift):
        a, b, shift = (v if batched else jnp.broadcast_to(v, (axis_size, *v.shape))
                       for v, batched in zip((a, b, shift), in_batched))
        return jax.vmap(reference)(a, b, shift), True

    @jax.custom_jvp
    def differentiable(a, b, shift):
        return op(a, b, shift)

    @differentiable.defjvp
    def differentiable_jvp(primals, tangents):
        return op(*primals), jax.jvp(reference, primals, tangents)[1]

    return differentiable
