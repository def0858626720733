"""Flash attention as Pallas kernels: fused forward, fused dq/dk/dv backward, under custom_vjp.

    out = flash_attention(q, k, v, causal=True, q_segment_ids=s, kv_segment_ids=s)

q is [B, Tq, Hq, D], k and v [B, Tk, Hkv, D] with Hq a multiple of Hkv (grouped-query heads).
Masks: `causal` (query i sees keys j <= i) and segment ids (a query sees keys with the same id;
padding keys carry an id no query has, see jaxnets.nn.attention). Rows that see no key give 0.

Forward (grid: query block x batch x query head). Each program keeps one [block_q, D] tile of Q
and streams [block_k, D] tiles of K and V, with the online-softmax recurrence in float32
(base-2 exponentials: exp(x) = 2^(x log2 e), one multiply folded into the scale). Under
`causal` it visits only key blocks at or left of the diagonal, and applies the causal mask
only on the blocks that straddle it. It writes O and the log-sum-exp (base 2) per row.

Backward (grid: batch x query head x block index): one kernel, two phases per program. Phase 1
holds a K/V tile and streams Q/dO tiles to accumulate dK and dV; phase 2 holds a Q/dO tile and
streams K/V tiles to accumulate dQ. Probabilities are recomputed from the saved log-sum-exp,
so nothing of size T^2 is stored. With grouped heads dK/dV are produced per query head and
summed over the group outside the kernel.

Inputs may be float32, bfloat16 or float16; matmuls accumulate in float32. The head dimension
is zero-padded to a power of two >= 16 (Triton tiles); sequence lengths are padded to the
block sizes and the padding keys masked. On GPU this lowers through Triton; elsewhere
`interpret=True` (chosen automatically) runs the same kernels through the Pallas interpreter.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


_LOG2E = math.log2(math.e)
_PAD_SEGMENT = -(2 ** 31)  # id of padding keys and queries: never equal to a real id (>= 0)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes and Triton launch parameters; tune per GPU and head dim."""
    block_q: int = 128
    block_k: int = 64
    block_q_bwd: int = 64
    block_k_bwd: int = 64
    num_warps: int = 4
    num_stages: int = 3
    num_warps_bwd: int = 4
    num_stages_bwd: int = 2

    @classmethod
    def for_head_dim(cls, head_dim: int) -> "BlockSizes":
        """Defaults sized so a tile set fits in shared memory at this head dim."""
        if head_dim <= 64:
            return cls(128, 64, 64, 64, num_warps=4, num_stages=3)
        if head_dim <= 128:
            return cls(128, 64, 64, 64, num_warps=8, num_stages=2, num_warps_bwd=8)
        return cls(64, 32, 32, 32, num_warps=8, num_stages=2, num_warps_bwd=8, num_stages_bwd=1)


