"""The one recurrent scan: `recurrent_scan` runs any cell's pointwise maths over time.

A cell is `pointwise(carry, xp, hp, extras) -> (new_carry, y)` where `xp = x_t @ W_x + b`
(the input projection), `hp = h_{t-1} @ W_h` (the fused recurrent matmul of all gates) and
`extras` are any further recurrent parameters the cell needs (cells: `jaxnets.nn.recurrent`).

- the input projection of all timesteps is one large matmul hoisted out of the loop
  (`project`); inside the loop there is one recurrent matmul per step (all gates fused);
- the backward pass is a hand-written reverse scan (`jax.custom_vjp`) that differentiates
  only the cheap pointwise part per step and leaves the weight gradient
  `dW_h = sum_t h_{t-1}^T dhp_t` to ONE large matmul after the loop, instead of the
  per-step outer products and accumulations that autodiff of `lax.scan` produces;
- each step's slices of the scanned arrays arrive through the loop carry, fetched ahead
  (`_contiguous_scan`), so XLA:CPU compiles the gate maths to vector code;
- `unroll` is passed to both scans; padded steps (mask 0) keep the carry and emit zeros,
  so they change neither the outputs at valid steps nor the final state. Running the scan
  with `reverse=True` and a right-padded mask therefore gives the backward direction of a
  bidirectional layer without flipping sequences;
- a cell marked `runs_natively(kernel)` (the LSTM: `jaxnets.kernels.lstm_recurrence`; the
  GRU with the reset after the product: `jaxnets.kernels.gru_recurrence`) runs
  the whole loop, forward and backward, in that native CPU kernel wherever the program is for
  CPU and the kernel supports the operands: there XLA's per-step loop overhead was about half
  of each step. Same maths, same contract (masks, reverse, the final carry).

Why each piece is there, with measurements: `benchmarks/lstm.py`.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxnets.parallel import sharding

# Scan unroll factor the layers use unless told otherwise (measured by `python -m benchmarks.lstm`).
DEFAULT_UNROLL = 1
# Timesteps fetched per loop iteration by the scan (see `_contiguous_scan`): 4 beat 1 on the
# forward pass, 8 made the backward slower (docs/cpu_choices.md).
DEFAULT_CHUNK = 4


def additive(pointwise):
    """Mark a pointwise function that reads xp and hp only through xp + hp: then dxp == dhp
    and the backward scan emits one stacked gradient instead of two equal ones."""
    pointwise.additive = True
    return pointwise


def runs_natively(kernel):
    """Mark a pointwise function whose whole recurrence `kernel` (a module with `enabled()`,
    `supported(w_h, b, xp, carry0, extras)` and
    `scan(w_h, b, xp, mask, carry0, extras, reverse=, threads=)`) computes natively on CPU;
    `recurrent_scan` takes it where it applies."""
    def mark(pointwise):
        pointwise.native = kernel
        return pointwise
    return mark


def _masked_step(pointwise, carry, xp, hp, extras, m):
    """One step; where m == 0 (padding) the carry passes through and the output is 0."""
    new, y = pointwise(carry, xp, hp, extras)
    if m is None:
        return new, y
    keep = m[:, None] > 0
    new = tuple(jnp.where(keep, n, c) for n, c in zip(new, carry))
    return new, jnp.where(keep, y, jnp.zeros_like(y))


def _contiguous_scan(body, carry, xs, *, reverse: bool, unroll: int):
    """`lax.scan(body, carry, xs, reverse=reverse)`, except that the slices of `xs` reach
    `body` through the loop carry, fetched one chunk of `chunk` steps ahead.

    Why: scanned over directly, XLA:CPU fuses the per-step dynamic-slice of `xs` into the
    step's pointwise maths and then compiles that fusion to scalar code (it reloads the
    slice index inside the element loop), which made the LSTM gates several times slower
    (docs/cpu_choices.md). Carried slices are materialised as
    contiguous buffers by one cheap copy, and the pointwise maths vectorises. Fetching a
    chunk of steps at a time (static slices inside) also cuts the per-step loop overhead.
    """
    length = jax.tree.leaves(xs)[0].shape[0]
    k = max(d for d in range(1, min(DEFAULT_CHUNK, length) + 1) if length % d == 0)   # divides T
    n = length // k
    chunks = jax.tree.map(lambda a: a.reshape(n, k, *a.shape[1:]), xs)

    def take(i):
        return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), chunks)

    def step(state, i):
        inner, current = state
        upcoming = take(jnp.maximum(i - 1, 0) if reverse else jnp.minimum(i + 1, n - 1))
        ys = [None] * k
        for j in (reversed(range(k)) if reverse else range(k)):
            inner, ys[j] = body(inner, jax.tree.map(lambda a: a[j], current))
        return (inner, upcoming), jax.tree.map(lambda *y: jnp.stack(y), *ys)

    first = take(n - 1 if reverse else 0)
    (carry, _), ys = jax.lax.scan(step, (carry, first), jnp.arange(n), reverse=reverse, unroll=unroll)
    return carry, jax.tree.map(lambda a: a.reshape(length, *a.shape[2:]), ys)


@jax.custom_vjp
def project(x, w):
    """The hoisted input projection of all timesteps: [T, B, D] x [D, G] -> [T, B, G]."""
    return jnp.einsum("tbd,dg->tbg", x, w)


def _project_fwd(x, w):
    return project(x, w), (x, w)


def _project_bwd(res, dy):
    # Written out because XLA:CPU's own transpose of the einsum computed dW as a dot with
    # both operands transposed, outside its fast matmul library: a third of an LSTM step
    # (docs/cpu_choices.md). Here the narrow input is the one transposed.
    x, w = res
    t, b, d = x.shape
    dy2 = dy.reshape(t * b, -1)
    dw = x.reshape(t * b, d).T @ dy2
    dx = (dy2 @ w.T).reshape(t, b, d)
    return dx, dw


project.defvjp(_project_fwd, _project_bwd)


IMPLEMENTATIONS = ("auto", "xla")


def recurrent_scan(pointwise: Callable, unroll: int, reverse: bool, w_h, extras, b, xp, mask, carry0,
                   *, native_threads: int = 1, implementation: str = "auto"):
    """Run `pointwise` over time. xp: [T, B, G*H] time-major input projection WITHOUT the
    bias `b` [G*H] (added inside the step, where it fuses into the gate maths instead of
    costing a pass over the whole projection); mask: [T, B] float or None.

    Returns (ys [T, B, H], final carry). Differentiable in w_h, extras, b, xp and carry0.
    `native_threads` (a cell's native kernel, see module): 1 runs it on the calling thread, 0
    splits it over XLA's intra-op pool (one multi-threaded CPU device: `Lowering.native_threads`).
    `implementation`: "auto" takes that kernel where it applies; "xla" always runs the XLA loop
    (a program for other runtimes: `jaxnets export`).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"recurrent implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    kernel = getattr(pointwise, "native", None) if implementation == "auto" else None
    if kernel is not None and sharding.current_platform() == "cpu" and kernel.enabled() \
            and kernel.supported(w_h, b, xp, carry0, extras):
        return kernel.scan(w_h, b, xp, mask, carry0, extras, reverse=reverse, threads=native_threads)
    return _xla_scan(pointwise, unroll, reverse, w_h, extras, b, xp, mask, carry0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _xla_scan(pointwise: Callable, unroll: int, reverse: bool, w_h, extras, b, xp, mask, carry0):
    """`recurrent_scan` as an XLA loop (a `lax.scan`), for any cell."""
    ys, carry, _ = _scan_forward(pointwise, unroll, reverse, w_h, extras, b, xp, mask, carry0, False)
    return ys, carry


def _scan_forward(pointwise, unroll, reverse, w_h, extras, b, xp, mask, carry0, save):
    is_additive = getattr(pointwise, "additive", False)

    def body(carry, inp):
        xp_t, m_t = inp
        xb, hp = xp_t + b, carry[0] @ w_h
        new, y = _masked_step(pointwise, carry, xb, hp, extras, m_t)
        # Residuals for the hand-written backward: the incoming carry and, for additive
        # cells, the gates' pre-activation (all the pointwise maths reads); else hp.
        res = (carry, xb + hp if is_additive else hp) if save else None
        return new, (y, res)

    carry, (ys, res) = _contiguous_scan(body, carry0, (xp, mask), reverse=reverse, unroll=unroll)
    return ys, carry, res


def _recurrent_scan_fwd(pointwise, unroll, reverse, w_h, extras, b, xp, mask, carry0):
    ys, carry, (carries_in, pre) = _scan_forward(
        pointwise, unroll, reverse, w_h, extras, b, xp, mask, carry0, True)
    is_additive = getattr(pointwise, "additive", False)
    # Additive cells need only the pre-activations; others the projection xp as well.
    return (ys, carry), (w_h, extras, b, None if is_additive else xp, mask, carries_in, pre)


def _recurrent_scan_bwd(pointwise, unroll, reverse, res, cotangents):
    w_h, extras, b, xp, mask, carries_in, pre = res
    dys, dcarry_final = cotangents
    w_h_t = w_h.T
    is_additive = getattr(pointwise, "additive", False)

    def body(acc, inp):
        dcarry, dextras = acc
        carry_in, xp_t, pre_t, m_t, dy_t = inp
        if is_additive:   # pre_t = xp_t + b + hp_t: one gradient serves xp, b and hp
            _, step_vjp = jax.vjp(
                lambda c, s, e: _masked_step(pointwise, c, s, 0.0, e, m_t), carry_in, pre_t, extras)
            dc, dhp, de = step_vjp((dcarry, dy_t))
            dxp = None
        else:             # pre_t = hp_t
            _, step_vjp = jax.vjp(
                lambda c, x, h, e: _masked_step(pointwise, c, x, h, e, m_t),
                carry_in, xp_t + b, pre_t, extras)
            dc, dxp, dhp, de = step_vjp((dcarry, dy_t))
        dc = (dc[0] + dhp @ w_h_t,) + tuple(dc[1:])
        dextras = jax.tree.map(jnp.add, dextras, de)
        return (dc, dextras), (dxp, dhp)

    acc0 = (tuple(dcarry_final), jax.tree.map(jnp.zeros_like, extras))
    (dcarry0, dextras), (dxp, dhp) = _contiguous_scan(
        body, acc0, (carries_in, xp, pre, mask, dys), reverse=not reverse, unroll=unroll)
    dxp = dhp if is_additive else dxp
    # The weight gradient of the recurrent matmul for all steps at once: one big matmul.
    h_in = carries_in[0]
    dw_h = (h_in.reshape(-1, h_in.shape[-1]).T @ dhp.reshape(-1, dhp.shape[-1])).astype(w_h.dtype)
    db = jnp.sum(dxp, axis=(0, 1), dtype=b.dtype)
    dmask = None if mask is None else jnp.zeros_like(mask)
    return dw_h, dextras, db, dxp, dmask, dcarry0


_xla_scan.defvjp(_recurrent_scan_fwd, _recurrent_scan_bwd)
