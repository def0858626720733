"""Batch normalisation with batch statistics, its gradient written out: the same maths as
`nnx.BatchNorm` (Ioffe & Szegedy 2015, with flax's one-pass variance), fewer passes, and one
array of sums to add up across devices per direction.

    y, mean, var = normalize_with_batch_stats(x, scale, bias, epsilon)   # over all axes but the last

Forward: the sums of x and x^2 per channel, as one array (`summed_over_batch`: under a
batch-sharded jit, one psum), mean and E[x^2] from them, var = max(0, E[x^2] - mean^2), and
y = (x - mean) / sqrt(var + eps) * scale + bias.
Backward, with x^ = (x - mean) / sqrt(var + eps) and n the values per channel:

    d bias = sum(dy),  d scale = sum(dy x^)                       (again one array of sums)
    dx = scale / sqrt(var + eps) / n * (n dy - d bias - x^ d scale)
         + d mean / n + d var * 2 (x - mean) / n

(the last line only where the statistics themselves get a cotangent).
Why not autodiff: JAX's derivative of the same forward takes dy, dy x^ and the statistics'
terms in separate reductions, and XLA all-reduces each result on its own (combined into tuples);
XLA:CPU's in-process all-reduce meets the other devices once per array, and on the per-core CPU
devices `resnet_cifar` runs on, a ResNet-20 step made ~130 such meetings per device instead of
~67 (docs/cpu_choices.md).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnets.kernels import channel_moments
from jaxnets.parallel.sharding import summed_over_batch


XLA_SUMS = ("xla", 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize_with_batch_stats(x, scale, bias, epsilon, sums=XLA_SUMS):
    """(y, mean, var) of training-mode batch norm over all axes of x but the last (see module);
    statistics in float32 (at least), y in x's dtype. `sums`: ("xla", _) or ("native", threads),
    who adds up the per-channel sums (`_moments`)."""
    return _forward(x, scale, bias, epsilon, sums)[0]


def _moments(a, b, shift, sums):
    """[sum of a, sum of a * (b - shift)] over all axes but the last, as one [2C] array (one
    all-reduce under a batch-sharded jit, `summed_over_batch`): by the native kernel where
    `sums` asks for it and it takes the operands (`jaxnets.kernels.channel_moments`), else XLA."""
    kind, threads = sums
    if kind == "native" and channel_moments.supported(a, b):
        return channel_moments.channel_moments(a, b, shift, threads).reshape(-1)
    return channel_moments.reference(a, b, shift).reshape(-1)


def _stats(x32, sums):
    c = x32.shape[-1]
    n = x32.size // c
    totals = summed_over_batch(lambda x: _moments(x, x, jnp.zeros((c,), x.dtype), sums), (x32,)) / n
    mean, mean_sq = totals[:c], totals[c:]
    return mean, jnp.maximum(0.0, mean_sq - mean * mean)


def _forward(x, scale, bias, epsilon, sums):
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, var = _stats(x32, sums)
    inv = jax.lax.rsqrt(var + epsilon)
    y = (x32 - mean) * (inv * scale) + bias
    return (y.astype(x.dtype), mean, var), (x, mean, inv, scale)


def _gradient_sums(sums, x, dy, mean, inv):
    """[sum dy, sum dy x^] per channel, as one array."""
    totals = _moments(dy.astype(mean.dtype), x.astype(mean.dtype), mean, sums)
    return totals * jnp.concatenate([jnp.ones_like(inv), inv])


def _bwd(epsilon, sums, res, cotangents):
    x, mean, inv, scale = res
    dy, dmean, dvar = cotangents
    x32 = x.astype(mean.dtype)
    c = x.shape[-1]
    n = x.size // c
    centred = x32 - mean
    xhat = centred * inv
    g = dy.astype(mean.dtype)
    totals = summed_over_batch(functools.partial(_gradient_sums, sums), (x, dy), (mean, inv))
    dbias, dscale = totals[:c], totals[c:]
    dx = (scale * inv / n) * (n * g - dbias - xhat * dscale) + dmean / n + dvar * (2.0 / n) * centred
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


normalize_with_batch_stats.defvjp(_forward, _bwd)


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` (same parameters, statistics and results) whose training-mode call over
    the last axis goes through `normalize_with_batch_stats`. Other uses (running averages, a
    mask, pmap's axis_name, the two-pass variance, no scale or bias, other feature axes) are
    nnx.BatchNorm's own. `sums`: who adds up the per-channel sums, ("xla", 1) or ("native",
    threads) (a model's `Lowering.batch_norm_sums`)."""

    def __init__(self, *args, sums: tuple[str, int] = XLA_SUMS, **kwargs):
        super().__init__(*args, **kwargs)
        if sums[0] not in ("xla", "native"):
            raise ValueError(f"BatchNorm sums must be ('xla' | 'native', threads), got {sums!r}")
        self.sums = tuple(sums)

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        running = self.use_running_average if use_running_average is None else use_running_average
        plain = (running or running is None or mask is not None or self.axis_name is not None
                 or not self.use_fast_variance or self.scale is None or self.bias is None
                 or self.axis not in (-1, x.ndim - 1))
        if plain:
            return super().__call__(x, use_running_average, mask=mask)
        dtype = self.dtype or jnp.result_type(x, self.scale[...], self.bias[...])
        y, mean, var = normalize_with_batch_stats(x.astype(dtype), self.scale[...].astype(jnp.float32),
                                                  self.bias[...].astype(jnp.float32), self.epsilon,
                                                  self.sums)
        self.mean[...] = jax.lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        self.var[...] = jax.lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)
        return y
