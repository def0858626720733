"""Attention in O(T) memory in pure JAX: online softmax over key blocks, hand-written backward.

The forward pass scans over blocks of keys keeping, for every query, the running maximum m,
the running normaliser l and the unnormalised output (Milakov & Gimelshein 2018; the
FlashAttention recurrence). Only the log-sum-exp L = m + log l is saved for the backward pass,
which scans over the key blocks again and recomputes the probabilities
P = exp(S - L) block by block:
    dV_j = P_j^T dO,   dP_j = dO V_j^T,   dS_j = P_j * (dP_j - rowsum(dO * O)),
    dQ  += scale * dS_j K_j,   dK_j = scale * dS_j^T Q.
Autodiff through the scan would store every block's probabilities (O(T^2) again), hence the
custom_vjp. Peak memory is the inputs plus a few [B, H, Tq, block_k] temporaries.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnets.kernels.masks import split_heads_of_mask, structured_mask

# The [B, H, Tq, block_k] float32 temporaries of one step hold about this many elements.
_TARGET_BLOCK_ELEMENTS = 1 << 23


def default_block_k(batch, heads, q_len, kv_len):
    """Largest power-of-two key block whose temporaries stay near the target size."""
    block = 16
    while block < 512 and block < kv_len and 2 * block * batch * heads * q_len <= _TARGET_BLOCK_ELEMENTS:
        block *= 2
    return block


def blockwise_attention(q, k, v, *, causal=False, mask=None, q_segment_ids=None,
                        kv_segment_ids=None, kv_lengths=None, scale, block_k=None):
    """Same contract as jaxnets.nn.attention_formula.xla_attention, O(T) memory forward and backward."""
    b, tq, hq, _ = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    block_k = block_k or default_block_k(b, hq, tq, tk)
    pad = -tk % block_k
    if pad:  # padded keys are masked through `kv_lengths`-style validity below
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        if kv_segment_ids is not None:
            kv_segment_ids = jnp.pad(kv_segment_ids, ((0, 0), (0, pad)))
        if mask is not None and mask.shape[-1] != 1:
            mask = jnp.pad(mask, ((0, 0),) * 3 + ((0, pad),))
    if mask is not None:
        mask = split_heads_of_mask(mask, hkv, hq // hkv)
        mask = jnp.broadcast_to(mask, mask.shape[:-1] + (tk + pad,))
    lengths = jnp.full((b,), tk, jnp.int32) if kv_lengths is None else \
        jnp.minimum(jnp.asarray(kv_lengths, jnp.int32), tk)
    config = (causal, float(scale), block_k)
    return _attention(config, q, k, v, mask, q_segment_ids, kv_segment_ids, lengths)


def _key_blocks(x, block_k, axis):
    """Split `axis` into [n_blocks, ..., block_k, ...] with the block index leading (for scan)."""
    if x is None:
        return None
    n = x.shape[axis] // block_k
    x = x.reshape(x.shape[:axis] + (n, block_k) + x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


def _blocks(config, k, v, mask, kv_seg):
    _, _, block_k = config
    n = k.shape[1] // block_k
    return (jnp.arange(n) * block_k, _key_blocks(k, block_k, 1), _key_blocks(v, block_k, 1),
            _key_blocks(mask, block_k, mask.ndim - 1) if mask is not None else None,
            _key_blocks(kv_seg, block_k, 1))


def _block_logits_and_mask(config, q, k_blk, start, mask_blk, q_seg, kv_seg_blk, lengths):
    """Scaled logits [B, Hkv, G, Tq, bk] of one key block and where they are allowed."""
    causal, scale, block_k = config
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", q, k_blk, preferred_element_type=jnp.float32) * scale
    k_pos = start + jnp.arange(block_k)
    allowed = structured_mask(jnp.arange(q.shape[1]), k_pos, causal=causal, q_segment_ids=q_seg,
                              kv_segment_ids=kv_seg_blk, kv_lengths=lengths)[:, None, None]
    if mask_blk is not None:
        allowed = allowed & mask_blk
    return logits, allowed


def _forward(config, q, k, v, mask, q_seg, kv_seg, lengths):
    b, tq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, tq, hkv, hq // hkv, d)
    shape = (b, hkv, hq // hkv, tq)

    def step(carry, blk):
        m, l, acc = carry
        start, k_blk, v_blk, mask_blk, seg_blk = blk
        s, allowed = _block_logits_and_mask(config, qg, k_blk, start, mask_blk, q_seg, seg_blk,
                                            lengths)
        s = jnp.where(allowed, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing seen yet
        correction = jnp.exp(m - m_safe)
        p = jnp.exp(s - m_safe[..., None])  # exactly 0 where masked
        l = l * correction + jnp.sum(p, axis=-1)
        acc = acc * correction[..., None] + jnp.einsum(
            "bhgqk,bkhd->bhgqd", p, v_blk.astype(jnp.float32))
        return (m_new, l, acc), None

    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32),
            jnp.zeros(shape + (v.shape[-1],), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(step, init, _blocks(config, k, v, mask, kv_seg))
    out = acc / jnp.where(l == 0, 1.0, l)[..., None]
    lse = jnp.where(l == 0, 0.0, m + jnp.log(jnp.where(l == 0, 1.0, l)))
    out = jnp.moveaxis(out, 3, 1).reshape(b, tq, hq, v.shape[-1])  # [B, Tq, Hq, Dv]
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(config, q, k, v, mask, q_seg, kv_seg, lengths):
    return _forward(config, q, k, v, mask, q_seg, kv_seg, lengths)[0].astype(q.dtype)


def _attention_fwd(config, q, k, v, mask, q_seg, kv_seg, lengths):
    out, lse = _forward(config, q, k, v, mask, q_seg, kv_seg, lengths)
    return out.astype(q.dtype), (q, k, v, mask, q_seg, kv_seg, lengths, out, lse)


def _attention_bwd(config, residuals, d_out):
    q, k, v, mask, q_seg, kv_seg, lengths, out, lse = residuals
    _, scale, block_k = config
    b, tq, hq, d = q.shape
    hkv = k.shape[2]
    groups = hq // hkv
    qg = q.reshape(b, tq, hkv, groups, d)
    do = d_out.astype(jnp.float32).reshape(b, tq, hkv, groups, -1)
    # rowsum(dO * O) = sum_j P_ij dP_ij: the softmax Jacobian's diagonal correction.
    delta = jnp.einsum("bqhgd,bqhgd->bhgq", do, out.reshape(do.shape))

    def step(dq, blk):
        start, k_blk, v_blk, mask_blk, seg_blk = blk
        s, allowed = _block_logits_and_mask(config, qg, k_blk, start, mask_blk, q_seg, seg_blk,
                                            lengths)
        p = jnp.where(allowed, jnp.exp(s - lse[..., None]), 0.0)
        dv_blk = jnp.einsum("bhgqk,bqhgd->bkhd", p, do)
        dp = jnp.einsum("bqhgd,bkhd->bhgqk", do, v_blk.astype(jnp.float32))
        ds = p * (dp - delta[..., None]) * scale
        dq = dq + jnp.einsum("bhgqk,bkhd->bqhgd", ds, k_blk.astype(jnp.float32))
        dk_blk = jnp.einsum("bhgqk,bqhgd->bkhd", ds, qg.astype(jnp.float32))
        return dq, (dk_blk, dv_blk)

    dq, (dk, dv) = jax.lax.scan(step, jnp.zeros(qg.shape, jnp.float32),
                                _blocks(config, k, v, mask, kv_seg))
    # [n, B, bk, Hkv, D] -> [B, n * bk, Hkv, D]
    dk = jnp.moveaxis(dk, 0, 1).reshape(k.shape)
    dv = jnp.moveaxis(dv, 0, 1).reshape(v.shape)
    return (dq.reshape(q.shape).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
            None, None, None, None)


_attention.defvjp(_attention_fwd, _attention_bwd)
