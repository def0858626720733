"""The gated feed-forward block of Llama-style Transformer layers.

    SwiGLU(d_model, d_ff)(x) = W_down (silu(W_gate x) * (W_up x))
    (Shazeer 2020, "GLU Variants Improve Transformer"; silu(z) = z sigmoid(z))

Kernels are named ("embed", "mlp") in and ("mlp", "embed") out, so FSDP shards the model
width and tensor parallelism the hidden units; the hidden activation is pinned to
[batch split, -, mlp] (`constrain`).
"""
from __future__ import annotations

import jax
from flax import nnx

from jaxnets.nn.layers import Linear
from jaxnets.parallel.sharding import constrain


class SwiGLU(nnx.Module):
    def __init__(self, d_model: int, d_ff: int, *, use_bias=False, dtype=None, dot_general=None,
                 rngs: nnx.Rngs):
        extra = {} if dot_general is None else {"dot_general": dot_general}
        dense = lambda i, o, axes: Linear(i, o, axes=axes, use_bias=use_bias, dtype=dtype,
                                          rngs=rngs, **extra)
        self.gate = dense(d_model, d_ff, ("embed", "mlp"))
        self.up = dense(d_model, d_ff, ("embed", "mlp"))
        self.down = dense(d_ff, d_model, ("mlp", "embed"))

    def __call__(self, x):
        hidden = jax.nn.silu(self.gate(x)) * self.up(x)
        return self.down(constrain(hidden, ("batch", None, "mlp")))
