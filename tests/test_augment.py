"""Augmentation ops against a NumPy reference that applies the same sampled offsets and flips."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxnets.data.augment import (augment, crop_offsets, flip_mask, parse_ops, random_crop,
                                  random_flip)
from jaxnets.errors import UserError


def _images(n=16, h=9, w=7, c=3, seed=0):
    return np.random.default_rng(seed).integers(1, 256, (n, h, w, c)).astype(np.uint8)


def _np_crop(images, offsets, padding):
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return np.stack([padded[i, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


def _np_flip(images, mask):
    return np.stack([img[:, ::-1] if f else img for img, f in zip(images, mask)])


def test_random_crop_matches_numpy_reference():
    images, rng, padding = _images(), jax.random.key(1), 3
    out = jax.jit(random_crop, static_argnums=2)(images, rng, padding)
    offsets = np.asarray(crop_offsets(rng, len(images), padding))
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(out), _np_crop(images, offsets, padding))
    # Independent check of the semantics: the crop at offset (P, P) is the identity, and an
    # image cropped at (dy, dx) has exactly max(0, P-dy) zero rows at the top (pixels are >= 1).
    for img, src, (dy, dx) in zip(np.asarray(out), images, offsets):
        zero_rows_top = padding - dy if dy < padding else 0
        assert (img[:zero_rows_top] == 0).all() and (img[zero_rows_top:] != 0).any()
        if (dy, dx) == (padding, padding):
            np.testing.assert_array_equal(img, src)


def test_crop_offsets_cover_the_range_per_example():
    offsets = np.asarray(crop_offsets(jax.random.key(0), 4000, 4))
    assert offsets.dtype == np.int32 and offsets.min() == 0 and offsets.max() == 8
    counts = np.bincount(offsets.ravel(), minlength=9)
    # 8000 draws over 9 values: ~889 each, binomial sd ~28; 6 sd bounds.
    assert np.all(np.abs(counts - 8000 / 9) < 6 * np.sqrt(8000 / 9 * 8 / 9))
    assert len({tuple(o) for o in offsets[:32]}) > 10     # different per image


def test_random_flip_matches_numpy_reference():
    images, rng = _images(n=64), jax.random.key(2)
    out = jax.jit(random_flip)(images, rng)
    mask = np.asarray(flip_mask(rng, len(images)))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert 10 < mask.sum() < 54                           # p=0.5 of 64, > 5 sd margin
    np.testing.assert_array_equal(np.asarray(out), _np_flip(images, mask))


def test_augment_composes_ops_with_folded_keys():
    images, rng = _images(), jax.random.key(3)
    ops = ("crop:2", "flip")
    out = jax.jit(augment, static_argnames="ops")(images, rng, ops=ops)
    k_crop, k_flip = jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)
    ref = _np_crop(images, np.asarray(crop_offsets(k_crop, 16, 2)), 2)
    ref = _np_flip(ref, np.asarray(flip_mask(k_flip, 16)))
    np.testing.assert_array_equal(np.asarray(out), ref)
    assert out.dtype == images.dtype
    # float images keep their dtype too
    out_f = augment(images.astype(np.float32) / 255, rng, ops)
    assert out_f.dtype == np.float32 and out_f.shape == images.shape


def test_determinism_per_key():
    images = _images()
    a = augment(images, jax.random.key(5), ("crop:4", "flip"))
    b = augment(images, jax.random.key(5), ("crop:4", "flip"))
    c = augment(images, jax.random.key(6), ("crop:4", "flip"))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("explicit_axes", [True, False])
def test_sharded_batch_gives_the_same_result(explicit_axes):
    images, rng = _images(n=16), jax.random.key(7)
    if explicit_axes:
        mesh = jax.make_mesh((8,), ("data",))
    else:
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(images, NamedSharding(mesh, P("data")))
    fn = jax.jit(functools.partial(augment, ops=("crop:3", "flip")))
    np.testing.assert_array_equal(np.asarray(fn(sharded, rng)), np.asarray(fn(images, rng)))


def test_no_ops_and_zero_padding_are_identity():
    images = _images()
    np.testing.assert_array_equal(np.asarray(augment(images, jax.random.key(0), ())), images)
    np.testing.assert_array_equal(np.asarray(augment(images, jax.random.key(0), ("crop:0",))),
                                  images)


@pytest.mark.parametrize("ops, needle", [
    (("rotate",), "'rotate'"), (("crop",), "crop:4"), (("crop:x",), "crop:4"),
    (("crop:-1",), "non-negative"), (("flip:3",), "no argument")])
def test_bad_ops_raise_user_error(ops, needle):
    with pytest.raises(UserError) as err:
        parse_ops(ops)
    assert needle in str(err.value)
    if ops == ("rotate",):
        assert "crop:P" in str(err.value) and "flip" in str(err.value)
