"""benchmarks.op_profile: XLA:CPU's per-thunk trace, summed by op and sorted into kinds."""
import json
import os
import subprocess
import sys

from benchmarks.speed.op_profile import kind_of
from helpers import REPO

# In a fresh process: other tests load libtpu when they compile for TPU targets in-process, and a
# libtpu newer than jax's pin (0.0.52 beside jax 0.10.2) crashes jax.profiler.trace (SIGSEGV:
# another profiler API); the tpu extra installs jax's own pin, but a user's may differ.
TRACE_A_STEP = """
import json, jax, jax.numpy as jnp
from benchmarks.speed.op_profile import profile
x = jax.random.normal(jax.random.key(0), (256, 256))
f = jax.jit(lambda x: jnp.tanh(x @ x.T) * 2.0)
step = lambda: jax.block_until_ready(f(x))
step()
print(json.dumps(profile(step, steps=3)))
"""


def test_kinds_follow_the_ops_a_name_holds():
    assert kind_of("ynn_fusion") == kind_of("dot_general") == kind_of("custom-call") == "library"
    assert kind_of("dynamic-slice_bitcast_fusion") == kind_of("copy") == "movement"
    assert kind_of("wrapped_broadcast") == kind_of("transpose_copy_fusion") == "movement"
    assert kind_of("multiply_add_fusion") == kind_of("slice_tanh_fusion") == "generated"
    assert kind_of("ffi_call") == "library" and kind_of("all-reduce") == kind_of("Rendezvous") == "collective"
    assert kind_of("wrapped_add") == "other"


def test_a_traced_step_counts_each_op_once_per_step():
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", TRACE_A_STEP], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ops = json.loads(out.stdout.strip().splitlines()[-1])
    library = {op: v for op, v in ops.items() if kind_of(op) == "library"}
    generated = {op: v for op, v in ops.items() if kind_of(op) == "generated"}
    assert len(library) == 1 and list(library.values())[0][1] == 3   # the one matmul, 3 steps
    assert sum(calls for _, calls in generated.values()) == 3         # tanh and scale: one fusion
    assert all(ns > 0 for ns, _ in ops.values())
