"""benchmarks.op_profile: XLA:CPU's per-thunk trace, summed by op and sorted into kinds."""
import jax
import jax.numpy as jnp

from benchmarks.speed.op_profile import kind_of, profile


def test_kinds_follow_the_ops_a_name_holds():
    assert kind_of("ynn_fusion") == kind_of("dot_general") == kind_of("custom-call") == "library"
    assert kind_of("dynamic-slice_bitcast_fusion") == kind_of("copy") == "movement"
    assert kind_of("wrapped_broadcast") == kind_of("transpose_copy_fusion") == "movement"
    assert kind_of("multiply_add_fusion") == kind_of("slice_tanh_fusion") == "generated"
    assert kind_of("ffi_call") == "library" and kind_of("all-reduce") == kind_of("Rendezvous") == "collective"
    assert kind_of("wrapped_add") == "other"


def test_a_traced_step_counts_each_op_once_per_step():
    x = jax.random.normal(jax.random.key(0), (256, 256))
    f = jax.jit(lambda x: jnp.tanh(x @ x.T) * 2.0)
    step = lambda: jax.block_until_ready(f(x))   # noqa: E731
    step()
    ops = profile(step, steps=3)
    library = {op: v for op, v in ops.items() if kind_of(op) == "library"}
    generated = {op: v for op, v in ops.items() if kind_of(op) == "generated"}
    assert len(library) == 1 and list(library.values())[0][1] == 3   # the one matmul, 3 steps
    assert sum(calls for _, calls in generated.values()) == 3         # tanh and scale: one fusion
    assert all(ns > 0 for ns, _ in ops.values())