def flash_attention(q, k, v, *, causal=False, q_segment_ids=None, kv_segment_ids=None,
                    scale=None, block_sizes: BlockSizes | None = None, interpret=None):
    """Fused attention; differentiable (custom_vjp). See the module docstring."""
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    if v.shape != k.shape or k.shape[0] != b or k.shape[-1] != d or hq % hkv:
        raise ValueError(f"flash_attention needs q [B,Tq,Hq,D], k = v [B,Tk,Hkv,D] with Hkv | Hq; "
                         f"got {q.shape}, {k.shape}, {v.shape}.")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("Pass both q_segment_ids and kv_segment_ids, or neither.")
    if d > 256:
        raise ValueError(f"flash_attention supports head_dim <= 256, got {d}.")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    blocks = block_sizes or BlockSizes.for_head_dim(d)
    # Tiles never exceed the (power-of-two rounded) sequence, nor go below Triton's 16.
    fit = lambda blk, t: max(16, min(blk, pl.next_power_of_2(t)))
    blocks = dataclasses.replace(
        blocks, block_q=fit(blocks.block_q, tq), block_k=fit(blocks.block_k, tk),
        block_q_bwd=fit(blocks.block_q_bwd, tq), block_k_bwd=fit(blocks.block_k_bwd, tk))

    d_pad = max(16, pl.next_power_of_2(d))
    tq_pad = _round_up(tq, max(blocks.block_q, blocks.block_q_bwd))
    tk_pad = _round_up(tk, max(blocks.block_k, blocks.block_k_bwd))
    pad = lambda x, t, dd: jnp.pad(x, ((0, 0), (0, t - x.shape[1]), (0, 0), (0, dd - x.shape[3])))
    q_p, k_p, v_p = pad(q, tq_pad, d_pad), pad(k, tk_pad, d_pad), pad(v, tk_pad, d_pad)
    # Padding keys must be masked unless causality already hides them from every real query.
    keys_need_mask = tk_pad != tk and not (causal and tq <= tk)
    if q_segment_ids is None and keys_need_mask:
        q_segment_ids = jnp.zeros((b, tq), jnp.int32)
        kv_segment_ids = jnp.zeros((b, tk), jnp.int32)
    if q_segment_ids is not None:
        q_segment_ids = jnp.pad(jnp.asarray(q_segment_ids, jnp.int32), ((0, 0), (0, tq_pad - tq)),
                                constant_values=_PAD_SEGMENT + 1)
        kv_segment_ids = jnp.pad(jnp.asarray(kv_segment_ids, jnp.int32),
                                 ((0, 0), (0, tk_pad - tk)), constant_values=_PAD_SEGMENT)
    config = _Config(causal, scale, blocks, interpret)
    out = _flash(config, q_p, k_p, v_p, q_segment_ids, kv_segment_ids)
    return out[:, :tq, :, :d]


@dataclasses.dataclass(frozen=True)
class _Config:
    causal: bool
    scale: float
    blocks: BlockSizes
    interpret: bool


