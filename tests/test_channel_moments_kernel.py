"""jaxnets.kernels.channel_moments: batch norm's per-channel sums by the native kernel, every ISA
build and both thread modes against float64 NumPy; vmap and derivatives through XLA's form;
refusals."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets.kernels import channel_moments as cm
from jaxnets.kernels import native

pytestmark = pytest.mark.skipif(native.load(cm.NAME) is None, reason="no native kernel build here")

# Rows: one image's pixels, a remainder of the 4-row unroll, several 512-row blocks and 8192-row
# chunks with remainders; channels: 1, 2, 3 and 10 AVX-512 vectors (blocks of 4, 2 and 1).
SHAPES = [(64, 8, 8, 16), (3, 5, 48), (7, 16), (1, 16), (2, 4, 4, 160), (9000, 32), (2, 13, 13, 64)]


def float64_moments(a, b, shift):
    a, b = a.astype(np.float64).reshape(-1, a.shape[-1]), b.astype(np.float64).reshape(-1, a.shape[-1])
    terms = a * (b - shift)
    # float32 sums of at most 512 rows before a double total: each sum is within 512 float32
    # roundings (2^-24 each) of the exact one, relative to the sum of the terms' magnitudes.
    bound = 512 * 2.0 ** -24 * np.stack([np.abs(a).sum(0), np.abs(terms).sum(0)])
    return np.stack([a.sum(0), terms.sum(0)]), bound


def operands(shape, seed=0):
    rng = np.random.default_rng(seed)
    # Far from zero mean, so the shift (a batch's mean) matters: x - shift is small next to x.
    a = (rng.normal(size=shape) * 2 + 5).astype(np.float32)
    b = (rng.normal(size=shape) + 30).astype(np.float32)
    shift = (30 + rng.normal(size=shape[-1]) * 0.1).astype(np.float32)
    return a, b, shift


@pytest.mark.parametrize("isa", native.runnable_isas())
@pytest.mark.parametrize("shape", SHAPES)
def test_sums_match_float64(isa, shape):
    a, b, shift = operands(shape)
    ref, bound = float64_moments(a, b, shift)
    results = []
    for threads in (1, 0):
        out = np.asarray(jax.jit(lambda a, b, s: cm.channel_moments(a, b, s, threads, isa))(a, b, shift))
        assert out.shape == (2, shape[-1]) and out.dtype == np.float32
        assert np.all(np.abs(out - ref) <= bound + np.abs(ref) * 2.0 ** -23), (isa, threads)
        results.append(out)
    # rows are cut into chunks by count alone: the same sums whatever the threads
    np.testing.assert_array_equal(results[0], results[1])


def test_forward_statistics_form():
    """(x, x, 0): the sums of x and x^2, as batch norm's forward takes them."""
    x = operands((16, 6, 6, 32), seed=1)[0]
    out = np.asarray(jax.jit(lambda x: cm.channel_moments(x, x, jnp.zeros(32)))(x))
    x64 = x.astype(np.float64).reshape(-1, 32)
    np.testing.assert_allclose(out, np.stack([x64.sum(0), (x64 * x64).sum(0)]), rtol=1e-5)


def test_vmap_and_derivatives_take_xla_form():
    a, b, shift = (jnp.asarray(v) for v in operands((4, 3, 3, 16), seed=2))
    op = lambda a, b, s: cm.channel_moments(a, b, s)
    batched = (jnp.stack([a, a * 2]), jnp.stack([b, b - 1]), jnp.stack([shift, shift + 1]))
    np.testing.assert_allclose(np.asarray(jax.vmap(op)(*batched)),
                               np.asarray(jax.vmap(cm.reference)(*batched)), rtol=1e-5)
    tangents = tuple(jnp.ones_like(v) * 0.5 for v in (a, b, shift))
    out, tangent = jax.jvp(op, (a, b, shift), tangents)
    ref_out, ref_tangent = jax.jvp(cm.reference, (a, b, shift), tangents)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(tangent), np.asarray(ref_tangent), rtol=1e-5)
    # reverse mode (a Hessian-vector product through batch norm's backward takes this path)
    g = jax.grad(lambda a: jnp.sum(op(a, b, shift) ** 2))(a)
    g_ref = jax.grad(lambda a: jnp.sum(cm.reference(a, b, shift) ** 2))(a)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-4)


def test_refusals():
    a = jnp.ones((4, 8))
    assert not cm.supported(a, a)                                   # 8 channels
    assert not cm.supported(jnp.ones((4, 16), jnp.bfloat16), jnp.ones((4, 16), jnp.bfloat16))
    assert not cm.supported(jnp.ones((4, 16)), jnp.ones((5, 16)))   # shapes differ
    with pytest.raises(ValueError, match="unsupported operands"):
        cm.channel_moments(a, a, jnp.zeros(8))
