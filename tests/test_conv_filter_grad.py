"""jaxnets.kernels.conv_filter_grad: the native 3x3 filter gradient, against float64 NumPy."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets.kernels import conv_filter_grad, native
from test_conv import np_filter_grad

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU kernel")


@cpu_only
@pytest.mark.parametrize("b,h,w,c,o", [
    (2, 5, 6, 8, 16),      # register tile 8 x 1 vector
    (3, 7, 9, 16, 32),     # odd sizes, 8 x 2 tiles
    (1, 4, 4, 64, 64),     # whole images per block, 8 x 2 tiles
    (2, 3, 5, 24, 48),     # 48 output channels: single-vector tiles
    (2, 40, 33, 8, 16),    # rows split into several blocks of pixels
    (1, 1, 1, 8, 16),      # a single pixel: only the centre tap sees it
])
def test_matches_float64_reference(b, h, w, c, o):
    if native.load(conv_filter_grad.NAME) is None:
        pytest.skip("no native kernel on this machine (no compiler)")
    rng = np.random.default_rng(b * 1000 + h * 10 + c)
    x, g = rng.normal(size=(b, h, w, c)), rng.normal(size=(b, h, w, o))
    dw = jax.jit(conv_filter_grad.conv3x3_filter_grad)(jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32))
    ref = np_filter_grad(x, g)
    assert dw.shape == (3, 3, c, o) and dw.dtype == jnp.float32
    # float32 sums of up to b*h*w products of unit normals (inputs rounded to float32 first)
    np.testing.assert_allclose(np.asarray(dw), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@cpu_only
def test_agrees_with_lax_inside_a_gradient():
    """Where conv_general_dilated uses the kernel, its gradient matches lax's own."""
    if native.load(conv_filter_grad.NAME) is None:
        pytest.skip("no native kernel on this machine (no compiler)")
    from jax import lax
    from jaxnets.nn.conv import conv_function
    from jaxnets.nn.lowering import ConvLowering
    conv_general_dilated = conv_function(ConvLowering())
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
    loss = lambda f: lambda w: jnp.sum(jnp.tanh(f(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)))
    ours, ref = jax.jit(jax.grad(loss(conv_general_dilated)))(w), jax.grad(loss(lax.conv_general_dilated))(w)
    assert "jaxnets_conv3x3_filter_grad" in jax.jit(jax.grad(loss(conv_general_dilated))).lower(w).as_text()
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@cpu_only
def test_per_example_gradients_under_vmap():
    """vmap of a gradient (per-example gradients) works: the batched call falls back to XLA."""
    from jax import lax
    from jaxnets.nn.conv import conv_function
    from jaxnets.nn.lowering import ConvLowering
    conv_general_dilated = conv_function(ConvLowering())
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 16))
    w = jax.random.normal(jax.random.key(1), (3, 3, 16, 16))
    loss = lambda conv: lambda w, x: jnp.sum(jnp.tanh(conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)))
    ours = jax.jit(jax.vmap(jax.grad(loss(conv_general_dilated)), in_axes=(None, 0)))(w, x)
    ref = np.stack([np.asarray(jax.grad(loss(lax.conv_general_dilated))(w, xi)) for xi in x])
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    if native.load(conv_filter_grad.NAME) is None:
        return                      # no compiler here: the op itself is unavailable
    # and the op itself, vmapped over one batched operand
    g = jax.random.normal(jax.random.key(2), (2, 6, 6, 16))
    out = jax.vmap(conv_filter_grad.conv3x3_filter_grad, in_axes=(0, None))(x, g)
    np.testing.assert_allclose(np.asarray(out), np.stack([np_filter_grad(np.asarray(xi), np.asarray(g)) for xi in x]),
                               rtol=1e-5, atol=1e-5 * float(jnp.abs(out).max()))


@cpu_only
def test_second_order_gradients_match_lax():
    """grad of grad (a Hessian-vector product) through the native op equals lax's: the op's own
    derivatives are taken through XLA's form."""
    from jax import lax
    from jaxnets.nn.conv import conv_function
    from jaxnets.nn.lowering import ConvLowering
    conv_general_dilated = conv_function(ConvLowering())
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 16))
    w = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, 16, 16))
    v = jax.random.normal(jax.random.key(2), w.shape)

    def hvp(conv):
        c = lambda a, w: conv(a, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
        loss = lambda w: jnp.sum(jnp.tanh(c(jnp.tanh(c(x, w)), w)))
        return jax.jit(jax.grad(lambda w: jnp.vdot(jax.grad(loss)(w), v)))(w)
    ref = np.asarray(hvp(lax.conv_general_dilated))
    np.testing.assert_allclose(np.asarray(hvp(conv_general_dilated)), ref, rtol=1e-4,
                               atol=1e-5 * np.abs(ref).max())


@cpu_only
def test_unsupported_operands_are_refused():
    x = jnp.zeros((2, 4, 4, 8))
    assert not conv_filter_grad.supported(x, jnp.zeros((2, 4, 4, 8)))         # 8 outputs: no tile
    assert not conv_filter_grad.supported(x, jnp.zeros((2, 4, 5, 16)))        # shapes differ
    assert not conv_filter_grad.supported(x.astype(jnp.bfloat16), jnp.zeros((2, 4, 4, 16), jnp.bfloat16))
    with pytest.raises(ValueError, match="unsupported operands"):
        conv_filter_grad.conv3x3_filter_grad(x, jnp.zeros((2, 4, 4, 8)))


def _run(code, env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **env}, timeout=300)


