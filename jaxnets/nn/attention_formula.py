"""The "xla" implementation of jaxnets.nn.attention: softmax(q k^T * scale, masked) v as XLA
ops, logits materialised in float32, with the backward written out (one custom VJP).

    out = xla_attention(q, k, v, causal=True, scale=d ** -0.5)    # [B, T, H, D] in and out

It is the reference every other implementation is checked against and what runs wherever no
kernel applies (dense masks, bf16 on CPU, GPU/TPU fallbacks). Causal attention runs in blocks of
query rows, each against only the keys it may see (`causal_row_blocks`); on CPU the backward's
key-major products get written-out transposes (`_keys_major`); docs/cpu_choices.md measures both.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Mask rules live below nn (kernels build the same masks and must not import jaxnets.nn).
from jaxnets.kernels.masks import split_heads_of_mask, structured_mask
from jaxnets.parallel import sharding


def xla_attention(q, k, v, *, causal=False, mask=None, q_segment_ids=None,
                  kv_segment_ids=None, kv_lengths=None, scale):
    """The textbook formula in float32, logits materialised, with the backward written out.

    Heads-major layout ([B, H, T, D], query groups folded into the rows) makes every product a
    plain batched matmul: traced in the [B, T, H, D] layout, XLA:CPU's forward+backward ran
    4-5x slower, spent on transposes of the logits and a softmax-gradient reduction over keys.
    Causal attention runs in blocks of query rows (`causal_row_blocks`), each against only the
    keys it may see: the masked upper triangle is mostly never computed.
    """
    b, tq, hq, _ = q.shape
    qh, kh, vh, allowed = _heads_major(q, k, v, causal=causal, mask=mask,
                                       q_segment_ids=q_segment_ids,
                                       kv_segment_ids=kv_segment_ids, kv_lengths=kv_lengths)
    hkv, tk, d = kh.shape[1], kh.shape[2], vh.shape[-1]
    qh = (qh * scale).reshape(b, hkv, hq // hkv, tq, -1)
    allowed = allowed.reshape(allowed.shape[:2] + (-1, tq, tk))      # [B|1, Hkv|1, G|1, Tq, Tk]
    # Top-left aligned causal: rows [start, stop) see keys [0, stop) at most.
    blocks = tuple((start, stop, min(stop, tk)) for start, stop in causal_row_blocks(tq)) \
        if causal else ((0, tq, tk),)
    out = _row_blocks_attention(qh, kh, vh, allowed, blocks)        # [B, Hkv, G, Tq, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, tq, hq, d).astype(q.dtype)


# Causal attention in query-row blocks: 4 blocks compute 5/8 of the logits. Measured on the
# 2-core Zen 4 Transformer-LM train steps (docs/cpu_choices.md): 4 blocks beat 1, 2 and 8;
# a block under 32 rows costs more in small products than it saves.
_CAUSAL_ROW_BLOCKS = 4
_MIN_BLOCK_ROWS = 32


def causal_row_blocks(tq: int) -> list[tuple[int, int]]:
    """[start, stop) of the query-row blocks causal attention is computed in."""
    n = max(1, min(_CAUSAL_ROW_BLOCKS, tq // _MIN_BLOCK_ROWS))
    return [(i * tq // n, (i + 1) * tq // n) for i in range(n)]


def attention_probabilities(q, k, *, causal=False, mask=None, q_segment_ids=None,
                            kv_segment_ids=None, kv_lengths=None, scale):
    """softmax(q k^T * scale) under the masks, float32 [B, Hkv, G, Tq, Tk] (G = Hq // Hkv)."""
    b, tq, hq, _ = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    qh, kh, _, allowed = _heads_major(q, k, None, causal=causal, mask=mask,
                                      q_segment_ids=q_segment_ids,
                                      kv_segment_ids=kv_segment_ids, kv_lengths=kv_lengths)
    probs = masked_softmax(jnp.einsum("bhqd,bhkd->bhqk", qh * scale, kh), allowed)
    return probs.reshape(b, hkv, hq // hkv, tq, tk)


def _heads_major(q, k, v, *, causal, mask, q_segment_ids, kv_segment_ids, kv_lengths):
    """float32 q [B, Hkv, G*Tq, D], k and v [B, Hkv, Tk, D] (v None stays None), and the mask
    [B|1, Hkv|1, G*Tq, Tk].

    Query head h*G + g reads key/value head h, so the G query heads of one key head become G
    blocks of rows of one matrix: grouped-query attention needs no copies of k and v.
    """
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    f32 = lambda x: x.astype(jnp.float32)
    qh = f32(q).reshape(b, tq, hkv, groups, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, groups * tq, d)
    kh, vh = (None if x is None else f32(x).transpose(0, 2, 1, 3) for x in (k, v))
    allowed = structured_mask(jnp.arange(tq), jnp.arange(tk), causal=causal,
                              q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                              kv_lengths=kv_lengths)[:, None, None]        # [B|1, 1, 1, Tq, Tk]
    if mask is not None:
        allowed = allowed & split_heads_of_mask(jnp.asarray(mask, bool), hkv, groups)
    if groups > 1:
        allowed = jnp.broadcast_to(allowed, allowed.shape[:2] + (groups, tq, tk))
    return qh, kh, vh, allowed.reshape(allowed.shape[:2] + (-1, tk))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _row_blocks_attention(q, k, v, allowed, blocks):
    """softmax(q k^T, masked) v per [batch, head], q [B, H, G, Tq, D] already scaled, k and v
    [B, H, Tk, D], allowed [B|1, H|1, G|1, Tq, Tk]; rows [start, stop) of each of `blocks`
    read keys [0, keys) only. Zero rows stay zero. One VJP for all blocks: their key
    gradients add up in place instead of through a padded copy per block."""
    return _row_blocks_fwd(q, k, v, allowed, blocks)[0]


def _rows(x, start, stop):
    """Rows [start, stop) of [B, H, G, T, D], groups folded into rows: [B, H, G*(stop-start), D]."""
    return x[:, :, :, start:stop].reshape(x.shape[:2] + (-1, x.shape[-1]))


def _unfold_rows(x, groups):
    return x.reshape(x.shape[:2] + (groups, -1, x.shape[-1]))


def _row_blocks_fwd(q, k, v, allowed, blocks):
    outs, probs = [], []
    for start, stop, keys in blocks:
        p = masked_softmax(jnp.einsum("bhqd,bhkd->bhqk", _rows(q, start, stop), k[:, :, :keys]),
                           _rows(allowed[..., :keys], start, stop))
        outs.append(_unfold_rows(jnp.einsum("bhqk,bhkd->bhqd", p, v[:, :, :keys]), q.shape[2]))
        probs.append(p)
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out, (q, k, v, probs, out)


def _row_blocks_bwd(blocks, residuals, d_out):
    # dS = P * (dP - rowsum(dO * O)) (flash attention's form): the row sum runs over head_dim
    # instead of over the keys, and a masked entry (P = 0) gets no gradient.
    q, k, v, probs, out = residuals
    dq, dk, dv = [], jnp.zeros_like(k), jnp.zeros_like(v)
    for (start, stop, keys), p in zip(blocks, probs):
        do, o = _rows(d_out, start, stop), _rows(out, start, stop)
        dv = _add_to_keys(dv, jnp.einsum("bhkq,bhqd->bhkd", _keys_major(p), do))
        dp = jnp.einsum("bhqd,bhkd->bhqk", do, v[:, :, :keys])
        ds = p * (dp - jnp.sum(do * o, axis=-1, keepdims=True))
        dq.append(_unfold_rows(jnp.einsum("bhqk,bhkd->bhqd", ds, k[:, :, :keys]), q.shape[2]))
        dk = _add_to_keys(dk, jnp.einsum("bhkq,bhqd->bhkd", _keys_major(ds), _rows(q, start, stop)))
    return dq[0] if len(dq) == 1 else jnp.concatenate(dq, axis=3), dk, dv, None


_row_blocks_attention.defvjp(_row_blocks_fwd, _row_blocks_bwd)


def _add_to_keys(total, part):
    """total[:, :, :keys] += part for the first `keys` keys: an update in place, not a scatter."""
    keys = part.shape[2]
    if keys == total.shape[2]:
        return total + part
    return jax.lax.dynamic_update_slice_in_dim(total, total[:, :, :keys] + part, 0, axis=2)


def _keys_major(x):
    """[..., Tq, Tk] -> [..., Tk, Tq], written out on CPU: XLA:CPU folds a transpose into the
    product as a contraction over the lhs's rows, which it runs on Eigen at a fraction of the
    speed of the plain batched matmul the written-out copy gets (docs/cpu_choices.md)."""
    x = jnp.swapaxes(x, -1, -2)
    return jax.lax.optimization_barrier(x) if sharding.current_platform() == "cpu" else x



def masked_softmax(logits, allowed):
    """softmax over the last axis restricted to `allowed`; all-masked rows give zeros."""
    logits = jnp.where(allowed, logits, -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    weights = jnp.where(allowed, jnp.exp(logits - row_max), 0.0)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    return weights / jnp.where(total == 0, 1.0, total)
