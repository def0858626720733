"""jaxnets.nn.batch_norm: training-mode batch norm with its gradient written out, against a
float64 NumPy forward and its finite differences, against nnx.BatchNorm, and its collectives
under a batch-sharded jit."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnets.kernels import channel_moments, native
from jaxnets.nn.batch_norm import BatchNorm, normalize_with_batch_stats

EPS = 1e-5
# Who adds up the per-channel sums: XLA, or the native kernel on the calling thread / the pool.
SUMS = [("xla", 1)] + ([("native", 1), ("native", 0)] if native.load(channel_moments.NAME) else [])


def np_batch_norm(x, scale, bias):
    """float64 training-mode batch norm over all axes but the last (two-pass variance)."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    var = ((x - mean) ** 2).mean(axes)
    return (x - mean) / np.sqrt(var + EPS) * scale + bias, mean, var


@pytest.mark.parametrize("sums", SUMS)
def test_values_and_gradients_match_float64_finite_differences(sums):
    """y, the statistics and the gradients of a loss reading all three (so the statistics'
    cotangents count too) against central differences of the float64 forward."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 2, 16)) * 2.0 + 0.5
    scale, bias = rng.normal(size=16), rng.normal(size=16)
    r, a, b = rng.normal(size=x.shape), rng.normal(size=16), rng.normal(size=16)

    def np_loss(x, scale, bias):
        y, mean, var = np_batch_norm(x, scale, bias)
        return np.sum(np.sin(y) * r) + mean @ a + var @ b

    def loss(x, scale, bias):
        y, mean, var = normalize_with_batch_stats(x, scale, bias, EPS, sums)
        return jnp.sum(jnp.sin(y) * r) + mean @ a + var @ b

    f32 = lambda v: jnp.asarray(v, jnp.float32)
    y, mean, var = normalize_with_batch_stats(f32(x), f32(scale), f32(bias), EPS, sums)
    if sums[0] == "native":   # the kernel really runs, forward and backward
        hlo = jax.jit(jax.grad(loss)).lower(f32(x), f32(scale), f32(bias)).as_text()
        assert hlo.count("jaxnets_channel_moments_ChannelMoments") == 2
    ry, rmean, rvar = np_batch_norm(x, scale, bias)
    np.testing.assert_allclose(np.asarray(y), ry, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mean), rmean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(var), rvar, rtol=1e-5, atol=1e-6)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(f32(x), f32(scale), f32(bias))
    step = 1e-6
    for arg, grad in enumerate(grads):
        args = [x, scale, bias]
        numeric = np.zeros_like(args[arg])
        for i in np.ndindex(args[arg].shape):
            hi = [v.copy() for v in args]
            lo = [v.copy() for v in args]
            hi[arg][i] += step
            lo[arg][i] -= step
            numeric[i] = (np_loss(*hi) - np_loss(*lo)) / (2 * step)
        # float32 gradient of a float64 function: a few float32 ulps of the largest term
        np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-4, atol=1e-4 * np.abs(numeric).max())


@pytest.mark.parametrize("sums", SUMS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_matches_nnx_batch_norm(dtype, sums):
    """Same outputs, running statistics and parameter/input gradients as nnx.BatchNorm (bf16
    takes XLA's sums whatever `sums` says: the kernel reads float32)."""
    rng = np.random.default_rng(1)
    c = 16 if dtype == jnp.float32 else 8    # the kernel's channels (a multiple of 16)
    x = jnp.asarray(rng.normal(size=(4, 5, 6, c)) * 3 + 1, jnp.float32).astype(dtype)
    ours = BatchNorm(c, momentum=0.9, dtype=dtype, sums=sums, rngs=nnx.Rngs(0))
    theirs = nnx.BatchNorm(c, momentum=0.9, dtype=dtype, rngs=nnx.Rngs(0))
    for m in (ours, theirs):
        m.scale[...] = jnp.asarray(rng.normal(size=c), jnp.float32) if m is ours else ours.scale[...]
        m.bias[...] = jnp.asarray(rng.normal(size=c), jnp.float32) if m is ours else ours.bias[...]

    def loss(m, x):
        y = m(x, use_running_average=False)
        return jnp.sum(jnp.sin(y.astype(jnp.float32)) * jnp.arange(float(c)))
    results = [nnx.value_and_grad(loss, argnums=(0, 1))(m, x) for m in (ours, theirs)]
    (l1, (g1, gx1)), (l2, (g2, gx2)) = results
    tol = 1e-5 if dtype == jnp.float32 else 2e-2    # bf16: outputs rounded to 8 bits
    np.testing.assert_allclose(float(l1), float(l2), rtol=tol, atol=tol)
    for a, b in [(gx1, gx2), (g1["scale"][...], g2["scale"][...]), (g1["bias"][...], g2["bias"][...])]:
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())
    np.testing.assert_allclose(np.asarray(ours.mean[...]), np.asarray(theirs.mean[...]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours.var[...]), np.asarray(theirs.var[...]), rtol=1e-4, atol=1e-6)
    # evaluation (running averages) is nnx.BatchNorm's own path
    np.testing.assert_allclose(np.asarray(ours(x, use_running_average=True), np.float32),
                               np.asarray(theirs(x, use_running_average=True), np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("sums", SUMS[:2])
def test_one_array_all_reduced_per_direction_under_a_sharded_batch(sums):
    """On 4 devices with the batch split: one [2C] array all-reduced for the statistics and one
    for the gradient sums (nnx.BatchNorm's autodiff exchanges more), same results as on one
    device; the native sums run on each device's rows."""
    code = f"""
        import functools, re, jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jaxnets.nn.batch_norm import BatchNorm
        mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        x = jax.random.normal(jax.random.key(0), (8, 4, 4, 16)) * 2 + 1
        ours = functools.partial(BatchNorm, sums={sums!r})
        def run(cls, x):
            m = cls(16, rngs=nnx.Rngs(0))
            graphdef, state = nnx.split(m)
            def loss(state, x):
                y = nnx.merge(graphdef, state)(x, use_running_average=False)
                return jnp.sum(jnp.sin(y))
            f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            return f, state
        outs = {{}}
        for name, cls in (("ours", ours), ("nnx", nnx.BatchNorm)):
            f, state = run(cls, x)
            with jax.set_mesh(mesh):
                xs = jax.device_put(x, NamedSharding(mesh, P("data")))
                hlo = f.lower(state, xs).compile().as_text()
                outs[name] = f(state, xs)
            # arrays all-reduced: each all-reduce's operands (XLA combines independent ones
            # into a tuple, and XLA:CPU meets the other devices once per array of it)
            arrays = [len(re.findall(r"f32\\[\\d*\\]", l.split("all-reduce(")[0].split("=", 1)[1]))
                      for l in hlo.splitlines() if "all-reduce(" in l]
            print(name, sum(arrays), hlo.count('custom_call_target="jaxnets_channel_moments'))
        one = run(ours, x)
        ref = one[0](one[1], x)
        for a, b in zip(jax.tree.leaves(outs["ours"]), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu",
                              "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
    counts = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in out.stdout.splitlines()
              if line.startswith(("ours", "nnx"))}
    # ours: the statistics, the gradient sums and the loss's sum; nnx: 2 + 4 (+ the loss)
    assert counts["ours"][0] == 3 and counts["nnx"][0] > 3, out.stdout
    assert counts["ours"][1] == (2 if sums[0] == "native" else 0), out.stdout
