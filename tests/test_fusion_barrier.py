"""jaxnets.kernels.fusion_barrier: x itself through a custom call XLA cannot fuse across."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets.kernels import fusion_barrier, native

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU kernel")


def _need_build():
    if native.load(fusion_barrier.NAME) is None:
        pytest.skip("no native kernel on this machine (no compiler)")


@cpu_only
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32, jnp.int8])
def test_bits_unchanged_and_producer_not_fused_across(dtype):
    _need_build()
    x = (jax.random.normal(jax.random.key(0), (3, 5, 7)) * 1e3).astype(dtype)
    f = jax.jit(lambda x: fusion_barrier.fusion_barrier(x + x) - x)
    np.testing.assert_array_equal(np.asarray(f(x)), np.asarray((x + x) - x))
    hlo = f.lower(x).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    # The sum is computed before the call and the subtraction reads the call's result.
    assert entry.count("custom-call(") == 1 and "jaxnets_fusion_barrier_Materialize" in entry


@cpu_only
def test_operand_still_read_afterwards_keeps_its_value():
    """The result aliases the operand: where the operand is read again, it must not change."""
    _need_build()
    x = jnp.arange(64.0).reshape(8, 8)
    y, again = jax.jit(lambda x: (fusion_barrier.fusion_barrier(x) * 2, x + 1))(x)
    np.testing.assert_array_equal(np.asarray(y), np.arange(64.0).reshape(8, 8) * 2)
    np.testing.assert_array_equal(np.asarray(again), np.arange(64.0).reshape(8, 8) + 1)


@cpu_only
def test_under_vmap():
    _need_build()
    x = jax.random.normal(jax.random.key(1), (4, 6, 16))
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(fusion_barrier.fusion_barrier))(x)),
                                  np.asarray(x))


@cpu_only
def test_sharded_operand_stays_sharded():
    """Under a batch-sharded jit each device passes its own shard: no gather, no all-reduce."""
    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    code = """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jaxnets.nn.conv import materialize
        mesh = jax.make_mesh((2,), ("data",))
        x = jax.device_put(jax.random.normal(jax.random.key(0), (8, 4, 4, 16)), NamedSharding(mesh, P("data")))
        f = jax.jit(jax.value_and_grad(lambda x: jnp.sum(jnp.sin(materialize(jnp.cos(x))))))
        hlo = f.lower(x).compile().as_text()
        calls = [l for l in hlo.splitlines() if "jaxnets_fusion_barrier" in l]
        assert calls and all("f32[4,4,4,16]" in l for l in calls), calls
        assert "all-gather" not in hlo
        v, g = f(x)
        np.testing.assert_allclose(float(v), float(jnp.sum(jnp.sin(jnp.cos(x)))), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(g), np.asarray(-jnp.cos(jnp.cos(x)) * jnp.sin(x)), rtol=1e-6, atol=1e-6)
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu",
                              "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
