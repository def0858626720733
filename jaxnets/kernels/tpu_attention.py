"""The Pallas TPU flash-attention kernel that ships with jax, in jaxnets' layout and masks.

    out = tpu_flash_attention(q, k, v, causal=True, q_segment_ids=s, kv_segment_ids=s)

q [B, Tq, Hq, D], k and v [B, Tk, Hkv, D] (grouped heads are repeated to Hq: the upstream kernel
takes equal head counts). Segment ids follow jaxnets' convention (padding keys carry an id no
query has). On TPU this is the compiled Mosaic kernel; elsewhere it runs in Pallas' TPU
interpret mode (`force_tpu_interpret_mode`), which is how the CPU tests check it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu import flash_attention as upstream


# The upstream kernel tiles sequences in blocks of 128 (its default BlockSizes).
BLOCK = 128


def supports(q, k) -> bool:
    """Whether the kernel's tiling fits these shapes (else `auto` falls back to XLA)."""
    return q.shape[1] % BLOCK == 0 and k.shape[1] % BLOCK == 0 and q.shape[-1] % 128 in (0, 64)


def tpu_flash_attention(q, k, v, *, causal=False, q_segment_ids=None, kv_segment_ids=None,
                        scale=None, interpret: bool | None = None):
    """`interpret`: Pallas' TPU interpret mode (default: unless JAX's backend is a TPU). A
    program compiled ahead of time for a TPU slice from a CPU host passes False."""
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("Pass both q_segment_ids and kv_segment_ids, or neither.")
    if not supports(q, k):
        raise ValueError(f"implementation='pallas_tpu' needs sequence lengths that are multiples "
                         f"of {BLOCK} and head_dim a multiple of 64; got q {q.shape}, k {k.shape}.")
    groups = q.shape[2] // k.shape[2]
    if groups > 1:
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    to_bhtd = lambda x: jnp.swapaxes(x, 1, 2)
    segments = None
    if q_segment_ids is not None:
        segments = upstream.SegmentIds(q=q_segment_ids.astype(jnp.int32),
                                       kv=kv_segment_ids.astype(jnp.int32))
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def call():
        return upstream.flash_attention(to_bhtd(q), to_bhtd(k), to_bhtd(v), segment_ids=segments,
                                        causal=causal, sm_scale=scale)

    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    if not interpret:
        out = call()
    else:
        with pltpu.force_tpu_interpret_mode():
            out = call()
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)
