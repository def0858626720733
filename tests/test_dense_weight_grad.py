"""jaxnets.kernels.dense_weight_grad (dw = x^T g by a native kernel) against float64 NumPy, and
Linear layers taking it for their weight gradient (`jaxnets.nn.layers.native_rows_dot`)."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnets.kernels import dense_weight_grad as dwg
from jaxnets.kernels import native
from jaxnets.nn import layers
from jaxnets.nn.lowering import ConvLowering, Lowering

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU kernel")


def _need_build(isa=None):
    if native.load(dwg.NAME, isa or native.machine_isa()) is None:
        pytest.skip("no native kernel on this machine (no compiler)")


@cpu_only
@pytest.mark.parametrize("isa", sorted(native.ISAS))
@pytest.mark.parametrize("m,k,n", [
    (300, 64, 32),     # full register tiles; rows of x not a whole number of row blocks
    (513, 61, 48),     # dw rows left over by a tile (a 4, then a 1); 48 columns: one-vector tiles
    (40, 200, 16),     # several row chunks (tasks) with a remainder; a single column vector
    (700, 48, 160),    # dw wider than tall: computed as (g^T x)^T
    (1, 16, 16),       # one row
])
def test_each_build_matches_float64_reference(isa, m, k, n):
    _need_build(isa)
    rng = np.random.default_rng(m + 7 * k + n)
    x, g = rng.normal(size=(m, k)), rng.normal(size=(m, n))
    ref = x.T @ g
    for threads in (1, 0):
        dw = jax.jit(lambda x, g: dwg.dense_weight_grad(x, g, threads, isa))(jnp.float32(x), jnp.float32(g))
        assert dw.shape == (k, n) and dw.dtype == jnp.float32
        # float32 inputs rounded (2^-24 each) and float32 sums of m terms: a bound in the
        # terms' absolute sum, not in the (cancelling) result.
        bound = 4 * m * np.finfo(np.float32).eps * (np.abs(x).T @ np.abs(g))
        assert np.all(np.abs(np.asarray(dw, np.float64) - ref) <= bound + 1e-30)


@cpu_only
def test_result_does_not_depend_on_threads():
    _need_build()
    rng = np.random.default_rng(0)
    x, g = jnp.float32(rng.normal(size=(777, 320))), jnp.float32(rng.normal(size=(777, 64)))
    one = jax.jit(lambda x, g: dwg.dense_weight_grad(x, g, 1))(x, g)
    pool = jax.jit(lambda x, g: dwg.dense_weight_grad(x, g, 0))(x, g)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(pool))


@cpu_only
def test_unsupported_operands_are_refused():
    x = jnp.zeros((8, 32))
    assert not dwg.supported(x, jnp.zeros((8, 24)))                 # 24 columns: no tile
    assert not dwg.supported(jnp.zeros((8, 24)), jnp.zeros((8, 40)))  # (g^T x)^T: x's 24 columns
    assert not dwg.supported(x, jnp.zeros((9, 32)))                 # rows differ
    assert not dwg.supported(x.astype(jnp.bfloat16), jnp.zeros((8, 32), jnp.bfloat16))
    with pytest.raises(ValueError, match="unsupported operands"):
        dwg.dense_weight_grad(x, jnp.zeros((8, 24)))


@cpu_only
def test_vmap_and_derivatives_take_xla_form():
    _need_build()
    rng = np.random.default_rng(1)
    x, g = jnp.float32(rng.normal(size=(5, 40, 32))), jnp.float32(rng.normal(size=(5, 40, 16)))
    batched = jax.vmap(lambda x, g: dwg.dense_weight_grad(x, g))(x, g)
    np.testing.assert_allclose(batched, np.einsum("bmk,bmn->bkn", x, g), rtol=1e-5, atol=1e-4)
    f = lambda x, g: jnp.sum(jnp.sin(dwg.dense_weight_grad(x, g)))
    r = lambda x, g: jnp.sum(jnp.sin(dwg.reference(x, g)))
    for a, b in zip(jax.grad(f, (0, 1))(x[0], g[0]), jax.grad(r, (0, 1))(x[0], g[0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _linear_loss(dot_general):
    model = nnx.Linear(32, 48, dot_general=dot_general, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 10, 32))

    def loss(m):
        return jnp.sum(jnp.tanh(m(x)) ** 2)
    return model, loss


@cpu_only
def test_linear_layer_weight_gradient_by_the_kernel():
    """A Lowering with native dense weight gradients: the same gradients as lax's dot (float64
    NumPy of the same product as the referee), and the kernel's call is in the program."""
    _need_build()
    low = Lowering(rows_dot=True, dense_weight_grad="native", conv=ConvLowering(native_threads=0))
    assert low.dot_general is layers.native_rows_dot(0)       # one object: a static attribute
    grads = {}
    for name, dot in (("native", low.dot_general), ("lax", jax.lax.dot_general)):
        model, loss = _linear_loss(dot)
        graphdef, state = nnx.split(model)
        fn = jax.jit(jax.grad(lambda s: loss(nnx.merge(graphdef, s))))
        grads[name] = fn(state)
        if name == "native":
            assert "jaxnets_dense_weight_grad" in fn.lower(state).compile().as_text()
    for a, b in zip(jax.tree.leaves(grads["native"]), jax.tree.leaves(grads["lax"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


@cpu_only
def test_bf16_and_mixed_dots_keep_xla():
    """Operands the kernel does not take (bf16; a preferred float32 result) go through lax."""
    dot = layers.native_rows_dot(1)
    x, w = jnp.ones((2, 3, 32), jnp.bfloat16), jnp.ones((32, 16), jnp.bfloat16)
    hlo = jax.jit(jax.grad(lambda w: jnp.sum(dot(x, w, (((2,), (0,)), ((), ()))).astype(jnp.float32)))
                  ).lower(w).as_text()
    assert "dense_weight_grad" not in hlo


@cpu_only
def test_sharded_rows_run_per_shard_and_sum():
    """Under a batch-sharded jit each device multiplies its own rows, then one all-reduce; the
    gradient equals lax's."""
    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    code = """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jaxnets.nn.layers import native_rows_dot
        mesh = jax.make_mesh((2,), ("data",))
        dims = (((2,), (0,)), ((), ()))
        x = jax.random.normal(jax.random.key(0), (8, 6, 32))
        w = jax.random.normal(jax.random.key(1), (32, 64))
        loss = lambda dot: lambda w, x: jnp.sum(jnp.tanh(dot(x, w, dims)))
        grad = jax.jit(jax.grad(loss(native_rows_dot(1))))
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        hlo = grad.lower(w, xs).compile().as_text()
        calls = [l for l in hlo.splitlines() if "jaxnets_dense_weight_grad" in l]
        assert calls and all("f32[24,32]" in l for l in calls), calls
        assert "all-gather" not in hlo
        ref = jax.grad(loss(jax.lax.dot_general))(w, x)
        np.testing.assert_allclose(np.asarray(grad(w, xs)), np.asarray(ref), rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu",
                              "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
