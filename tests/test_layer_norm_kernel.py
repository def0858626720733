"""jaxnets.kernels.layer_norm: LayerNorm forward and backward by the native kernels, every ISA
build and both thread modes against float64 NumPy; the LayerNorm layer taking it; vmap and
second-order derivatives through XLA's form; a batch-sharded jit; refusals."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxnets.kernels import layer_norm as ln
from jaxnets.kernels import native
from jaxnets.nn.layers import LayerNorm

pytestmark = pytest.mark.skipif(native.load(ln.NAME) is None, reason="no native kernel build here")

U = 2.0 ** -24   # float32 unit roundoff
EPS = 1e-6
# Rows: one, a few, more than one 256-row chunk with a remainder (and 64-row blocks with one);
# widths: 1, 3, 8 and 24 AVX-512 vectors (the four-accumulator loop and its remainder).
SHAPES = [(1, 16), (3, 5, 48), (300, 128), (2, 3, 384), (70, 1024)]


def operands(shape, seed=0, offset=30.0):
    """x far from zero mean (offset): the variance about the mean is what a one-pass E[x^2] -
    E[x]^2 would lose in cancellation."""
    rng = np.random.default_rng(seed)
    d = shape[-1]
    x = (rng.normal(size=shape) * 2 + offset).astype(np.float32)
    scale = (1 + 0.2 * rng.normal(size=d)).astype(np.float32)
    bias = (0.3 * rng.normal(size=d)).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    return x, scale, bias, dy


def float64_layer_norm(x, scale, bias, dy):
    """Results and error bounds. Each row statistic is a float32 sum of D terms (relative error
    within D roundings of the terms' magnitudes); `c` = mean|x| / std is the cancellation in
    x - mean; the parameter gradients add float32 blocks of at most 64 rows into doubles."""
    d = x.shape[-1]
    x, scale, bias, dy = (a.astype(np.float64) for a in (x, scale, bias, dy))
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + EPS)
    xhat = (x - mean) * rstd
    c = np.abs(x).mean(-1, keepdims=True) * rstd
    rel = 4 * d * U * (1 + c)                     # relative error of a row's xhat, rstd
    y = xhat * scale + bias
    y_bound = rel * np.abs(scale) * (np.abs(xhat) + 1) + 4 * U * np.abs(bias)
    h = dy * scale
    a, b = h.mean(-1, keepdims=True), (h * xhat).mean(-1, keepdims=True)
    dx = rstd * (h - a - xhat * b)
    mag = np.abs(h).mean(-1, keepdims=True)
    dx_bound = rel * rstd * (np.abs(h) + mag + (np.abs(xhat) + 1) * (np.abs(h * xhat).mean(-1, keepdims=True) + mag))
    rows = lambda v: v.reshape(-1, d)   # noqa: E731
    dscale, dbias = rows(dy * xhat).sum(0), rows(dy).sum(0)
    dscale_bound = 64 * U * rows(np.abs(dy * xhat)).sum(0) + rows(np.abs(dy) * rel * (np.abs(xhat) + 1)).sum(0)
    dbias_bound = 64 * U * rows(np.abs(dy)).sum(0)
    return (y, dx, dscale, dbias), (y_bound, dx_bound, dscale_bound, dbias_bound)


def forward_and_backward(isa, threads):
    def f(x, scale, bias, dy):
        y, vjp = jax.vjp(lambda *a: ln.layer_norm(*a, eps=EPS, threads=threads, isa=isa), x, scale, bias)
        return (y, *vjp(dy))
    return jax.jit(f)


@pytest.mark.parametrize("isa", native.runnable_isas())
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_float64(isa, shape):
    args = operands(shape)
    expected, bounds = float64_layer_norm(*args)
    results = []
    for threads in (1, 0):
        out = [np.asarray(v) for v in forward_and_backward(isa, threads)(*args)]
        for name, got, want, bound in zip(("y", "dx", "dscale", "dbias"), out, expected, bounds):
            assert got.shape == want.shape and got.dtype == np.float32
            excess = np.abs(got - want) - bound
            assert np.all(excess <= 0), (isa, threads, name, float(excess.max()))
        results.append(out)
    # rows are cut into chunks by count alone: the same bits whatever the threads
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_layer_norm_layer_takes_the_kernel_and_matches_nnx():
    x = jnp.asarray(operands((4, 6, 128), seed=2, offset=0.5)[0])
    native_layer = LayerNorm(128, native_threads=0, rngs=nnx.Rngs(0))
    plain = LayerNorm(128, rngs=nnx.Rngs(0))
    for layer in (native_layer, plain):   # the same non-trivial parameters in both
        layer.scale[...] = jnp.linspace(0.5, 1.5, 128)
        layer.bias[...] = jnp.linspace(-0.2, 0.2, 128)
    assert "layer_norm" in str(jax.make_jaxpr(native_layer)(x))
    assert "layer_norm" not in str(jax.make_jaxpr(plain)(x))
    np.testing.assert_allclose(np.asarray(native_layer(x)), np.asarray(plain(x)), atol=2e-5)
    loss = lambda m: jnp.sum(jnp.tanh(m(x)) * jnp.arange(128.0))   # noqa: E731
    g_native, g_plain = nnx.grad(loss)(native_layer), nnx.grad(loss)(plain)
    for a, b in zip(jax.tree.leaves(nnx.state(g_native)), jax.tree.leaves(nnx.state(g_plain))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)


def test_layer_keeps_xla_where_the_kernel_does_not_apply():
    x = jnp.ones((2, 3, 32))
    mask = jnp.ones((2, 3, 32), bool)
    for layer, args, kw in [
            (LayerNorm(32, native_threads=0, rngs=nnx.Rngs(0)), (x,), {"mask": mask}),
            (LayerNorm(32, native_threads=0, use_bias=False, rngs=nnx.Rngs(0)), (x,), {}),
            (LayerNorm(8, native_threads=0, rngs=nnx.Rngs(0)), (jnp.ones((2, 8)),), {}),
            (LayerNorm(32, native_threads=0, rngs=nnx.Rngs(0)), (x.astype(jnp.bfloat16),), {})]:
        assert "layer_norm" not in str(jax.make_jaxpr(lambda *a: layer(*a, **kw))(*args))


def test_vmap_and_second_order_derivatives_take_xla_form():
    x, scale, bias, dy = (jnp.asarray(v) for v in operands((6, 32), seed=3, offset=1.0))
    op = lambda x, s, b: ln.layer_norm(x, s, b, eps=EPS)                  # noqa: E731
    ref = lambda x, s, b: ln.reference(x, s, b, EPS)                       # noqa: E731
    batched = (jnp.stack([x, 2 * x]), jnp.stack([scale, scale + 1]), jnp.stack([bias, -bias]))
    np.testing.assert_allclose(np.asarray(jax.vmap(op)(*batched)),
                               np.asarray(jax.vmap(ref)(*batched)), rtol=1e-5, atol=1e-5)
    # Hessian-vector products (forward over reverse) and grad of a gradient norm (reverse over
    # reverse) run through the kernels' reference derivatives
    loss = lambda f: (lambda x: jnp.sum(jnp.sin(f(x, scale, bias)) * dy))  # noqa: E731
    hvp = lambda f: jax.jvp(jax.grad(loss(f)), (x,), (dy,))[1]             # noqa: E731
    np.testing.assert_allclose(np.asarray(hvp(op)), np.asarray(hvp(ref)), rtol=1e-4, atol=1e-4)
    gg = lambda f: jax.grad(lambda x: jnp.sum(jax.grad(loss(f))(x) ** 2))(x)   # noqa: E731
    np.testing.assert_allclose(np.asarray(gg(op)), np.asarray(gg(ref)), rtol=1e-4, atol=1e-4)


def test_batch_sharded_rows_run_per_device():
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    x, scale, bias, dy = operands((8, 16, 64), seed=4)
    rows = NamedSharding(mesh, P("data"))
    xs, dys = jax.device_put(x, rows), jax.device_put(dy, rows)
    f = forward_and_backward(None, 1)
    hlo = f.lower(xs, scale, bias, dys).compile().as_text()
    assert "all-gather" not in hlo and "layer_norm" in hlo.lower()
    assert "all-reduce" in hlo   # the parameter gradients: each device's rows, then summed
    y, dx, dscale, dbias = f(xs, scale, bias, dys)
    assert y.sharding.spec[0] == "data" and dx.sharding.spec[0] == "data"
    expected, bounds = float64_layer_norm(x, scale, bias, dy)
    for got, want, bound in zip((y, dx, dscale, dbias), expected, bounds):
        assert np.all(np.abs(np.asarray(got) - want) <= 2 * bound)


def test_refusals():
    assert not ln.supported(jnp.ones((4, 8)))                      # 8 wide
    assert not ln.supported(jnp.ones((4, 16), jnp.bfloat16))
    assert not ln.supported(jnp.ones((0, 16)))
    with pytest.raises(ValueError, match="scale and bias"):
        ln.layer_norm(jnp.ones((4, 16)), jnp.ones(8), jnp.ones(16), eps=EPS)
