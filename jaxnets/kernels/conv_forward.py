"""3x3 NHWC convolutions padded by one pixel, stride 1 ('same') or 2, on CPU, by a native kernel.

    y = conv3x3_forward(x, k)     # x [B, H, W, C], k [3, 3, C, O] (HWIO) -> y [B, H, W, O]
    y = conv3x3_forward(x, k, stride=2)                     # -> y [B, (H+1)//2, (W+1)//2, O]

equals `lax.conv_general_dilated(x, k, (s, s), ((1, 1), (1, 1)), dimension_numbers=("NHWC",
"HWIO", "NHWC"))` as float32 sums in another order. The input gradient of a stride-1 one is
one too (`jaxnets.nn.conv` calls this for both). The kernel is `conv3x3_forward.cc` (see there
for why and how); `supported` says whether a call with these operands takes it: CPU backend,
float32, output channels a multiple of 16, and a built native library.

Threads (`threads`, decided ahead by jaxnets.platform, as for the filter gradient): 0 splits the
batch over XLA's intra-op pool, 1 runs on the calling thread.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets.kernels import native
from jaxnets.kernels.batch_op import bilinear_batch_op

NAME = "conv3x3_forward"


def supported(x, k, isa: str | None = None) -> bool:
    return (jax.default_backend() == "cpu" and x.ndim == 4 and k.ndim == 4
            and x.dtype == jnp.float32 and k.dtype == jnp.float32
            and k.shape[:3] == (3, 3, x.shape[-1]) and k.shape[-1] % 16 == 0
            and native.ffi_target(NAME, "Conv3x3Forward", isa) is not None)


def conv3x3_forward(x, k, threads: int = 1, isa: str | None = None, stride: int = 1):
    """[B, Ho, Wo, O] 3x3 NHWC convolution of x with k, one pixel of padding, `stride` 1 or 2
    (see module); `threads`: 1 on the calling thread, 0 over XLA's intra-op pool; `isa` picks a
    build (tests compare them)."""
    if not supported(x, k, isa) or stride not in (1, 2):
        raise ValueError(f"conv3x3_forward: unsupported operands {x.shape} {x.dtype}, "
                         f"{k.shape} {k.dtype}, stride {stride} on {jax.default_backend()} (see `supported`)")
    return _differentiable(int(threads), isa, int(stride))(x, k)


def reference(x, k, precision=None, stride: int = 1):
    """The same convolution computed by XLA."""
    return lax.conv_general_dilated(x, k, (stride, stride), ((1, 1), (1, 1)), precision=precision,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.cache
def _differentiable(threads: int, isa: str | None, stride: int):
    """The op for one (`threads`, `stride`) (attributes of the custom call, fixed per program)."""

    def ffi(x, k):
        out_hw = tuple((n - 1) // stride + 1 for n in x.shape[1:3])
        out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, k.shape[-1]), jnp.float32)
        return jax.ffi.ffi_call(native.ffi_target(NAME, "Conv3x3Forward", isa), out)(
            x, k, threads=np.int64(threads), stride=np.int64(stride))

    # Each device convolves its batch shard; vmap and derivatives through XLA's form
    # (jaxnets.kernels.batch_op).
    rule = "b h w c, i j c o -> b h w o" if stride == 1 else "b h w c, i j c o -> b p q o"
    return bilinear_batch_op(ffi, functools.partial(reference, stride=stride), rule, sums_batch=False)
