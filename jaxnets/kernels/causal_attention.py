"""Causal self-attention on CPU by a native kernel, forward and backward.

    out = causal_attention(q, k, v, scale=d ** -0.5)   # q [B, T, H, D], k and v [B, T, Hk, D]

equals `jaxnets.nn.attention_formula.xla_attention(q, k, v, causal=True, scale=scale)` (softmax over the
keys j <= i of each query i, grouped-query heads allowed) as float32 sums in another order. The
kernels are `causal_attention.cc` (see there for why and how; built per instruction set by
`jaxnets.kernels.native`). The backward recomputes the probabilities from the saved log-sum-exp,
so the residuals are q, k, v, the output and [B, H, T] floats, not the [B, H, T, T] probabilities.

`supported` says whether a call with these operands takes it: CPU, float32, self-attention
(equal lengths), head_dim a multiple of 16 (every build's vector width divides it) and a built
native library. `jaxnets.nn.attention` picks it for causal attention without other masks
(`implementation="native"`, or "auto" on CPU).

Threads (`threads`): 0 splits the (batch, key/value head) tasks over XLA's intra-op pool, 1 runs
them on the calling thread.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.kernels import native

NAME = "causal_attention"
# Longest sequence the kernel takes: each task keeps a few [T, T] float32 buffers (3 x 4 MiB at
# 1024), which should stay near the core's cache; longer sequences go to the blockwise scan.
MAX_LEN = 1024


def enabled() -> bool:
    """Whether `implementation="auto"` takes the kernel where it is supported: a vector build
    (`native.vector_build`; the portable one steps aside)."""
    return native.vector_build()


def available() -> bool:
    return native.ffi_target(NAME, "CausalAttentionFwd") is not None


def supported(q, k, v) -> bool:
    return (q.ndim == 4 and k.ndim == 4 and v.ndim == 4
            and all(x.dtype == jnp.float32 for x in (q, k, v))
            and q.shape[1] == k.shape[1] <= MAX_LEN and q.shape[-1] % 16 == 0
            and k.shape[2] > 0 and q.shape[2] % k.shape[2] == 0 and available())


def causal_attention(q, k, v, *, scale: float, threads: int = 0, isa: str | None = None):
    """Causal softmax(q k^T * scale) v (see module); `isa` picks a build (tests compare them)."""
    if not supported(q, k, v):
        raise ValueError(f"causal_attention: unsupported operands {q.shape} {q.dtype}, {k.shape}, "
                         f"{v.shape} (see `supported`)")
    return _attention((float(scale), int(threads), isa), q, k, v)


def _targets(isa):
    return (native.ffi_target(NAME, "CausalAttentionFwd", isa),
            native.ffi_target(NAME, "CausalAttentionBwd", isa))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(config, q, k, v):
    return _forward(config, q, k, v)[0]


def _forward(config, q, k, v):
    scale, threads, isa = config
    b, t, h, _ = q.shape
    return native.call(_targets(isa)[0], [q.shape, (b, h, t)], q, k, v, scale=np.float32(scale),
                       threads=np.int64(threads))


def _attention_fwd(config, q, k, v):
    out, lse = _forward(config, q, k, v)
    return out, (q, k, v, out, lse)


def _attention_bwd(config, residuals, d_out):
    scale, threads, isa = config
    q, k, v, out, lse = residuals
    return native.call(_targets(isa)[1], [q.shape, k.shape, v.shape], q, k, v, out, lse,
                       d_out.astype(jnp.float32), scale=np.float32(scale), threads=np.int64(threads))


_attention.defvjp(_attention_fwd, _attention_bwd)
