"""Filter gradient of 3x3, stride-1, 'same' NHWC convolutions on CPU, by a native kernel.

    dw = conv3x3_filter_grad(x, g)     # x [B, H, W, C], g [B, H, W, O] -> dw [3, 3, C, O] (HWIO)

equals `jax.vjp(lambda w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
dimension_numbers=("NHWC", "HWIO", "NHWC")), w)[1](g)[0]`, as float32 sums in another order.
The kernel is `conv3x3_filter_grad.cc` (see there for why and how); `supported` says whether a
call with these operands takes it: CPU backend, float32, output channels a multiple of 16, and a
built native library (`jaxnets.kernels.native`). Callers use the lax form otherwise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnets.kernels import native

NAME = "conv3x3_filter_grad"


def supported(x, g) -> bool:
    return (jax.default_backend() == "cpu" and x.ndim == 4 and g.ndim == 4
            and x.dtype == jnp.float32 and g.dtype == jnp.float32
            and x.shape[:3] == g.shape[:3] and g.shape[-1] % 16 == 0
            and native.ffi_target(NAME, "Conv3x3FilterGrad") is not None)


def conv3x3_filter_grad(x, g):
    """[3, 3, C, O] filter gradient of a 3x3 stride-1 'same' NHWC convolution (see module)."""
    if not supported(x, g):
        raise ValueError(f"conv3x3_filter_grad: unsupported operands {x.shape} {x.dtype}, "
                         f"{g.shape} {g.dtype} on {jax.default_backend()} (see `supported`)")
    out = jax.ShapeDtypeStruct((3, 3, x.shape[-1], g.shape[-1]), jnp.float32)
    return jax.ffi.ffi_call(native.ffi_target(NAME, "Conv3x3FilterGrad"), out)(x, g)
