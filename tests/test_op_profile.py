"""benchmarks.op_profile: XLA:CPU's per-thunk trace, summed by op and sorted into kinds."""
import json
import os
import subprocess
import sys

import pytest

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

# A native kernel in the step: the trace names its thunk `ffi_call.N`; the dumped program says
# which kernel that is. `portable` is built wherever a C++ compiler is (every machine's fallback).
TRACE_A_KERNEL = """
import json, sys
from benchmarks.speed.op_profile import custom_call_targets, dump_optimized_programs, profile
folder = dump_optimized_programs()
import jax, jax.numpy as jnp
from jaxnets.kernels import dense_weight_grad as dwg, native
if native.load(dwg.NAME, "portable") is None:
    print(json.dumps(None)); sys.exit()
x, g = jax.random.normal(jax.random.key(0), (2, 64, 32))
f = jax.jit(lambda x, g: dwg.dense_weight_grad(x, g, isa="portable") * 2.0 + x.T @ g)
step = lambda: jax.block_until_ready(f(x, g))
step()
print(json.dumps(profile(step, steps=3, targets=custom_call_targets(folder))))
"""


def _run(code):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kinds_follow_the_ops_a_name_holds():
    assert kind_of("ynn_fusion") == kind_of("dot_general") == kind_of("custom-call") == "library"
    assert kind_of("dynamic-slice_bitcast_fusion") == kind_of("copy") == "movement"
    assert kind_of("wrapped_broadcast") == kind_of("transpose_copy_fusion") == "movement"
    assert kind_of("multiply_add_fusion") == kind_of("slice_tanh_fusion") == "generated"
    assert kind_of("ffi_call") == "library" and kind_of("all-reduce") == kind_of("Rendezvous") == "collective"
    assert kind_of("wrapped_add") == "other"


def test_a_traced_step_counts_each_op_once_per_step():
    ops = _run(TRACE_A_STEP)
    library = {op: v for op, v in ops.items() if kind_of(op) == "library"}
    generated = {op: v for op, v in ops.items() if kind_of(op) == "generated"}
    assert len(library) == 1 and list(library.values())[0][1] == 3   # the one matmul, 3 steps
    assert sum(calls for _, calls in generated.values()) == 3         # tanh and scale: one fusion
    assert all(ns > 0 for ns, _ in ops.values())


def test_a_native_kernel_is_named_after_its_handler():
    ops = _run(TRACE_A_KERNEL)
    if ops is None:
        pytest.skip("no native kernel on this machine (no compiler)")
    kernels = {op: v for op, v in ops.items() if op.startswith("ffi_call")}
    assert list(kernels) == ["ffi_call:DenseWeightGrad_portable"]   # the build named: its ISA
    assert kernels["ffi_call:DenseWeightGrad_portable"][1] == 3
    assert kind_of("ffi_call:DenseWeightGrad") == "library"
    # XLA's own matmul beside it keeps its plain name
    assert any(op.startswith(("ynn_", "xnn_", "dot")) for op in ops if op not in kernels)
