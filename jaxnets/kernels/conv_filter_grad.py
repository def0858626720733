"""Filter gradient of 3x3, stride-1, 'same' NHWC convolutions on CPU, by a native kernel.

    dw = conv3x3_filter_grad(x, g)     # x [B, H, W, C], g [B, H, W, O] -> dw [3, 3, C, O] (HWIO)

equals `jax.vjp(lambda w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
dimension_numbers=("NHWC", "HWIO", "NHWC")), w)[1](g)[0]`, as float32 sums in another order.
The kernel is `conv3x3_filter_grad.cc` (see there for why and how); `supported` says whether a
call with these operands takes it: CPU backend, float32, output channels a multiple of 16, and a
built native library (`jaxnets.kernels.native`). Callers use the lax form otherwise.

Never slower than XLA: `preferred` (what jaxnets.nn.conv asks) times the kernel against XLA's
form at the first use of each shape on this machine (per-device batch, the same threading) and
keeps the faster in the on-disk choice cache (`native.faster`); later runs read the choice.

Threads: the batch is split over XLA's intra-op thread pool, unless XLA_FLAGS holds
`--xla_cpu_multi_thread_eigen=false` (as with `jaxnets.runtime.one_device_per_core`, where every
CPU device is one core and shares the pool with the others): then each call runs on its own
thread, as XLA's own convolutions do.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxnets.kernels import native
from jaxnets.runtime import single_threaded_cpu, target_platform

NAME = "conv3x3_filter_grad"


def supported(x, g) -> bool:
    return (target_platform() == "cpu" and x.ndim == 4 and g.ndim == 4
            and x.dtype == jnp.float32 and g.dtype == jnp.float32
            and x.shape[:3] == g.shape[:3] and g.shape[-1] % 16 == 0
            and native.ffi_target(NAME, "Conv3x3FilterGrad") is not None)


def preferred(x, g) -> bool:
    """Whether to take the kernel for these operands: supported, and faster than XLA's form here."""
    if not supported(x, g):
        return False
    b, h, w, c = x.shape
    o = g.shape[-1]
    single = _inline()
    if single and b % jax.device_count() == 0:   # per-core devices: each runs its batch shard
        b //= jax.device_count()
    key = f"{NAME}:{native.machine_isa()}:{'1thread' if single else 'pool'}:{b}x{h}x{w}x{c}->{o}"

    def timed(fn):
        def make():
            dev = jax.devices()[0]
            xs = jax.device_put(jnp.ones((b, h, w, c), jnp.float32), dev)
            gs = jax.device_put(jnp.ones((b, h, w, o), jnp.float32), dev)
            compiled = jax.jit(fn).lower(xs, gs).compile()
            return lambda: compiled(xs, gs).block_until_ready()
        return make
    with jax.ensure_compile_time_eval():   # called while a step is traced: run, don't trace
        return native.faster(key, {"native": timed(_ffi), "xla": timed(reference)}) == "native"


def conv3x3_filter_grad(x, g):
    """[3, 3, C, O] filter gradient of a 3x3 stride-1 'same' NHWC convolution (see module)."""
    if not supported(x, g):
        raise ValueError(f"conv3x3_filter_grad: unsupported operands {x.shape} {x.dtype}, "
                         f"{g.shape} {g.dtype} on {target_platform()} (see `supported`)")
    return _differentiable(x, g)


def reference(x, g, precision=None):
    """The same filter gradient computed by XLA (lax's VJP of the convolution)."""
    w = jnp.zeros((3, 3, x.shape[-1], g.shape[-1]), x.dtype)
    conv = lambda w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), precision=precision,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.vjp(conv, w)[1](g)[0]


# The op is bilinear; its derivatives (second-order gradients of a network, e.g. Hessian-vector
# products) are taken through XLA's form, which JAX can differentiate and transpose.
@jax.custom_jvp
def _differentiable(x, g):
    return _op(x, g)


@_differentiable.defjvp
def _differentiable_jvp(primals, tangents):
    (x, g), (tx, tg) = primals, tangents
    return _op(x, g), reference(tx, g) + reference(x, tg)


# A custom call has no batching rule, so under vmap (per-example gradients, say) the batched
# filter gradient is XLA's own.
@jax.custom_batching.custom_vmap
def _op(x, g):
    return _partitioned(x, g)


@_op.def_vmap
def _op_vmap(axis_size, in_batched, x, g):
    x, g = (a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
            for a, batched in zip((x, g), in_batched))
    return jax.vmap(reference)(x, g), True


def _ffi(x, g):
    out = jax.ShapeDtypeStruct((3, 3, x.shape[-1], g.shape[-1]), jnp.float32)
    return jax.ffi.ffi_call(native.ffi_target(NAME, "Conv3x3FilterGrad"), out)(
        x, g, threads=np.int64(_inline()))   # 1: inline; 0: the whole pool


def _inline() -> bool:
    """Run on the calling thread: on single-threaded devices, and wherever several CPU devices
    share XLA's one intra-op pool. There each device's call split its batch over the pool, and
    one device's tasks could wait behind the other's: a clean-clone CI run (2026-12-02) hung
    40 s in the partitioned step's all-reduce and aborted
    (tests/test_conv_filter_grad.py::test_threaded_split_on_several_devices_finishes, 1 run in
    5). Only one multi-threaded device uses the pool."""
    return single_threaded_cpu() or jax.local_device_count() > 1


# Under a sharded jit, XLA cannot split a custom call: it would gather the whole batch onto
# every device and repeat the work there. So the call carries its own rule: each device takes
# the filter gradient of its batch shard, and a psum over the batch's mesh axes adds them up
# (the same all-reduce XLA places after its own filter-gradient convolution).
@custom_partitioning
def _partitioned(x, g):
    return _ffi(x, g)


def _partition(mesh, arg_shapes, result_shape):
    sharding = arg_shapes[0].sharding
    if not isinstance(sharding, NamedSharding):                 # one device
        return mesh, _ffi, sharding, (sharding, sharding)
    axes = sharding.spec[0] if len(sharding.spec) else None
    def local(x, g):
        dw = _ffi(x, g)
        return dw if axes is None else lax.psum(dw, axes)
    operands = NamedSharding(mesh, P(axes, None, None, None))   # batch-sharded, rest whole
    return mesh, local, NamedSharding(mesh, P()), (operands, operands)


_partitioned.def_partition(
    partition=_partition,
    infer_sharding_from_operands=lambda mesh, arg_shapes, result_shape: (
        NamedSharding(mesh, P()) if isinstance(arg_shapes[0].sharding, NamedSharding)
        else arg_shapes[0].sharding),
    sharding_rule="b h w c, b h w o -> i j c o")
