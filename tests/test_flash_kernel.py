"""The Pallas flash-attention kernel, called directly, in interpret mode on CPU (tiny shapes).

The same kernels lower to Triton on GPU; `test_lowers_to_triton` checks that lowering here
(it needs no GPU), so a kernel that only works in the interpreter is caught before a GPU run.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets.kernels.flash_attention import BlockSizes, flash_attention
from jaxnets.nn.attention import reference_attention_numpy
from test_attention import allowed_numpy, reference_grads_numpy

TINY_BLOCKS = BlockSizes(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16)


def random_qkv(b, tq, tk, hq, hkv, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(b, tq, hq, d)), dtype),
            jnp.asarray(rng.normal(size=(b, tk, hkv, d)), dtype),
            jnp.asarray(rng.normal(size=(b, tk, hkv, d)), dtype))


def run(q, k, v, d_out, **kw):
    """Output and VJP of the kernel, one jit (interpret mode traces the kernel once)."""
    f = lambda q, k, v: flash_attention(q, k, v, block_sizes=TINY_BLOCKS, **kw)
    loss = lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * d_out)
    return jax.jit(lambda *a: (f(*a), jax.grad(loss, argnums=(0, 1, 2))(*a)))(q, k, v)


@pytest.mark.parametrize("causal", [False, True])
def test_several_blocks_causal_skipping_gqa_and_segments(causal):
    """48 queries x 40 keys in 16-blocks: full, straddling, skipped and padded tiles."""
    b, tq, tk, hq, hkv, d = 1, 48, 40, 4, 2, 16
    q, k, v = random_qkv(b, tq, tk, hq, hkv, d, jnp.float32)
    rng = np.random.default_rng(1)
    seg = (np.sort(rng.integers(0, 2, (b, tq)), 1).astype(np.int32),
           np.sort(rng.integers(0, 2, (b, tk)), 1).astype(np.int32))
    d_out = rng.normal(size=q.shape).astype(np.float32)
    out, grads = run(q, k, v, d_out, causal=causal, q_segment_ids=seg[0], kv_segment_ids=seg[1])
    kw = dict(causal=causal, segment_ids=seg)
    np.testing.assert_allclose(out, reference_attention_numpy(q, k, v, **kw), atol=2e-5, rtol=2e-5)
    allowed = allowed_numpy(b, hq, tq, tk, **kw)
    for got, want in zip(grads, reference_grads_numpy(q, k, v, d_out, allowed, d ** -0.5)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    q, k, v = random_qkv(2, 32, 32, 2, 2, 64, dtype, seed=2)
    d_out = np.random.default_rng(3).normal(size=q.shape).astype(np.float32)
    out, grads = run(q, k, v, jnp.asarray(d_out, dtype), causal=True)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
    ref = reference_attention_numpy(q64, k64, v64, causal=True)
    # Errors: P rounded to the input dtype before P V (2^-8 for bf16) plus the output rounding.
    tol = 2e-2 if dtype == jnp.bfloat16 else 4e-3
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=tol, rtol=tol)
    allowed = allowed_numpy(2, 2, 32, 32, causal=True)
    d_out_rounded = np.asarray(jnp.asarray(d_out, dtype), np.float64)
    for got, want in zip(grads, reference_grads_numpy(q64, k64, v64, d_out_rounded, allowed, 0.125)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=8 * tol, rtol=8 * tol)


def test_padding_queries_and_empty_rows():
    """Odd lengths, head_dim 24 (padded to 32), and a query whose segment has no keys -> 0."""
    q, k, v = random_qkv(1, 19, 23, 2, 1, 24, jnp.float32, seed=4)
    q_seg = np.zeros((1, 19), np.int32)
    q_seg[0, -1] = 5  # no key carries id 5
    kv_seg = np.zeros((1, 23), np.int32)
    d_out = np.random.default_rng(5).normal(size=q.shape).astype(np.float32)
    out, grads = run(q, k, v, d_out, q_segment_ids=q_seg, kv_segment_ids=kv_seg, scale=0.3)
    kw = dict(segment_ids=(q_seg, kv_seg), scale=0.3)
    np.testing.assert_allclose(out, reference_attention_numpy(q, k, v, **kw), atol=2e-5, rtol=2e-5)
    np.testing.assert_array_equal(np.asarray(out[0, -1]), 0.0)
    want = reference_grads_numpy(q, k, v, d_out, allowed_numpy(1, 2, 19, 23, segment_ids=(q_seg, kv_seg)), 0.3)
    for got, w in zip(grads, want):
        np.testing.assert_allclose(got, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head_dim,dtype", [(64, jnp.bfloat16), (128, jnp.float16),
                                            (256, jnp.bfloat16), (128, jnp.float32)])
def test_lowers_to_triton(head_dim, dtype):
    """Forward and fused backward lower through Pallas' Triton backend for CUDA (no GPU needed)."""
    q = jax.ShapeDtypeStruct((2, 384, 4, head_dim), dtype)
    kv = jax.ShapeDtypeStruct((2, 384, 2, head_dim), dtype)
    seg = jax.ShapeDtypeStruct((2, 384), jnp.int32)

    def loss(q, k, v, s):
        out = flash_attention(q, k, v, causal=True, q_segment_ids=s, kv_segment_ids=s,
                              interpret=False)
        return jnp.sum(out.astype(jnp.float32))

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv, seg).lower(
        lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert "flash_attention_fwd" in text and "flash_attention_bwd" in text


def test_rejects_bad_inputs():
    q = jnp.zeros((1, 16, 4, 16))
    with pytest.raises(ValueError, match="Hkv"):
        flash_attention(q, q[:, :, :3], q[:, :, :3])
    with pytest.raises(ValueError, match="both"):
        flash_attention(q, q, q, q_segment_ids=jnp.zeros((1, 16), jnp.int32))
    with pytest.raises(ValueError, match="256"):
        flash_attention(jnp.zeros((1, 16, 1, 512)), jnp.zeros((1, 16, 1, 512)),
                        jnp.zeros((1, 16, 1, 512)))
