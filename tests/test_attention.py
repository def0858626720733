"""dot_product_attention: every implementation against float64 NumPy (outputs and gradients)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets.kernels.blockwise_attention import blockwise_attention
from jaxnets.nn.attention import (choose_implementation, dot_product_attention,
                                  reference_attention_numpy)
from jaxnets.nn.attention_formula import causal_row_blocks


def reference_grads_numpy(q, k, v, d_out, allowed, scale):
    """dQ, dK, dV of sum(out * d_out) in float64, from the softmax equations by hand."""
    q, k, v, d_out = (np.asarray(x, np.float64) for x in (q, k, v, d_out))
    groups = q.shape[2] // k.shape[2]
    kr, vr = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    s = np.where(allowed, np.einsum("bqhd,bkhd->bhqk", q, kr) * scale, -np.inf)
    row_max = s.max(-1, keepdims=True)
    e = np.where(allowed, np.exp(s - np.where(np.isfinite(row_max), row_max, 0)), 0)
    total = e.sum(-1, keepdims=True)
    p = e / np.where(total == 0, 1, total)
    dv = np.einsum("bhqk,bqhd->bkhd", p, d_out)
    dp = np.einsum("bqhd,bkhd->bhqk", d_out, vr)
    ds = p * (dp - (p * dp).sum(-1, keepdims=True)) * scale
    dq = np.einsum("bhqk,bkhd->bqhd", ds, kr)
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q)
    fold = lambda x: x.reshape(x.shape[:2] + (k.shape[2], groups, -1)).sum(3)
    return dq, fold(dk), fold(dv)


def allowed_numpy(b, hq, tq, tk, causal=False, mask=None, segment_ids=None, kv_lengths=None):
    allowed = np.ones((b, hq, tq, tk), bool)
    if causal:
        allowed &= np.tril(np.ones((tq, tk), bool))
    if mask is not None:
        allowed &= np.broadcast_to(mask, allowed.shape)
    if segment_ids is not None:
        qs, ks = segment_ids if isinstance(segment_ids, tuple) else (segment_ids,) * 2
        allowed &= qs[:, None, :, None] == ks[:, None, None, :]
    if kv_lengths is not None:
        allowed &= np.arange(tk) < kv_lengths[:, None, None, None]
    return allowed


SCENARIOS = ("plain", "causal", "mask", "padded", "packed", "cross_segments", "everything")


def make_case(scenario, seed, dtype=np.float32, max_len=40, head_dims=(8, 16, 32)):
    """Random shapes (GQA included) and random masks for one scenario."""
    rng = np.random.default_rng(seed)
    b, hkv, groups = rng.integers(1, 3), rng.integers(1, 3), rng.integers(1, 4)
    tq = tk = int(rng.integers(1, max_len))
    if scenario in ("plain", "mask", "padded", "cross_segments"):
        tk = int(rng.integers(1, max_len))
    d = int(rng.choice(head_dims))
    q = rng.normal(size=(b, tq, hkv * groups, d)).astype(dtype)
    k = rng.normal(size=(b, tk, hkv, d)).astype(dtype)
    v = rng.normal(size=(b, tk, hkv, d)).astype(dtype)
    kw = {}
    if scenario in ("causal", "everything"):
        kw["causal"] = True
    if scenario in ("mask", "everything"):  # per-batch, per-head random masks
        kw["mask"] = rng.random((b, hkv * groups, tq, tk)) < 0.7
    if scenario in ("padded", "everything"):
        kw["kv_lengths"] = rng.integers(1, tk + 1, size=b).astype(np.int32)
    if scenario in ("packed", "everything"):  # sorted ids: packed sequences, as a loader makes
        kw["segment_ids"] = np.sort(rng.integers(0, 3, size=(b, tq)), axis=1).astype(np.int32)
    if scenario == "cross_segments":
        kw["segment_ids"] = (rng.integers(0, 3, size=(b, tq)).astype(np.int32),
                             rng.integers(0, 3, size=(b, tk)).astype(np.int32))
    return q, k, v, kw


def check_against_reference(impl, q, k, v, kw, atol, grad_atol):
    """Outputs and the VJP with a random cotangent, one jit each (eager dispatch is slow)."""
    d_out = np.random.default_rng(1).normal(size=q.shape).astype(q.dtype)
    attend = lambda q, k, v: dot_product_attention(q, k, v, implementation=impl, **kw)
    loss = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) * d_out)
    out, grads = jax.jit(lambda *a: (attend(*a), jax.grad(loss, argnums=(0, 1, 2))(*a)))(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(np.asarray(out, np.float64), reference_attention_numpy(q, k, v, **kw),
                               atol=atol, rtol=atol)
    allowed = allowed_numpy(q.shape[0], q.shape[2], q.shape[1], k.shape[1], **kw)
    expected = reference_grads_numpy(q, k, v, d_out, allowed, 1 / np.sqrt(q.shape[-1]))
    for name, got, want in zip("qkv", grads, expected):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=grad_atol,
                                   rtol=grad_atol, err_msg=f"d{name}")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("impl,seed", [("xla", 0), ("blockwise", 0), ("blockwise", 1)])
def test_matches_float64_reference(impl, scenario, seed):
    q, k, v, kw = make_case(scenario, seed)
    check_against_reference(impl, q, k, v, kw, atol=2e-5, grad_atol=1e-4)


@pytest.mark.parametrize("tq,tk", [(128, 128), (101, 101), (70, 90), (96, 40)])
@pytest.mark.parametrize("masks", ["causal", "everything"])
def test_causal_row_blocks_match_float64_reference(tq, tk, masks):
    """Causal attention runs in query-row blocks, each against the keys it may see: uneven
    blocks, Tq != Tk (top-left aligned), grouped heads, and every other mask on top."""
    assert len(causal_row_blocks(tq)) > 1
    rng = np.random.default_rng(tq * 1000 + tk)
    b, hkv, groups, d = 2, 2, 2, 16
    q = rng.normal(size=(b, tq, hkv * groups, d)).astype(np.float32)
    k, v = (rng.normal(size=(b, tk, hkv, d)).astype(np.float32) for _ in range(2))
    kw = {"causal": True}
    if masks == "everything":
        kw["mask"] = rng.random((b, hkv * groups, tq, tk)) < 0.8
        kw["kv_lengths"] = rng.integers(1, tk + 1, size=b).astype(np.int32)
        kw["segment_ids"] = tuple(np.sort(rng.integers(0, 3, size=(b, t)), axis=1).astype(np.int32)
                                  for t in (tq, tk))
    check_against_reference("xla", q, k, v, kw, atol=2e-5, grad_atol=1e-4)


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in ("mask", "everything")]
                         + ["causal_padded_packed"])
def test_pallas_matches_float64_reference(scenario):
    """Interpret mode on CPU: tiny shapes, the same kernels that lower to Triton on GPU."""
    if scenario == "causal_padded_packed":
        q, k, v, kw = make_case("packed", 7, max_len=24, head_dims=(16,))
        kw.update(causal=True, kv_lengths=np.full((q.shape[0],), max(1, q.shape[1] - 3), np.int32))
    else:
        q, k, v, kw = make_case(scenario, 3, max_len=24, head_dims=(16,))
    check_against_reference("pallas", q, k, v, kw, atol=2e-5, grad_atol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_bfloat16_inputs_accumulate_in_float32(impl):
    q, k, v, kw = make_case("everything", 5, dtype=np.float32)
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    out = dot_product_attention(q, k, v, implementation=impl, **kw)
    assert out.dtype == jnp.bfloat16
    # Reference on the rounded inputs: what remains is the final rounding to bfloat16 (2^-8).
    ref = reference_attention_numpy(*(np.asarray(x, np.float64) for x in (q, k, v)), **kw)
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=1e-2, rtol=1e-2)


def test_blockwise_many_small_blocks_and_ragged_tail():
    q, k, v, kw = make_case("everything", 11, max_len=40)
    kw.pop("segment_ids", None)
    mask = jnp.asarray(kw.pop("mask"))
    scale = 1 / np.sqrt(q.shape[-1])
    out = blockwise_attention(q, k, v, mask=mask, scale=scale, block_k=4, **kw)
    np.testing.assert_allclose(out, reference_attention_numpy(q, k, v, mask=np.asarray(mask), **kw),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_rows_that_see_no_key_give_zeros_and_finite_gradients(impl):
    q, k, v, _ = make_case("plain", 2)
    mask = np.random.default_rng(0).random((1, 1, q.shape[1], k.shape[1])) < 0.5
    mask[..., 0, :] = False  # the first query sees nothing
    f = lambda q, k, v: dot_product_attention(q, k, v, mask=mask, implementation=impl)
    out, grads = jax.jit(lambda *a: (f(*a), jax.grad(lambda *a: jnp.sum(f(*a) ** 2),
                                                     argnums=(0, 1, 2))(*a)))(q, k, v)
    np.testing.assert_array_equal(np.asarray(out[:, 0]), 0.0)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_blockwise_gradient_memory_is_linear_in_length():
    """Compiled fwd+bwd scratch grows like T (x2 per doubling), not like the T^2 logits (x4)."""
    def scratch_bytes(t, impl):
        x = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)
        loss = lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, causal=True,
                                                             implementation=impl))
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert scratch_bytes(8192, "blockwise") < 2.5 * scratch_bytes(4096, "blockwise")
    assert scratch_bytes(8192, "blockwise") < 2 * 8192 * 8192 * 4 / 2  # half the logits


def test_unhonourable_combinations_raise():
    q = jnp.zeros((1, 8, 4, 16))
    mask = jnp.ones((8, 8), bool)
    with pytest.raises(ValueError, match="dense `mask`"):
        dot_product_attention(q, q, q, mask=mask, implementation="pallas")
    with pytest.raises(ValueError, match="GPU"):
        dot_product_attention(q.astype(jnp.bfloat16), q.astype(jnp.bfloat16),
                              q.astype(jnp.bfloat16), implementation="cudnn")
    with pytest.raises(ValueError, match="multiple"):
        dot_product_attention(q, q[:, :, :3], q[:, :, :3])
    with pytest.raises(ValueError, match="broadcast"):
        dot_product_attention(q, q, q, mask=jnp.ones((3, 8), bool))
    with pytest.raises(ValueError, match="Unknown attention implementation"):
        dot_product_attention(q, q, q, implementation="flash")
    with pytest.raises(ValueError, match="Tq == Tk"):
        dot_product_attention(q, q[:, :4], q[:, :4], segment_ids=jnp.zeros((1, 8), jnp.int32))


def test_auto_uses_plain_formula_for_short_and_blockwise_for_long_sequences_on_cpu():
    short = jax.ShapeDtypeStruct((1, 128, 4, 64), jnp.float32)
    long = jax.ShapeDtypeStruct((1, 16384, 8, 64), jnp.float32)
    assert choose_implementation(short, short, short) == "xla"
    assert choose_implementation(long, long, long) == "blockwise"
