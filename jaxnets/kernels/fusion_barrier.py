"""A fusion barrier for XLA:CPU: x itself, through a custom call XLA cannot fuse across.

    y = fusion_barrier(x)      # y == x, bit for bit; XLA computes x once, before this call

`jaxnets.nn.conv.materialize` needs such a barrier (why: its docstring). Its portable form is a
matmul with the identity (exact, and XLA does not fuse through a matmul), which costs a matmul:
about 0.65 ms for a [64, 32, 32, 16] activation on one core of the Zen 4, five of them in a
ResNet-20 step per device. This call is a copy at most (`fusion_barrier.cc`: the result aliases
the operand). `supported` says whether a call takes it: CPU backend and a built native library.

Under a sharded jit each device passes its own shard (custom partitioning: the result is
sharded like the operand, nothing gathered); under vmap it is the same call on the batched
array. It has no derivative rule of its own: `materialize` gives it one.
"""
from __future__ import annotations

import jax
from jax.experimental.custom_partitioning import custom_partitioning

from jaxnets.kernels import native

NAME = "fusion_barrier"


def supported(x) -> bool:
    return (jax.default_backend() == "cpu" and x.ndim >= 1
            and native.ffi_target(NAME, "Materialize") is not None)


def fusion_barrier(x):
    """x, computed once before this call (see module)."""
    if not supported(x):
        raise ValueError(f"fusion_barrier: unsupported operand {x.shape} {x.dtype} on "
                         f"{jax.default_backend()} (see `supported`)")
    return _op(x)


def _call(x):
    return jax.ffi.ffi_call(native.ffi_target(NAME, "Materialize"), jax.ShapeDtypeStruct(x.shape, x.dtype),
                            input_output_aliases={0: 0})(x)


@custom_partitioning
def _partitioned(x):
    return _call(x)


def _partition(mesh, arg_shapes, result_shape):
    sharding = arg_shapes[0].sharding
    return mesh, _call, sharding, (sharding,)


_partitioned.def_partition(partition=_partition,
                           infer_sharding_from_operands=lambda mesh, args, result: args[0].sharding,
                           sharding_rule="... -> ...")


@jax.custom_batching.custom_vmap
def _op(x):
    return _partitioned(x)


@_op.def_vmap
def _op_vmap(axis_size, in_batched, x):
    return _partitioned(x), in_batched[0]