CHECK = """
    import warnings, jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from jaxnets.kernels import conv_filter_grad
    from jaxnets.nn.conv import conv_function
    from jaxnets.nn.lowering import ConvLowering
    conv_general_dilated = conv_function(ConvLowering())
    x, w = jnp.ones((2, 6, 6, 16)), jnp.ones((3, 3, 16, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = conv_filter_grad.supported(x, x)
    print("supported", ok, [str(c.message) for c in caught])
    f = lambda g: lambda w: jnp.sum(g(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
    np.testing.assert_allclose(jax.grad(f(conv_general_dilated))(w), jax.grad(f(lax.conv_general_dilated))(w), rtol=1e-5)
    print("gradients agree")
"""


@cpu_only
def test_opt_out_uses_xla(tmp_path):
    out = _run(CHECK, {"JAXNETS_NATIVE_KERNELS": "0", "JAXNETS_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "supported False []" in out.stdout and "gradients agree" in out.stdout   # no warning
    assert not (tmp_path / "kernels").exists()


@cpu_only
def test_failed_build_warns_and_falls_back(tmp_path):
    broken = tmp_path / "broken-cxx"
    broken.write_text("#!/bin/sh\necho 'error: this compiler is broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    out = _run(CHECK, {"CXX": str(broken), "JAXNETS_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "supported False" in out.stdout and "this compiler is broken" in out.stdout
    assert "gradients agree" in out.stdout
    assert not list((tmp_path / "kernels").glob("*.so"))        # nothing half-written is left


@cpu_only
def test_build_is_cached(tmp_path):
    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    first = _run(CHECK, {"JAXNETS_CACHE": str(tmp_path)})
    assert first.returncode == 0, first.stderr
    assert "supported True" in first.stdout and "gradients agree" in first.stdout
    built = list((tmp_path / "kernels").glob("conv3x3_filter_grad-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    again = _run(CHECK, {"JAXNETS_CACHE": str(tmp_path)})
    assert "supported True" in again.stdout and built[0].stat().st_mtime_ns == stamp


# Preamble of the two-device checks (run in a fresh process with two forced CPU devices).
TWO_DEVICES = """
        import jax, jax.numpy as jnp, numpy as np
        from jax import lax
        from jax.sharding import NamedSharding, PartitionSpec as P
        mesh = jax.make_mesh((2,), ("data",))
"""


@cpu_only
def test_threaded_split_on_several_devices_finishes(tmp_path):
    """Two CPU devices sharing one thread pool, each splitting its batch over the pool: the
    pattern that livelocked a plain fork-join (each caller waiting on tasks queued behind the
    other). Checked against lax in a fresh process, with a time limit."""
    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    code = TWO_DEVICES + """
        from jaxnets.kernels.conv_filter_grad import conv3x3_filter_grad
        x = jax.random.normal(jax.random.key(0), (8, 8, 8, 16))
        g = jax.random.normal(jax.random.key(1), (8, 8, 8, 16))
        put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
        f = jax.jit(jax.shard_map(lambda x, g: conv3x3_filter_grad(x, g)[None], mesh=mesh,
                                  in_specs=P("data"), out_specs=P("data")))
        conv = lambda w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
        ref = jax.vjp(conv, jnp.zeros((3, 3, 16, 16)))[1](g)[0]
        for _ in range(50):
            out = f(put(x), put(g)).sum(0)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-3)
        print("ok")
    """
    out = _run(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@cpu_only
def test_sharded_batch_runs_per_shard_and_sums():
    """Under a batch-sharded jit each device runs the kernel on its own shard (no gather of the
    batch) and one all-reduce adds the shards' gradients; the result equals lax's."""
    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    code = TWO_DEVICES + """
        from jaxnets.nn.conv import conv_function
        from jaxnets.nn.lowering import ConvLowering
        conv_general_dilated = conv_function(ConvLowering())
        x = jax.random.normal(jax.random.key(0), (8, 8, 8, 32))
        w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
        loss = lambda conv: lambda w, x: jnp.sum(jnp.tanh(conv(x, w, (1, 1), ((1, 1), (1, 1)),
                                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))))
        grad = jax.jit(jax.grad(loss(conv_general_dilated)))
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        hlo = grad.lower(w, xs).compile().as_text()
        calls = [l for l in hlo.splitlines() if "jaxnets_conv3x3_filter_grad" in l]
        assert calls and all("f32[4,8,8,32]" in l for l in calls), calls
        assert "all-gather" not in hlo
        ref = jax.grad(loss(lax.conv_general_dilated))(w, x)
        np.testing.assert_allclose(np.asarray(grad(w, xs)), np.asarray(ref), rtol=1e-4, atol=1e-4 * float(jnp.abs(ref).max()))
        print("ok")
    """
    out = _run(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
