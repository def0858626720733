"""Filter gradient of 3x3, stride-1, 'same' NHWC convolutions on CPU, by a native kernel.

    dw = conv3x3_filter_grad(x, g)     # x [B, H, W, C], g [B, H, W, O] -> dw [3, 3, C, O] (HWIO)

equals `jax.vjp(lambda w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
dimension_numbers=("NHWC", "HWIO", "NHWC")), w)[1](g)[0]`, as float32 sums in another order.
The kernel is `conv3x3_filter_grad.cc` (see there for why and how); `supported` says whether a
call with these operands takes it: CPU backend, float32, output channels a multiple of 16, and a
built native library (`jaxnets.kernels.native`). Callers use the lax form otherwise.

Whether a run takes it for a given shape is decided before tracing (`jaxnets.nn.lowering.
ConvLowering`, from the kernel table `jaxnets tune` writes by timing it against XLA's form,
`time_choice` here): nothing is timed while a step is traced.

Threads (`threads`, also decided ahead by jaxnets.platform): 0 splits the batch over XLA's
intra-op thread pool; 1 runs each call on its calling thread, as XLA's own convolutions do on
single-threaded CPU devices (`jaxnets.platform.devices.one_device_per_core`) or where several
CPU devices share the one pool.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets.kernels import native
from jaxnets.kernels.batch_op import bilinear_batch_op

NAME = "conv3x3_filter_grad"


def strided_shape(shape, stride: int):
    """[B, H, W] -> the output pixels [B, Ho, Wo] of a 3x3 convolution padded by one pixel."""
    b, h, w = shape[:3]
    return (b, (h - 1) // stride + 1, (w - 1) // stride + 1)


def supported(x, g, stride: int = 1) -> bool:
    return (jax.default_backend() == "cpu" and x.ndim == 4 and g.ndim == 4 and stride in (1, 2)
            and x.dtype == jnp.float32 and g.dtype == jnp.float32
            and strided_shape(x.shape, stride) == g.shape[:3] and g.shape[-1] % 16 == 0
            and native.ffi_target(NAME, "Conv3x3FilterGrad") is not None)


def conv3x3_filter_grad(x, g, threads: int = 1, stride: int = 1):
    """[3, 3, C, O] filter gradient of a 3x3 NHWC convolution padded by one pixel, `stride` 1 or
    2 (see module); `threads`: 1 on the calling thread, 0 over XLA's intra-op pool."""
    if not supported(x, g, stride):
        raise ValueError(f"conv3x3_filter_grad: unsupported operands {x.shape} {x.dtype}, "
                         f"{g.shape} {g.dtype}, stride {stride} on {jax.default_backend()} (see `supported`)")
    return _differentiable(int(threads), int(stride))(x, g)


def reference(x, g, precision=None, stride: int = 1):
    """The same filter gradient computed by XLA (lax's VJP of the convolution)."""
    w = jnp.zeros((3, 3, x.shape[-1], g.shape[-1]), x.dtype)
    conv = lambda w: lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                              precision=precision,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.vjp(conv, w)[1](g)[0]


@functools.cache
def _differentiable(threads: int, stride: int):
    """The op for one (`threads`, `stride`) (attributes of the custom call, fixed per program)."""

    def ffi(x, g):
        out = jax.ShapeDtypeStruct((3, 3, x.shape[-1], g.shape[-1]), jnp.float32)
        return jax.ffi.ffi_call(native.ffi_target(NAME, "Conv3x3FilterGrad"), out)(
            x, g, threads=np.int64(threads), stride=np.int64(stride))

    # Each device the filter gradient of its batch shard, then a psum; vmap and derivatives
    # through XLA's form (jaxnets.kernels.batch_op).
    rule = "b h w c, b h w o -> i j c o" if stride == 1 else "b h w c, b p q o -> i j c o"
    return bilinear_batch_op(ffi, functools.partial(reference, stride=stride), rule, sums_batch=True)


def time_choice(x_shape, g_shape, threads: int, rounds: int = 5) -> dict:
    """Time the native kernel against XLA's form on this machine for these operand shapes (the
    per-device batch): {"choice": the faster, "native_ms": .., "xla_ms": ..}. Used by
    `jaxnets tune` to write the kernel table, never while a step is traced. The two run
    interleaved, `rounds` times, and the smallest time of each counts: on a shared machine
    another job slows both alike within a round."""
    dev = jax.devices()[0]
    xs = jax.device_put(jnp.ones(x_shape, jnp.float32), dev)
    gs = jax.device_put(jnp.ones(g_shape, jnp.float32), dev)
    stride = 1 if strided_shape(x_shape, 1) == tuple(g_shape[:3]) else 2
    calls = {}
    for name, fn in (("native", lambda x, g: conv3x3_filter_grad(x, g, threads, stride)),
                     ("xla", functools.partial(reference, stride=stride))):
        compiled = jax.jit(fn).lower(xs, gs).compile()
        calls[name] = lambda compiled=compiled: compiled(xs, gs).block_until_ready()
    for call in calls.values():
        call()                                   # warm: caches, page faults
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - t)
    return {"choice": min(best, key=best.get), **{f"{n}_ms": round(t * 1e3, 4) for n, t in best.items()}}
