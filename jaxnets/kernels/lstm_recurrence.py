"""The LSTM recurrence on CPU by a native kernel, forward and backward.

    ys, (h, c) = scan(w_h, b, xp, mask, (h0, c0), reverse=False, threads=0)

equals `recurrent_scan(lstm_pointwise, ...)` of `jaxnets.nn.recurrent_scan` (the XLA loop) as
float32 sums in another order: xp [T, B, 4H] is the hoisted input projection without the bias b
[4H], W_h [H, 4H], gates (i, f, g, o); mask [T, B] (None: every step valid) keeps the carry and
emits zeros at padded steps. The kernels are `lstm_recurrence.cc` (see there for why and how;
built per instruction set by `jaxnets.kernels.native`). The backward returns d pre-activation
per step from the kernel; dW_h is one matmul over all steps here, as in the XLA path.

`recurrent_scan` takes this path for LSTM cells (`jaxnets.nn.recurrent.lstm_pointwise`) in
programs for CPU where `supported` (float32, hidden size a multiple of 16, a built native
library) and `enabled`. Threads (`threads`): 0 splits blocks of
batch rows over XLA's intra-op pool, 1 runs them on the calling thread. Under a mesh each
device runs its own rows (`jaxnets.parallel.sharding.per_batch_shard`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.kernels import native
from jaxnets.parallel import sharding

NAME = "lstm_recurrence"


def enabled() -> bool:
    """Whether `recurrent_scan` takes the kernel where it is supported: a vector build
    (`native.vector_build`), as for the attention kernel."""
    return native.vector_build()


def available() -> bool:
    return native.ffi_target(NAME, "LstmForward") is not None


def supported(w_h, b, xp, carry0, extras=()) -> bool:
    arrays = (w_h, b, xp, *carry0)
    return (not extras and xp.ndim == 3 and w_h.ndim == 2 and len(carry0) == 2
            and all(a.dtype == jnp.float32 for a in arrays)
            and xp.shape[0] > 0 and xp.shape[1] > 0 and w_h.shape[0] % 16 == 0
            and w_h.shape[1] == 4 * w_h.shape[0] == xp.shape[2] and available())


def scan(w_h, b, xp, mask, carry0, extras=(), *, reverse: bool = False, threads: int = 0,
         isa: str | None = None):
    """ys [T, B, H] and the final carry (h, c) (see module); `isa` picks a build (tests compare them)."""
    if not supported(w_h, b, xp, carry0, extras):
        raise ValueError(f"lstm_recurrence.scan: unsupported operands W_h {w_h.shape} {w_h.dtype}, xp {xp.shape} "
                         f"{xp.dtype} (see `supported`)")
    if mask is None:
        mask = jnp.ones(xp.shape[:2], jnp.float32)
    h0, c0 = carry0
    ys, h, c = _lstm((bool(reverse), int(threads), isa), w_h, b, xp, mask.astype(jnp.float32), h0, c0)
    return ys, (h, c)


def _targets(isa):
    return (native.ffi_target(NAME, "LstmForward", isa), native.ffi_target(NAME, "LstmBackward", isa))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm(config, w_h, b, xp, mask, h0, c0):
    return _forward(config, w_h, b, xp, mask, h0, c0, save=False)[:3]


def _forward(config, w_h, b, xp, mask, h0, c0, save=True):
    """save=False (not differentiated): the kernel writes no residuals (results of size 0)."""
    reverse, threads, isa = config

    def call(xp, b, w_h, h0, c0, mask):
        (t, batch, g), h = xp.shape, h0.shape[-1]
        saved = [(t, batch, g), (t, batch, h), (t, batch, h)] if save else [(0,)] * 3
        shapes = [(t, batch, h), (batch, h), (batch, h), *saved]
        return native.call(_targets(isa)[0], shapes, xp, b, w_h, h0, c0, mask, reverse=reverse,
                           threads=np.int64(threads))

    # ys, h, c, gates, cs, hs: batch on dims 1, 0, 0, 1, 1, 1.
    return sharding.per_batch_shard(call, (xp, b, w_h, h0, c0, mask), (1, None, None, 0, 0, 1),
                                    (1, 0, 0, 1, 1, 1))


def _lstm_fwd(config, w_h, b, xp, mask, h0, c0):
    ys, h, c, gates, cs, hs = _forward(config, w_h, b, xp, mask, h0, c0)
    return (ys, h, c), (w_h, gates, cs, hs, c0, mask)


def _lstm_bwd(config, residuals, cotangents):
    reverse, threads, isa = config
    w_h, gates, cs, hs, c0, mask = residuals
    d_ys, d_h, d_c = cotangents

    def call(w_h, gates, cs, c0, mask, d_ys, d_h, d_c):
        return native.call(_targets(isa)[1], [gates.shape, c0.shape, c0.shape], w_h, gates, cs, c0,
                           mask, d_ys, d_h, d_c, reverse=reverse, threads=np.int64(threads))

    d_pre, d_h0, d_c0 = sharding.per_batch_shard(
        call, (w_h, gates, cs, c0, mask, d_ys.astype(jnp.float32), d_h.astype(jnp.float32),
               d_c.astype(jnp.float32)), (None, 1, 1, 0, 1, 1, 0, 0), (1, 0, 0))
    # The recurrent weights' gradient of every step at once: one matmul, h before each step
    # against that step's pre-activation gradient (zero at padded steps).
    h = hs.shape[-1]
    d_w_h = hs.reshape(-1, h).T @ d_pre.reshape(-1, 4 * h)
    return d_w_h, jnp.sum(d_pre, axis=(0, 1)), d_pre, jnp.zeros_like(mask), d_h0, d_c0


_lstm.defvjp(_lstm_fwd, _lstm_bwd)
