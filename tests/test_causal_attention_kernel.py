"""jaxnets.kernels.causal_attention: the native causal attention kernel (every ISA build, both
thread modes) against float64 NumPy, and how dot_product_attention picks it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets.kernels import causal_attention, native
from jaxnets.nn.attention import dot_product_attention, reference_attention_numpy
from test_attention import allowed_numpy, reference_grads_numpy

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU kernel")


def needs_kernel():
    if native._compiler() is None:
        pytest.skip("no C++ compiler: no native kernel on this machine")


def case(b, t, h, hk, d, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, h, d)).astype(np.float32)
    k, v = (rng.normal(size=(b, t, hk, d)).astype(np.float32) for _ in range(2))
    d_out = rng.normal(size=q.shape).astype(np.float32)
    return q, k, v, d_out


def check(attend, q, k, v, d_out):
    """Output and gradients of sum(out * d_out) against float64 NumPy, one jit each."""
    loss = lambda q, k, v: jnp.sum(attend(q, k, v) * d_out)
    out, grads = jax.jit(lambda *a: (attend(*a), jax.grad(loss, argnums=(0, 1, 2))(*a)))(q, k, v)
    np.testing.assert_allclose(np.asarray(out, np.float64),
                               reference_attention_numpy(q, k, v, causal=True), atol=2e-5, rtol=2e-5)
    allowed = allowed_numpy(q.shape[0], q.shape[2], q.shape[1], k.shape[1], causal=True)
    expected = reference_grads_numpy(q, k, v, d_out, allowed, 1 / np.sqrt(q.shape[-1]))
    for name, got, want in zip("qkv", grads, expected):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=1e-4, rtol=1e-4,
                                   err_msg=f"d{name}")


@cpu_only
@pytest.mark.parametrize("isa", sorted(native.ISAS))
@pytest.mark.parametrize("b,t,h,hk,d", [
    (2, 37, 4, 2, 16),     # grouped heads, a length that is no multiple of any vector width
    (1, 128, 2, 2, 32),    # the Transformer smoke model's head size: 4-row tiles, 2 vectors
    (2, 70, 3, 1, 64),     # one key/value head for three query heads, 64 dims
    (1, 1, 1, 1, 48),      # a single position; 48 dims: 3 vectors of the AVX-512 build
])
def test_each_build_matches_float64_reference(isa, b, t, h, hk, d):
    needs_kernel()
    if isa not in native.runnable_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    q, k, v, d_out = case(b, t, h, hk, d, seed=t)
    check(lambda q, k, v: causal_attention.causal_attention(q, k, v, scale=d ** -0.5, isa=isa),
          q, k, v, d_out)


@cpu_only
def test_split_over_the_thread_pool_matches_the_calling_thread():
    needs_kernel()
    q, k, v, d_out = case(3, 64, 4, 2, 32, seed=5)
    check(lambda q, k, v: causal_attention.causal_attention(q, k, v, scale=32 ** -0.5, threads=0),
          q, k, v, d_out)


@cpu_only
def test_auto_picks_the_kernel_for_causal_float32_self_attention_on_cpu():
    needs_kernel()
    q, k, v, _ = case(2, 16, 2, 2, 16)
    lowered = lambda **kw: jax.jit(lambda q, k, v: dot_product_attention(q, k, v, **kw)).lower(
        q, k, v).as_text()
    assert "jaxnets_causal_attention" in lowered(causal=True)
    assert "jaxnets_causal_attention" not in lowered(causal=False)
    assert "jaxnets_causal_attention" not in lowered(causal=True, kv_lengths=np.array([3, 16]))
    assert "jaxnets_causal_attention" not in lowered(causal=True, implementation="xla")


@cpu_only
def test_native_refuses_what_it_cannot_honour():
    needs_kernel()
    q, k, v, _ = case(1, 8, 2, 2, 16)
    with pytest.raises(ValueError, match="causal self-attention only"):
        dot_product_attention(q, k, v, causal=True, mask=np.ones((8, 8), bool), implementation="native")
    with pytest.raises(ValueError, match="causal self-attention only"):
        dot_product_attention(q, k, v, causal=False, implementation="native")
    with pytest.raises(ValueError, match="causal self-attention only"):
        dot_product_attention(q[..., :8], k[..., :8], v[..., :8], causal=True, implementation="native")


@cpu_only
def test_auto_leaves_the_portable_build_to_xla(monkeypatch):
    """Where only the portable build runs (no AVX2), auto keeps XLA's path, which was faster."""
    needs_kernel()
    q, k, v, _ = case(2, 16, 2, 2, 16)
    monkeypatch.setattr(native, "machine_isa", lambda: "portable")
    hlo = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, causal=True)).lower(q, k, v).as_text()
    assert "jaxnets_causal_attention" not in hlo
