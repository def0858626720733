"""Jittable image augmentation for NHWC batches, with per-example randomness from one key.

Configs name the ops as strings, applied in order, e.g. `("crop:4", "flip")`:

    crop:P   zero-pad every side by P pixels, crop back to HxW at a random offset per image
    flip     mirror each image left-right with probability 1/2

`augment` derives op i's key as `jax.random.fold_in(rng, i)`. The random draws are made
for the whole batch from one key, so with `jax_threefry_partitionable` (the default) they do
not depend on how the batch is sharded over devices.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jaxnets.errors import UserError


def crop_offsets(rng: jax.Array, batch: int, padding: int, out_sharding=None) -> jax.Array:
    """int32 [batch, 2] (row, column) offsets into the padded image, each in [0, 2*padding]."""
    return jax.random.randint(rng, (batch, 2), 0, 2 * padding + 1, dtype=jnp.int32,
                              out_sharding=out_sharding)


def flip_mask(rng: jax.Array, batch: int, out_sharding=None) -> jax.Array:
    """bool [batch]: which images `random_flip` mirrors."""
    return jax.random.bernoulli(rng, 0.5, (batch,), out_sharding=out_sharding)


def _sharded_like_batch(images, ndim: int) -> NamedSharding:
    """Shard per-example draws like the images' batch axis. Under an explicit-axes mesh, vmap
    refuses operands whose batch axes are sharded differently; elsewhere this is a no-op."""
    aval_sharding = jax.typeof(images).sharding
    return NamedSharding(aval_sharding.mesh, PartitionSpec(aval_sharding.spec[0], *[None] * (ndim - 1)))


def _check_nhwc(images) -> None:
    if images.ndim != 4:
        raise ValueError(f"augmentation expects NHWC images, got shape {images.shape}")


def random_crop(images: jax.Array, rng: jax.Array, padding: int) -> jax.Array:
    """Zero-pad H and W by `padding` and crop back to HxW at a random offset per image."""
    _check_nhwc(images)
    images = jnp.asarray(images)
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = crop_offsets(rng, n, padding, _sharded_like_batch(padded, 2))

    def crop_one(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop_one)(padded, offsets)


def random_flip(images: jax.Array, rng: jax.Array) -> jax.Array:
    """Mirror each image horizontally (along W) with probability 1/2."""
    _check_nhwc(images)
    images = jnp.asarray(images)
    flip = flip_mask(rng, images.shape[0], _sharded_like_batch(images, 1))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def _parse_crop(arg: str | None) -> Callable:
    try:
        padding = int(arg)
        if padding < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(
            f"Augmentation op 'crop' needs a non-negative integer padding, as in 'crop:4'; "
            f"got {'crop' if arg is None else 'crop:' + arg!r}.") from None
    return lambda images, rng: random_crop(images, rng, padding)


def _parse_flip(arg: str | None) -> Callable:
    if arg is not None:
        raise UserError(f"Augmentation op 'flip' takes no argument; got 'flip:{arg}'.")
    return random_flip


# op name -> parser of the text after ':' (None when absent) returning fn(images, rng).
_OPS = {"crop": _parse_crop, "flip": _parse_flip}
_USAGE = "Known augmentation ops: 'crop:P' (pad by P pixels, random crop back), 'flip' (horizontal)."


def parse_ops(ops: Sequence[str]) -> list[Callable]:
    """Validate op strings (call this early, e.g. when reading a config) and build the ops."""
    if isinstance(ops, str):   # a bare "flip" would otherwise iterate over its letters
        ops = (ops,)
    fns = []
    for op in ops:
        name, _, arg = str(op).partition(":")
        name = name.strip()
        if name not in _OPS:
            raise UserError(f"Unknown augmentation op {op!r}. {_USAGE}")
        fns.append(_OPS[name](arg.strip() if arg else None))
    return fns


def augment(images: jax.Array, rng: jax.Array, ops: Sequence[str]) -> jax.Array:
    """Apply `ops` in order; op i draws from `jax.random.fold_in(rng, i)`. Jittable with
    `ops` static (a closure or `static_argnames='ops'`); shape and dtype are preserved."""
    for i, fn in enumerate(parse_ops(ops)):
        images = fn(images, jax.random.fold_in(rng, i))
    return images
