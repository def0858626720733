"""jaxnets.kernels.conv_forward: the native 3x3 convolution (forward and, through
jaxnets.nn.conv, the input gradient), every build against float64 NumPy."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxnets.kernels import conv_forward, native
from jaxnets.nn.conv import conv_function
from jaxnets.nn.lowering import ConvLowering
from test_conv import np_conv_grads, np_conv_same

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU kernel")
DN = ("NHWC", "HWIO", "NHWC")
NATIVE = ConvLowering(forward="native")


def needs_kernel(isa=None):
    if isa is not None and isa not in native.runnable_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    if native.load(conv_forward.NAME, isa or native.machine_isa()) is None:
        pytest.skip("no native kernel on this machine (no compiler)")


@cpu_only
@pytest.mark.parametrize("isa", sorted(native.ISAS))
@pytest.mark.parametrize("b,h,w,c,o", [
    (2, 32, 32, 16, 16),   # a CIFAR ResNet's first stage: whole tiles along the row
    (3, 8, 8, 64, 64),     # its last stage: short rows, several channel vectors per tile
    (2, 6, 8, 16, 16),     # one tile per row: its first and last pixels skip the border's taps
    (2, 7, 5, 3, 32),      # the 3-channel stem; rows that are no whole number of tiles
    (1, 1, 1, 5, 16),      # a single pixel: only the centre tap sees it
    (2, 9, 28, 32, 48),    # 48 outputs: an odd number of vectors on AVX-512
    (1, 3, 37, 8, 64),     # a row longer than two tiles, with a remainder
    (1, 4, 19, 128, 16),   # 128 channels: the largest pixel stride with its own instances
])
def test_each_build_matches_float64_reference(isa, b, h, w, c, o):
    needs_kernel(isa)
    rng = np.random.default_rng(b * 1000 + h * 10 + w + c)
    x, k = rng.normal(size=(b, h, w, c)), rng.normal(size=(3, 3, c, o))
    y = jax.jit(lambda x, k: conv_forward.conv3x3_forward(x, k, isa=isa))(jnp.float32(x), jnp.float32(k))
    ref = np_conv_same(x, k)
    assert y.shape == (b, h, w, o) and y.dtype == jnp.float32
    # float32 sums of 9c products of unit normals (inputs rounded to float32 first)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def np_conv_stride2(x, k):
    """3x3 convolution padded by one pixel, stride 2, in float64 NumPy (NHWC, HWIO)."""
    ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
    xp = np.pad(x, ((0, 0), (1, 2), (1, 2), (0, 0)))
    return sum(xp[:, i:i + 2 * ho:2, j:j + 2 * wo:2] @ k[i, j] for i in range(3) for j in range(3))


def np_filter_grad_stride2(x, g):
    """dw[i, j] = sum over pixels of xpad[b, 2h + i, 2w + j] (x) g[b, h, w], float64."""
    ho, wo = g.shape[1:3]
    xp = np.pad(x, ((0, 0), (1, 2), (1, 2), (0, 0)))
    return np.stack([np.stack([np.einsum("bhwc,bhwo->co", xp[:, i:i + 2 * ho:2, j:j + 2 * wo:2], g)
                               for j in range(3)]) for i in range(3)])


@cpu_only
@pytest.mark.parametrize("isa", sorted(native.ISAS))
@pytest.mark.parametrize("b,h,w,c,o", [
    (2, 32, 32, 16, 32),   # a CIFAR ResNet's downsampling layer
    (2, 9, 7, 8, 16),      # odd sizes: the last output reads the bottom/right border
    (1, 1, 1, 16, 16),     # one pixel
    (2, 6, 29, 32, 48),    # a row of several tiles with a remainder
    (1, 7, 11, 64, 16),    # pixel stride 2 x 64 channels (its own instances in the kernel)
    (1, 5, 6, 24, 16),     # 2 x 24 channels: a pixel stride known only at run time
])
def test_stride2_forward_and_filter_gradient_match_float64(isa, b, h, w, c, o):
    """Stride 2: the forward kernel and the filter-gradient kernel, each build, both thread
    modes, against the definitions."""
    needs_kernel(isa)
    from jaxnets.kernels import conv_filter_grad
    rng = np.random.default_rng(b * 100 + h + w + c)
    x, k = rng.normal(size=(b, h, w, c)), rng.normal(size=(3, 3, c, o))
    ref = np_conv_stride2(x, k)
    g = rng.normal(size=ref.shape)
    dw_ref = np_filter_grad_stride2(x, g)
    for threads in (1, 0):
        y = jax.jit(lambda x, k: conv_forward.conv3x3_forward(x, k, threads, isa, stride=2))(
            jnp.float32(x), jnp.float32(k))
        assert y.shape == ref.shape
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        if isa == native.machine_isa():   # the filter gradient's builds: tests/test_native_isa.py
            dw = jax.jit(lambda x, g: conv_filter_grad.conv3x3_filter_grad(x, g, threads, stride=2))(
                jnp.float32(x), jnp.float32(g))
            np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-5, atol=1e-5 * np.abs(dw_ref).max())


@cpu_only
@pytest.mark.parametrize("threads", [0, 1])
def test_thread_modes_agree(threads):
    needs_kernel()
    rng = np.random.default_rng(7)
    x, k = rng.normal(size=(5, 6, 10, 16)), rng.normal(size=(3, 3, 16, 32))
    y = jax.jit(lambda x, k: conv_forward.conv3x3_forward(x, k, threads))(jnp.float32(x), jnp.float32(k))
    ref = np_conv_same(x, k)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@cpu_only
def test_layer_gradients_match_float64_reference():
    """conv_general_dilated under a native lowering: the forward and the input gradient run in
    the kernel (read from the lowered program), and both gradients equal the definition's."""
    needs_kernel()
    conv = conv_function(NATIVE)
    rng = np.random.default_rng(3)
    x, w, g = rng.normal(size=(2, 8, 12, 16)), rng.normal(size=(3, 3, 16, 32)), rng.normal(size=(2, 8, 12, 32))
    loss = lambda x, w: jnp.sum(conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN) * jnp.float32(g))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    hlo = grad.lower(jnp.float32(x), jnp.float32(w)).as_text()
    assert hlo.count("jaxnets_conv3x3_forward") >= 1
    dx, dw = grad(jnp.float32(x), jnp.float32(w))
    ref_dx, ref_dw = np_conv_grads(x, w, g)
    np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-4, atol=1e-5 * np.abs(ref_dx).max())
    np.testing.assert_allclose(np.asarray(dw), ref_dw, rtol=1e-4, atol=1e-5 * np.abs(ref_dw).max())
    # the input gradient is a convolution with 16 outputs: the kernel as well (forward + dx)
    compiled = grad.lower(jnp.float32(x), jnp.float32(w)).compile().as_text()
    assert sum("jaxnets_conv3x3_forward" in l and "custom-call(" in l for l in compiled.splitlines()) == 1
    fwd_and_dx = jax.jit(jax.value_and_grad(loss)).lower(jnp.float32(x), jnp.float32(w)).compile().as_text()
    assert sum("jaxnets_conv3x3_forward" in l and "custom-call(" in l for l in fwd_and_dx.splitlines()) == 2


