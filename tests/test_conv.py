"""jaxnets.nn.conv: the folded narrow convolution and the fusion barrier, against float64 NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxnets.nn.conv import conv3x3, conv_function, materialize
from jaxnets.nn.lowering import ConvLowering

conv_general_dilated = conv_function(ConvLowering())   # the CPU path, as jaxnets.platform gives it

NHWC = ("NHWC", "HWIO", "NHWC")


def np_conv_same(x, w):
    """3x3 'same' cross-correlation in float64 NumPy (NHWC, HWIO)."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, wd = x.shape[1:3]
    return sum(xp[:, i:i + h, j:j + wd] @ w[i, j] for i in range(3) for j in range(3))


def np_conv_grads(x, w, g):
    """dL/dx and dL/dw of sum(conv(x, w) * g), from the definition, in float64 NumPy."""
    h, wd = x.shape[1:3]
    gp = np.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # y[h, w] gets x[h + i - 1, w + j - 1] w[i, j]  =>  dx[h, w] = sum_ij g[h - i + 1, w - j + 1] w[i, j]^T
    dx = sum(gp[:, 2 - i:2 - i + h, 2 - j:2 - j + wd] @ w[i, j].T for i in range(3) for j in range(3))
    return dx, np_filter_grad(x, g)


def np_filter_grad(x, g):
    """dw[i, j, c, o] = sum_{b,h,w} xpad[b, h + i, w + j, c] g[b, h, w, o], in float64."""
    h, w = x.shape[1:3]
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return np.stack([np.stack([np.einsum("bhwc,bhwo->co", xp[:, i:i + h, j:j + w], g.astype(np.float64))
                               for j in range(3)]) for i in range(3)])


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("c,o,width", [(16, 16, 8), (3, 16, 6), (16, 32, 4), (5, 7, 10)])
def test_conv3x3_matches_numpy_float64(c, o, width, fold):
    rng = np.random.default_rng(c * 100 + o)
    x, w = rng.normal(size=(2, 5, width, c)), rng.normal(size=(3, 3, c, o))
    g = rng.normal(size=(2, 5, width, o))
    f = jax.jit(lambda x, w: conv3x3(x, w, None, ConvLowering(fold=fold)))
    y, vjp = jax.vjp(f, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    dx, dw = vjp(jnp.asarray(g, jnp.float32))
    ref_dx, ref_dw = np_conv_grads(x, w, g)
    # float32 sums of 9c (forward), 9o (dx) and 2*5*width*... (dw) products of unit normals
    np.testing.assert_allclose(np.asarray(y), np_conv_same(x, w), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dw), ref_dw, rtol=1e-5, atol=1e-4)


