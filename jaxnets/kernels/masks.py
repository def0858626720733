"""Attention mask rules shared by every implementation that builds masks in JAX.

They sit in `jaxnets.kernels` (below `jaxnets.nn`) so that kernels can use them without
importing the layers that call the kernels.
"""
from __future__ import annotations

import jax.numpy as jnp


def structured_mask(q_pos, k_pos, *, causal, q_segment_ids=None, kv_segment_ids=None,
                    kv_lengths=None):
    """Boolean [B|1, Tq, Tk] mask from causal / segment / length rules at these positions.

    `kv_segment_ids` and `k_pos` may cover one key block (the blockwise scan), so the rule
    is written once for every implementation that builds masks in JAX.
    """
    allowed = jnp.ones((1, q_pos.shape[0], k_pos.shape[0]), bool)
    if causal:
        allowed = allowed & (q_pos[:, None] >= k_pos[None, :])[None]
    if q_segment_ids is not None:
        allowed = allowed & (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])
    if kv_lengths is not None:
        allowed = allowed & (k_pos[None, None, :] < jnp.asarray(kv_lengths)[:, None, None])
    return allowed


def split_heads_of_mask(mask, kv_heads, groups):
    """[B|1, Hq|1, Tq|1, Tk|1] -> [B|1, Hkv|1, G|1, Tq|1, Tk|1] to match grouped logits."""
    b, h, tq, tk = mask.shape
    if h == 1:
        return mask[:, :, None]
    return mask.reshape(b, kv_heads, groups, tq, tk)