@cpu_only
def test_xla_choice_keeps_lax():
    conv = conv_function(ConvLowering(forward="xla"))
    f = jax.jit(lambda x, w: conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN))
    assert "jaxnets_conv3x3_forward" not in f.lower(jnp.ones((1, 4, 4, 16)), jnp.ones((3, 3, 16, 16))).as_text()


@cpu_only
def test_vmap_and_second_order_gradients_match_lax():
    """vmap (per-example gradients) falls back to XLA; grad of grad (a Hessian-vector product)
    through the native op equals lax's."""
    needs_kernel()
    conv = conv_function(NATIVE)
    c = lambda f: lambda a, w: f(a, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 16))
    w = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, 16, 16))
    v = jax.random.normal(jax.random.key(2), w.shape)

    def hvp(f):
        loss = lambda w: jnp.sum(jnp.tanh(c(f)(jnp.tanh(c(f)(x, w)), w)))
        return jax.jit(jax.grad(lambda w: jnp.vdot(jax.grad(loss)(w), v)))(w)
    ref = np.asarray(hvp(lax.conv_general_dilated))
    np.testing.assert_allclose(np.asarray(hvp(conv)), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    xs = jax.random.normal(jax.random.key(3), (3, 2, 6, 6, 16))
    per_example = jax.jit(jax.vmap(jax.grad(lambda w, x: jnp.sum(jnp.tanh(c(conv)(x, w)))), in_axes=(None, 0)))
    ref = np.stack([np.asarray(jax.grad(lambda w: jnp.sum(jnp.tanh(c(lax.conv_general_dilated)(xi, w))))(w))
                    for xi in xs])
    np.testing.assert_allclose(np.asarray(per_example(w, xs)), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@cpu_only
def test_unsupported_operands_are_refused():
    x = jnp.zeros((2, 4, 4, 8))
    assert not conv_forward.supported(x, jnp.zeros((3, 3, 8, 8)))             # 8 outputs: no tile
    assert not conv_forward.supported(x, jnp.zeros((3, 3, 4, 16)))            # channels differ
    assert not conv_forward.supported(x.astype(jnp.bfloat16), jnp.zeros((3, 3, 8, 16), jnp.bfloat16))
    with pytest.raises(ValueError, match="unsupported operands"):
        conv_forward.conv3x3_forward(x, jnp.zeros((3, 3, 8, 8)))
    # a layer whose operands the kernel refuses keeps lax, under a native lowering too
    conv = conv_function(NATIVE)
    f = jax.jit(lambda x, w: conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN))
    assert "jaxnets_conv3x3_forward" not in f.lower(x, jnp.zeros((3, 3, 8, 8))).as_text()


@cpu_only
def test_sharded_batch_runs_per_shard():
    """Under a batch-sharded jit each device convolves its own shard (no gather of the batch);
    the step's results equal lax's."""
    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    code = """
        import jax, jax.numpy as jnp, numpy as np
        from jax import lax
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jaxnets.nn.conv import conv_function
        from jaxnets.nn.lowering import ConvLowering
        mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        conv = conv_function(ConvLowering(forward="native"))
        x = jax.random.normal(jax.random.key(0), (8, 8, 8, 32))
        w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
        loss = lambda f: lambda w, x: jnp.sum(jnp.tanh(f(x, w, (1, 1), ((1, 1), (1, 1)),
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))))
        grad = jax.jit(jax.value_and_grad(loss(conv), argnums=(0, 1)))
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        hlo = grad.lower(w, xs).compile().as_text()
        calls = [l for l in hlo.splitlines() if "jaxnets_conv3x3_forward" in l and "custom-call(" in l]
        assert len(calls) == 2 and all("f32[2,8,8,32]" in l for l in calls), calls
        assert "all-gather" not in hlo
        ours = grad(w, xs)
        ref = jax.value_and_grad(loss(lax.conv_general_dilated), argnums=(0, 1))(w, x)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu",
                              "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