def _round_up(x, m):
    return -(-x // m) * m


def _allowed(q_pos, k_pos, q_seg, kv_seg, causal):
    """Boolean [bq, bk] tile mask, or None when nothing needs masking."""
    allowed = None
    if causal:
        allowed = q_pos[:, None] >= k_pos[None, :]
    if q_seg is not None:
        same = q_seg[:, None] == kv_seg[None, :]
        allowed = same if allowed is None else allowed & same
    return allowed


def _dot(a, b, trans_b=False):
    dims = (((1,), (1,)), ((), ())) if trans_b else (((1,), (0,)), ((), ()))
    # float32 inputs stay float32 on GPU (no silent TF32); half inputs accumulate in float32.
    precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jax.lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _causal_split(q_start, q_block, k_block, n_k):
    """Key blocks [0, full) are entirely visible to this query block; [full, end) straddle."""
    full = jnp.minimum(q_start // k_block, n_k)
    end = jnp.minimum((q_start + q_block + k_block - 1) // k_block, n_k)
    return full, end


def _forward_kernel(q_ref, k_ref, v_ref, *refs, config: _Config, segmented: bool):
    q_seg_ref, kv_seg_ref, o_ref, lse_ref = refs if segmented else (None, None) + refs
    bq, bk = config.blocks.block_q, config.blocks.block_k
    n_k = k_ref.shape[0] // bk
    q_start = pl.program_id(0) * bq
    q = q_ref[...]
    q_pos = q_start + jnp.arange(bq)
    q_seg = q_seg_ref[...] if segmented else None
    qk_scale = config.scale * _LOG2E

    def visit(j, carry, causal):
        m, l, acc = carry
        k_slice = pl.ds(j * bk, bk)
        s = _dot(q, k_ref[k_slice, :], trans_b=True) * qk_scale
        allowed = _allowed(q_pos, j * bk + jnp.arange(bk), q_seg,
                           kv_seg_ref[k_slice] if segmented else None, causal)
        if allowed is not None:
            s = jnp.where(allowed, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows that saw no key yet
        correction = jnp.exp2(m - m_safe)
        p = jnp.exp2(s - m_safe[:, None])
        l = l * correction + jnp.sum(p, axis=1)
        v = v_ref[k_slice, :]
        acc = acc * correction[:, None] + _dot(p.astype(v.dtype), v)
        return m_new, l, acc

    carry = (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
             jnp.zeros((bq, q.shape[-1]), jnp.float32))
    if config.causal:
        full, end = _causal_split(q_start, bq, bk, n_k)
        carry = jax.lax.fori_loop(0, full, functools.partial(visit, causal=False), carry)
        carry = jax.lax.fori_loop(full, end, functools.partial(visit, causal=True), carry)
    else:
        carry = jax.lax.fori_loop(0, n_k, functools.partial(visit, causal=False), carry)
    m, l, acc = carry
    empty = l == 0.0
    o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, 0.0, m + jnp.log2(jnp.where(empty, 1.0, l)))


def _forward(config: _Config, q, k, v, q_seg, kv_seg):
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    bq = config.blocks.block_q
    segmented = q_seg is not None
    in_specs = [pl.BlockSpec((None, bq, None, d), lambda i, bb, h: (bb, i, h, 0)),
                pl.BlockSpec((None, tk, None, d), lambda i, bb, h: (bb, 0, h // groups, 0)),
                pl.BlockSpec((None, tk, None, d), lambda i, bb, h: (bb, 0, h // groups, 0))]
    args = [q, k, v]
    if segmented:
        in_specs += [pl.BlockSpec((None, bq), lambda i, bb, h: (bb, i)),
                     pl.BlockSpec((None, tk), lambda i, bb, h: (bb, 0))]
        args += [q_seg, kv_seg]
    return pl.pallas_call(
        functools.partial(_forward_kernel, config=config, segmented=segmented),
        grid=(tq // bq, b, hq),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, bq, None, d), lambda i, bb, h: (bb, i, h, 0)),
                   pl.BlockSpec((None, None, bq), lambda i, bb, h: (bb, h, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, hq, tq), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=config.blocks.num_warps,
                                             num_stages=config.blocks.num_stages),
        interpret=config.interpret,
        name="flash_attention_fwd",
    )(*args)


def _backward_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, config: _Config,
                     segmented: bool):
    q_seg_ref, kv_seg_ref, dq_ref, dk_ref, dv_ref = refs if segmented else (None, None) + refs
    bq, bk = config.blocks.block_q_bwd, config.blocks.block_k_bwd
    n_q, n_k = q_ref.shape[0] // bq, k_ref.shape[0] // bk
    j = pl.program_id(2)
    qk_scale = config.scale * _LOG2E

    def probs_and_dscores(q_start, k_start, q, k, v, do, causal):
        """P and dS/scale of one [bq, bk] tile, recomputed from the saved log-sum-exp."""
        q_slice = pl.ds(q_start, bq)
        s = _dot(q, k, trans_b=True) * qk_scale
        p = jnp.exp2(s - lse_ref[q_slice][:, None])
        allowed = _allowed(q_start + jnp.arange(bq), k_start + jnp.arange(bk),
                           q_seg_ref[q_slice] if segmented else None,
                           kv_seg_ref[pl.ds(k_start, bk)] if segmented else None, causal)
        if allowed is not None:
            p = jnp.where(allowed, p, 0.0)
        dp = _dot(do, v, trans_b=True)
        return p, p * (dp - delta_ref[q_slice][:, None])

    @pl.when(j < n_k)
    def _dk_dv():  # phase 1: one K/V tile, stream Q and dO
        k_start = j * bk
        k, v = k_ref[pl.ds(k_start, bk), :], v_ref[pl.ds(k_start, bk), :]

        def visit(i, carry, causal):
            dk, dv = carry
            q_start = i * bq
            q, do = q_ref[pl.ds(q_start, bq), :], do_ref[pl.ds(q_start, bq), :]
            p, ds = probs_and_dscores(q_start, k_start, q, k, v, do, causal)
            dv = dv + _dot(p.T.astype(do.dtype), do)
            dk = dk + _dot(ds.T.astype(q.dtype), q)
            return dk, dv

        zeros = jnp.zeros((bk, k.shape[-1]), jnp.float32)
        carry = (zeros, zeros)
        if config.causal:  # query blocks below the diagonal see this whole key block
            first = jnp.minimum(k_start // bq, n_q)
            straddle_end = jnp.minimum((k_start + bk + bq - 1) // bq, n_q)
            carry = jax.lax.fori_loop(first, straddle_end, functools.partial(visit, causal=True),
                                      carry)
            carry = jax.lax.fori_loop(straddle_end, n_q, functools.partial(visit, causal=False),
                                      carry)
        else:
            carry = jax.lax.fori_loop(0, n_q, functools.partial(visit, causal=False), carry)
        dk, dv = carry
        dk_ref[pl.ds(k_start, bk), :] = (dk * config.scale).astype(dk_ref.dtype)
        dv_ref[pl.ds(k_start, bk), :] = dv.astype(dv_ref.dtype)

    @pl.when(j < n_q)
    def _dq():  # phase 2: one Q/dO tile, stream K and V
        q_start = j * bq
        q, do = q_ref[pl.ds(q_start, bq), :], do_ref[pl.ds(q_start, bq), :]

        def visit(i, dq, causal):
            k_start = i * bk
            k, v = k_ref[pl.ds(k_start, bk), :], v_ref[pl.ds(k_start, bk), :]
            _, ds = probs_and_dscores(q_start, k_start, q, k, v, do, causal)
            return dq + _dot(ds.astype(k.dtype), k)

        dq = jnp.zeros((bq, q.shape[-1]), jnp.float32)
        if config.causal:
            full, end = _causal_split(q_start, bq, bk, n_k)
            dq = jax.lax.fori_loop(0, full, functools.partial(visit, causal=False), dq)
            dq = jax.lax.fori_loop(full, end, functools.partial(visit, causal=True), dq)
        else:
            dq = jax.lax.fori_loop(0, n_k, functools.partial(visit, causal=False), dq)
        dq_ref[pl.ds(q_start, bq), :] = (dq * config.scale).astype(dq_ref.dtype)


def _backward(config: _Config, q, k, v, q_seg, kv_seg, out, lse, d_out):
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    bq, bk = config.blocks.block_q_bwd, config.blocks.block_k_bwd
    # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij; cheap, so plain XLA.
    delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    segmented = q_seg is not None
    q_spec = pl.BlockSpec((None, tq, None, d), lambda bb, h, j: (bb, 0, h, 0))
    kv_spec = pl.BlockSpec((None, tk, None, d), lambda bb, h, j: (bb, 0, h // groups, 0))
    row_spec = pl.BlockSpec((None, None, tq), lambda bb, h, j: (bb, h, 0))
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    args = [q, k, v, d_out.astype(q.dtype), lse, delta]
    if segmented:
        in_specs += [pl.BlockSpec((None, tq), lambda bb, h, j: (bb, 0)),
                     pl.BlockSpec((None, tk), lambda bb, h, j: (bb, 0))]
        args += [q_seg, kv_seg]
    per_q_head_kv = pl.BlockSpec((None, tk, None, d), lambda bb, h, j: (bb, 0, h, 0))
    dq, dk, dv = pl.pallas_call(
        functools.partial(_backward_kernel, config=config, segmented=segmented),
        grid=(b, hq, max(tq // bq, tk // bk)),
        in_specs=in_specs,
        out_specs=[q_spec, per_q_head_kv, per_q_head_kv],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, tk, hq, d), k.dtype),
                   jax.ShapeDtypeStruct((b, tk, hq, d), v.dtype)],
        compiler_params=plgpu.CompilerParams(num_warps=config.blocks.num_warps_bwd,
                                             num_stages=config.blocks.num_stages_bwd),
        interpret=config.interpret,
        name="flash_attention_bwd",
    )(*args)
    if groups > 1:  # each query head produced its share of its kv head's gradient
        dk = dk.reshape(b, tk, hkv, groups, d).sum(3, dtype=jnp.float32).astype(k.dtype)
        dv = dv.reshape(b, tk, hkv, groups, d).sum(3, dtype=jnp.float32).astype(v.dtype)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(config, q, k, v, q_seg, kv_seg):
    return _forward(config, q, k, v, q_seg, kv_seg)[0]


def _flash_fwd(config, q, k, v, q_seg, kv_seg):
    out, lse = _forward(config, q, k, v, q_seg, kv_seg)
    return out, (q, k, v, q_seg, kv_seg, out, lse)


def _flash_bwd(config, residuals, d_out):
    dq, dk, dv = _backward(config, *residuals, d_out)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
