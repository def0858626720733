"""Weight gradient of a dense layer on CPU, by a native kernel.

    dw = dense_weight_grad(x, g)     # x [M, K], g [M, N] -> dw [K, N] = x^T g

equals `x.T @ g` as float32 sums in another order (each dw element sums its M products in
blocks of 256 rows, whatever the thread count). The kernel is `dense_weight_grad.cc` (see there
for why and how); `supported` says whether a call with these operands takes it: CPU backend,
float32, min(K, N) a multiple of 16 (the narrower side, see `_transposed`), and a built native
library. `jaxnets.nn.layers.rows_dot` takes it
for its kernel's gradient where the lowering says so (`Lowering.dense_weight_grad`).

Threads (`threads`): 0 splits dw's rows over XLA's intra-op pool, 1 runs on the calling thread.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets.kernels import native
from jaxnets.kernels.batch_op import bilinear_batch_op

NAME = "dense_weight_grad"


def supported(x, g, isa: str | None = None) -> bool:
    return (jax.default_backend() == "cpu" and x.ndim == 2 and g.ndim == 2
            and x.shape[0] == g.shape[0] and _narrow(x, g).shape[1] % 16 == 0
            and x.dtype == jnp.float32 and g.dtype == jnp.float32
            and native.ffi_target(NAME, "DenseWeightGrad", isa) is not None)


def _transposed(x, g) -> bool:
    """Whether dw is computed as (g^T x)^T: the kernel reads its second operand whole once per
    task of rows, so that operand should be the narrower one (see the .cc)."""
    return g.shape[1] > x.shape[1]


def _narrow(x, g):
    return x if _transposed(x, g) else g


def dense_weight_grad(x, g, threads: int = 1, isa: str | None = None):
    """[K, N] = x^T g for x [M, K], g [M, N] (see module); `threads`: 1 on the calling thread,
    0 over XLA's intra-op pool; `isa` picks a build (tests compare them)."""
    if not supported(x, g, isa):
        raise ValueError(f"dense_weight_grad: unsupported operands {x.shape} {x.dtype}, "
                         f"{g.shape} {g.dtype} on {jax.default_backend()} (see `supported`)")
    op = _differentiable(int(threads), isa)
    return op(g, x).T if _transposed(x, g) else op(x, g)


def reference(x, g, precision=None):
    """The same product computed by XLA."""
    return lax.dot_general(x, g, (((0,), (0,)), ((), ())), precision=precision)


@functools.cache
def _differentiable(threads: int, isa: str | None):
    """The op for one `threads` (an attribute of the custom call, fixed per program)."""

    def ffi(x, g):
        out = jax.ShapeDtypeStruct((x.shape[1], g.shape[1]), jnp.float32)
        return jax.ffi.ffi_call(native.ffi_target(NAME, "DenseWeightGrad", isa), out)(
            x, g, threads=np.int64(threads))

    # Rows are the batch: each device the product of its rows, then a psum; vmap and
    # derivatives through XLA's form (jaxnets.kernels.batch_op).
    return bilinear_batch_op(ffi, reference, "m k, m n -> k n", sums_batch=True)
