"""Rotary position embeddings (RoFormer, Su et al. 2021), as in Llama.

    q = apply_rotary(q, positions)      # q [B, T, H, D], positions [T] or [B, T]

Feature pairs (i, i + D/2) of a query or key at position p are rotated by the angle
p * base^(-2i / D): the dot product of a rotated query and key then depends on their
positions only through p_q - p_k. The half-split pairing (not interleaved) is Llama's and
GPT-NeoX's layout. Computed in float32, returned in the input's dtype.
"""
from __future__ import annotations

import jax.numpy as jnp


def rotary_angles(positions, head_dim: int, *, base: float = 10000.0):
    """Angles positions.shape + (head_dim // 2,): p * base^(-2i / head_dim)."""
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even head_dim, got {head_dim}.")
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    return jnp.asarray(positions, jnp.float32)[..., None] * inv_freq


def apply_rotary(x, positions, *, base: float = 10000.0):
    """Rotate x [B, T, H, D] by its positions ([T] or [B, T]); pairs are (i, i + D/2)."""
    angles = rotary_angles(positions, x.shape[-1], base=base)
    if angles.ndim == 2:                       # [T, D/2] -> [1, T, 1, D/2]
        angles = angles[None]
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
