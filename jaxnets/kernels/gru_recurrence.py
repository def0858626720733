"""The GRU recurrence on CPU by a native kernel, forward and backward.

    ys, (h,) = scan(w_h, b, xp, mask, (h0,), (b_hn,), reverse=False, threads=0)

equals `recurrent_scan(gru_pointwise(reset_after=True), ...)` of `jaxnets.nn.recurrent_scan`
(the XLA loop) as float32 sums in another order: xp [T, B, 3H] is the hoisted input projection
without the bias b [3H], W_h [H, 3H], gates (r, z, n), the reset gate applied to the recurrent
product plus its bias b_hn [H] (cuDNN's and PyTorch's GRU; the course's variant, the reset before
the product, keeps the XLA loop); mask [T, B] (None: every step valid) keeps the carry and emits
zeros at padded steps. The kernels are `gru_recurrence.cc`; the design is the LSTM kernel's
(`jaxnets.kernels.lstm_recurrence`): same threads, same per-device rows under a mesh, dW_h one
matmul over all steps here.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.kernels import native
from jaxnets.parallel import sharding

NAME = "gru_recurrence"


def enabled() -> bool:
    """Whether `recurrent_scan` takes the kernel where it is supported: a vector build
    (`native.vector_build`)."""
    return native.vector_build()


def available() -> bool:
    return native.ffi_target(NAME, "GruForward") is not None


def supported(w_h, b, xp, carry0, extras=()) -> bool:
    if len(extras) != 1 or len(carry0) != 1:
        return False
    (b_hn,), (h0,) = extras, carry0
    return (xp.ndim == 3 and w_h.ndim == 2 and b_hn.shape == (w_h.shape[0],)
            and all(a.dtype == jnp.float32 for a in (w_h, b, xp, h0, b_hn))
            and xp.shape[0] > 0 and xp.shape[1] > 0 and w_h.shape[0] % 16 == 0
            and w_h.shape[1] == 3 * w_h.shape[0] == xp.shape[2] and available())


def scan(w_h, b, xp, mask, carry0, extras, *, reverse: bool = False, threads: int = 0,
         isa: str | None = None):
    """ys [T, B, H] and the final carry (h,) (see module); `isa` picks a build (tests compare them)."""
    if not supported(w_h, b, xp, carry0, extras):
        raise ValueError(f"gru_recurrence.scan: unsupported operands W_h {w_h.shape} {w_h.dtype}, "
                         f"xp {xp.shape} {xp.dtype} (see `supported`)")
    if mask is None:
        mask = jnp.ones(xp.shape[:2], jnp.float32)
    ys, h = _gru((bool(reverse), int(threads), isa), w_h, b, extras[0], xp, mask.astype(jnp.float32),
                 carry0[0])
    return ys, (h,)


def _targets(isa):
    return (native.ffi_target(NAME, "GruForward", isa), native.ffi_target(NAME, "GruBackward", isa))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gru(config, w_h, b, b_hn, xp, mask, h0):
    return _forward(config, w_h, b, b_hn, xp, mask, h0, save=False)[:2]


def _forward(config, w_h, b, b_hn, xp, mask, h0, save=True):
    """save=False (not differentiated): the kernel writes no residuals (results of size 0)."""
    reverse, threads, isa = config

    def call(xp, b, b_hn, w_h, h0, mask):
        (t, batch, _), h = xp.shape, h0.shape[-1]
        saved = [(t, batch, 4 * h), (t, batch, h)] if save else [(0,)] * 2
        return native.call(_targets(isa)[0], [(t, batch, h), (batch, h), *saved],
                           xp, b, b_hn, w_h, h0, mask, reverse=reverse, threads=np.int64(threads))

    # ys, h, gates, hs: batch on dims 1, 0, 1, 1.
    return sharding.per_batch_shard(call, (xp, b, b_hn, w_h, h0, mask), (1, None, None, None, 0, 1),
                                    (1, 0, 1, 1))


def _gru_fwd(config, w_h, b, b_hn, xp, mask, h0):
    ys, h, gates, hs = _forward(config, w_h, b, b_hn, xp, mask, h0)
    return (ys, h), (w_h, gates, hs, mask)


def _gru_bwd(config, residuals, cotangents):
    reverse, threads, isa = config
    w_h, gates, hs, mask = residuals
    d_ys, d_h = cotangents

    def call(w_h, gates, hs, mask, d_ys, d_h):
        t, batch, h = hs.shape
        return native.call(_targets(isa)[1], [(t, batch, 3 * h), (t, batch, 3 * h), (batch, h)],
                           w_h, gates, hs, mask, d_ys, d_h, reverse=reverse, threads=np.int64(threads))

    d_xp, d_hp, d_h0 = sharding.per_batch_shard(
        call, (w_h, gates, hs, mask, d_ys.astype(jnp.float32), d_h.astype(jnp.float32)),
        (None, 1, 1, 1, 1, 0), (1, 1, 0))
    # The recurrent weights' gradient of every step at once: one matmul, h before each step
    # against the gradient of that step's recurrent product (zero at padded steps).
    h = hs.shape[-1]
    d_w_h = hs.reshape(-1, h).T @ d_hp.reshape(-1, 3 * h)
    d_b_hn = jnp.sum(d_hp[..., 2 * h:], axis=(0, 1))
    return d_w_h, jnp.sum(d_xp, axis=(0, 1)), d_b_hn, d_xp, jnp.zeros_like(mask), d_h0


_gru.defvjp(_gru_fwd, _gru_bwd)