def test_folded_conv_float64_is_exact_to_rounding():
    """In float64 the fold reorders sums only: agreement with lax to ~1e-13."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x, w = jnp.asarray(rng.normal(size=(2, 6, 8, 16))), jnp.asarray(rng.normal(size=(3, 3, 16, 16)))
        g = jnp.asarray(rng.normal(size=(2, 6, 8, 16)))
        direct = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
        folded = lambda x, w: conv3x3(x, w, None, ConvLowering(fold=True))
        assert " pad[" in str(jax.make_jaxpr(folded)(x, w))        # the folded path ran
        for a, b in zip(jax.vjp(direct, x, w)[1](g), jax.vjp(folded, x, w)[1](g)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(folded(x, w)), np.asarray(direct(x, w)),
                                   rtol=1e-12, atol=1e-12)


def test_fold_follows_single_threaded_devices(monkeypatch):
    """The platform asks for the fold on single-threaded XLA:CPU devices only (where it pays),
    and the layer folds only the narrow, even-width inputs it is asked to."""
    from jaxnets.nn import conv
    from jaxnets.platform.lowering_rule import cpu_conv_lowering
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    assert cpu_conv_lowering().fold is True
    monkeypatch.setenv("XLA_FLAGS", "")
    assert cpu_conv_lowering().fold is False
    assert conv._foldable(16, 8, True) and not conv._foldable(16, 7, True)
    assert not conv._foldable(32, 8, True) and not conv._foldable(16, 8, False)


def _takes_own_path(fn, *args):
    return "custom_vjp_call" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("shape,kernel,stride,padding,ours", [
    ((2, 8, 8, 16), (3, 3, 16, 16), (1, 1), ((1, 1), (1, 1)), True),    # folded
    ((2, 8, 8, 32), (3, 3, 32, 32), (1, 1), ((1, 1), (1, 1)), True),    # wide: native dW only
    ((2, 8, 7, 16), (3, 3, 16, 16), (1, 1), ((1, 1), (1, 1)), True),    # odd width: not folded
    ((2, 8, 8, 16), (3, 3, 16, 16), (2, 2), ((1, 1), (1, 1)), True),    # stride 2
    ((2, 9, 7, 16), (3, 3, 16, 16), (2, 2), ((1, 1), (1, 1)), True),    # stride 2, odd sizes
    ((2, 8, 8, 16), (3, 3, 16, 16), (2, 2), "SAME", False),            # one-sided at stride 2
    ((2, 8, 8, 16), (3, 3, 16, 16), (3, 3), ((1, 1), (1, 1)), False),
    ((2, 8, 8, 16), (3, 3, 16, 16), (1, 1), "SAME", True),             # = one pixel per side
    ((2, 8, 8, 16), (3, 3, 16, 16), (1, 1), "VALID", False),
    ((2, 8, 8, 16), (3, 3, 16, 16), (1, 1), ((0, 2), (1, 1)), False),
    ((2, 8, 8, 16), (1, 1, 16, 16), (1, 1), ((0, 0), (0, 0)), False),
])
def test_dispatch_takes_only_3x3_pad1_stride1_or_2(shape, kernel, stride, padding, ours):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel), jnp.float32)
    dn = lax.conv_dimension_numbers(shape, kernel, NHWC)
    ours_fn = lambda x, w: conv_general_dilated(x, w, stride, padding, dimension_numbers=dn)
    ref = lambda x, w: lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=dn)
    assert _takes_own_path(ours_fn, x, w) == ours
    np.testing.assert_allclose(np.asarray(jax.jit(ours_fn)(x, w)), np.asarray(ref(x, w)),
                               rtol=1e-5, atol=1e-4)
    g = jnp.asarray(rng.normal(size=ref(x, w).shape), jnp.float32)
    for a, b in zip(jax.vjp(ref, x, w)[1](g), jax.vjp(jax.jit(ours_fn), x, w)[1](g)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-3)


def test_nnx_conv_hook_keeps_parameters_and_values():
    """nnx.Conv with our hook has the same parameter tree and output as a plain nnx.Conv."""
    from flax import nnx
    kw = dict(padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
    ours = nnx.Conv(16, 16, (3, 3), conv_general_dilated=conv_general_dilated, **kw)
    plain = nnx.Conv(16, 16, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
    assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(plain))
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 16))
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(plain(x)), rtol=1e-5, atol=1e-4)


def test_materialize_is_an_exact_identity():
    """The XLA:CPU fusion barrier changes neither values nor gradients, bit for bit."""
    for dtype in (jnp.float32, jnp.bfloat16):
        x = jax.random.normal(jax.random.key(0), (4, 5, 5, 16), dtype) * 1e3
        np.testing.assert_array_equal(np.asarray(jax.jit(materialize)(x), np.float32),
                                      np.asarray(x, np.float32))
    x = jax.random.normal(jax.random.key(1), (2, 3, 3, 8))
    w = jax.random.normal(jax.random.key(2), x.shape)
    g = jax.jit(jax.grad(lambda x: jnp.sum(materialize(x) * w)))(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("stride,hw", [(1, (5, 6)), (2, (8, 8)), (2, (7, 9))])
@pytest.mark.parametrize("pointwise", ["native", "xla"])
def test_1x1_convolution_and_gradients_match_float64(stride, hw, pointwise):
    """Unpadded 1x1 convolutions (a projection shortcut) through the lowering: the matmul of
    the sampled pixels, its gradients (input gradient back in place between zeros; the filter
    gradient by the native kernel where it applies), against float64 NumPy."""
    from jaxnets.kernels import dense_weight_grad
    conv = conv_function(ConvLowering(pointwise=pointwise))
    rng = np.random.default_rng(stride + hw[1])
    x, w = rng.normal(size=(3, *hw, 16)), rng.normal(size=(1, 1, 16, 32))
    xs = x[:, ::stride, ::stride]
    r = rng.normal(size=(*xs.shape[:3], 32))
    f = lambda x, w: conv(x, w, (stride, stride), ((0, 0), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y, vjp = jax.vjp(jax.jit(f), jnp.float32(x), jnp.float32(w))
    dx, dw = vjp(jnp.float32(r))
    dx_ref = np.zeros_like(x)
    dx_ref[:, ::stride, ::stride] = r @ w[0, 0].T
    for got, ref in ((y, xs @ w[0, 0]), (dx, dx_ref), (dw, np.einsum("bhwc,bhwo->co", xs, r)[None, None])):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    hlo = jax.jit(jax.grad(lambda w: jnp.sum(f(jnp.float32(x), w) ** 2))).lower(jnp.float32(w)).as_text()
    native = pointwise == "native" and dense_weight_grad.supported(jnp.zeros((1, 16)), jnp.zeros((1, 32)))
    assert ("jaxnets_dense_weight_grad" in hlo) == native
    assert ("convolution" in hlo) == (pointwise == "xla")
