"""A native CPU kernel over a batch as a JAX op: split over the batch under a sharded jit, and
taken through XLA's own form of the same maths under vmap and for derivatives.

    op = bilinear_batch_op(kernel, reference, "b h w c, i j c o -> b h w o", sums_batch=False)

`kernel(x, y)` is the FFI call (operands batch-major: dimension 0 of both), `reference(x, y)`
the same function written in lax, bilinear in (x, y). The op returned:
- under a sharded jit, runs the kernel on each device's batch shard: XLA cannot split a custom
  call and would otherwise gather the whole batch onto every device and repeat the work there.
  `sums_batch`: the result is a sum over the batch (a filter gradient), so the shards' results
  are added up by a psum over the batch's mesh axes (the all-reduce XLA places after its own
  form); otherwise the result keeps the batch dimension, sharded like the operands.
- under vmap, runs the reference (a custom call has no batching rule);
- differentiates as a bilinear map whose tangents are the reference's, which JAX can
  differentiate and transpose again (second-order gradients of a network: Hessian-vector
  products).

`rows_batch_op` is the same for a kernel over rows with several operands and results (a
normalisation's forward and backward): operands flagged in `rows` are batch-major, the others
(parameters) whole on every device; results flagged in `summed` are sums over the rows (psum
over the batch's mesh axes), the others batch-major. Its derivatives are the reference's
(any function JAX can differentiate).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P


def whole(mesh, rank):
    return NamedSharding(mesh, P(*[None] * rank))


def _batch_axes(sharding):
    """The mesh axes of a NamedSharding's dimension 0 (None: not split)."""
    return sharding.spec[0] if len(sharding.spec) else None


def bilinear_batch_op(kernel, reference, sharding_rule: str, sums_batch: bool):
    """The op described in the module docstring: `rows_batch_op` with one result. Both operands
    are batch-major when the result sums the batch (x and the output gradient of a filter
    gradient), else the second is whole on every device (a kernel's weights). Its tangents are
    the reference's JVP, reference(tx, y) + reference(x, ty) for a bilinear map."""
    op = rows_batch_op(lambda x, y: (kernel(x, y),), lambda x, y: (reference(x, y),),
                       rows=(True, sums_batch), summed=(sums_batch,), sharding_rule=sharding_rule)
    return lambda x, y: op(x, y)[0]


def rows_batch_op(kernel, reference, rows: tuple[bool, ...], summed: tuple[bool, ...],
                  sharding_rule: str):
    """`kernel(*args)` -> a tuple of results, as an op (see the module docstring)."""

    @custom_partitioning
    def partitioned(*args):
        return kernel(*args)

    def shardings(mesh, arg_shapes, result_shapes):
        sharding = arg_shapes[0].sharding
        if not isinstance(sharding, NamedSharding):                 # one device
            return None, tuple(sharding for _ in result_shapes), tuple(a.sharding for a in arg_shapes)
        axes = _batch_axes(sharding)
        batch = lambda rank: NamedSharding(mesh, P(axes, *[None] * (rank - 1)))   # noqa: E731
        args = tuple(batch(a.ndim) if r else whole(mesh, a.ndim) for a, r in zip(arg_shapes, rows))
        results = tuple(whole(mesh, r.ndim) if s else batch(r.ndim)
                        for r, s in zip(result_shapes, summed))
        return axes, results, args

    def partition(mesh, arg_shapes, result_shapes):
        axes, results, args = shardings(mesh, arg_shapes, result_shapes)

        def local(*operands):
            outs = kernel(*operands)
            return outs if axes is None else tuple(
                lax.psum(o, axes) if s else o for o, s in zip(outs, summed))

        return mesh, local, results, args

    def infer(mesh, arg_shapes, result_shapes):
        return shardings(mesh, arg_shapes, result_shapes)[1]

    partitioned.def_partition(partition=partition, infer_sharding_from_operands=infer,
                              sharding_rule=sharding_rule)

    @jax.custom_batching.custom_vmap
    def op(*args):
        return partitioned(*args)

    @op.def_vmap
    def op_vmap(axis_size, in_batched, *args):
        args = (a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
                for a, batched in zip(args, in_batched))
        return jax.vmap(reference)(*args), tuple(True for _ in summed)

    @jax.custom_jvp
    def differentiable(*args):
        return op(*args)

    @differentiable.defjvp
    def differentiable_jvp(primals, tangents):
        return op(*primals), jax.jvp(reference, primals, tangents)[1]

    return differentiable
