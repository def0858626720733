"""Host-side image decoding and augmentation (Pillow), run per record in the readers/workers.

Training (`TrainImageTransform`): Inception-style random-resized crop (a box covering a
uniform fraction in [min_scale, 1] of the image area with log-uniform aspect ratio in
[3/4, 4/3]; ten tries, then the largest centred box of a ratio in range), resized to
size x size, and a horizontal flip with probability 1/2. Evaluation (`EvalImageTransform`):
resize the shorter side to size / crop_fraction (256 for 224) and take the centre size x size.
Both yield uint8 HxWx3; the scaling to [0, 1] and the per-channel normalisation run on the
device inside the jitted step (task option `input_mean`/`input_std`), which keeps host-to-device
traffic at one byte per pixel channel.

JPEG files are decoded with Pillow's draft mode: libjpeg scales the DCT by 1/2, 1/4 or 1/8
while decoding, as far as the crop still has at least `size` pixels on each side, so a large
photo is never fully decoded only to be shrunk (tf.data's decode_and_crop_jpeg trick).

A file that cannot be decoded (corrupt, truncated, or not an image) is fatal: `UserError`
naming the file (exit 2). Skipping it silently would change the training order.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from jaxnets.errors import UserError

Box = tuple[float, float, float, float]   # left, top, right, bottom in pixels


def open_image(data: bytes, path: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))   # reads the header only; a non-image raises here
    except Exception as e:  # noqa: BLE001 - any decoder failure is the file's fault
        raise _bad_file(path, e) from None


def _bad_file(path: str, error: Exception) -> UserError:
    return UserError(f"Cannot decode image file {path} ({type(error).__name__}: {error}). "
                     "Corrupt or non-image files are fatal (not skipped): remove or replace the "
                     "file, then rerun (the cached file list is rebuilt when a class folder changes).")


def decode_box(data: bytes, path: str, box_fn, size: int, flip_fn=None) -> np.ndarray:
    """Decode `data`, take the box `box_fn(width, height)`, resize it to size x size RGB and
    mirror it left-right if `flip_fn()` (called after `box_fn`: the draws keep their order)."""
    image = open_image(data, path)
    try:
        width, height = image.size
        left, top, right, bottom = box_fn(width, height)
        flip = bool(flip_fn()) if flip_fn is not None else False
        if image.format == "JPEG":
            # Ask libjpeg for the smallest DCT scale keeping the box >= size pixels per side.
            scale = min((right - left) / size, (bottom - top) / size)
            if scale >= 2:
                image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
                sx, sy = image.size[0] / width, image.size[1] / height
                left, top, right, bottom = left * sx, top * sy, right * sx, bottom * sy
        if image.mode != "RGB":   # an RGB image is resized as decoded (convert would copy it)
            image = image.convert("RGB")
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, right, bottom))
        if flip:   # on the small result, in Pillow: one copy fewer than flipping the array
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(image, dtype=np.uint8)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated data surfaces while decoding
        raise _bad_file(path, e) from None


def decode_full(data: bytes, path: str) -> np.ndarray:
    """The whole image as uint8 HxWx3 (the decoder-alone reference)."""
    image = open_image(data, path)
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001
        raise _bad_file(path, e) from None


def random_resized_box(width: int, height: int, rng: np.random.Generator, min_scale: float = 0.08,
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """Inception-style crop box (Szegedy et al. 2015; torchvision's RandomResizedCrop)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = width / height   # fallback: centre crop at the nearest allowed ratio
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_box(width: int, height: int, size: int, crop_fraction: float) -> Box:
    """The centre size x size box after resizing the shorter side to size / crop_fraction,
    expressed in the original image's pixels."""
    side = min(width, height) * crop_fraction   # the box's side in original pixels
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


class TrainImageTransform:
    """record {"image": encoded bytes, "label", "path"} + generator -> {"image", "label"}."""

    def __init__(self, size: int = 224, min_scale: float = 0.08, flip: bool = True):
        self.size, self.min_scale, self.flip = int(size), float(min_scale), bool(flip)

    def __call__(self, record, rng: np.random.Generator):
        image = decode_box(record["image"].tobytes(), str(record["path"]),
                           lambda w, h: random_resized_box(w, h, rng, self.min_scale), self.size,
                           flip_fn=lambda: self.flip and rng.random() < 0.5)
        return {"image": image, "label": record["label"]}


class EvalImageTransform:
    """record -> {"image": centre crop, "label"}; deterministic (the generator is ignored)."""

    def __init__(self, size: int = 224, crop_fraction: float = 0.875):
        self.size, self.crop_fraction = int(size), float(crop_fraction)

    def __call__(self, record, rng=None):
        image = decode_box(record["image"].tobytes(), str(record["path"]),
                           lambda w, h: center_box(w, h, self.size, self.crop_fraction), self.size)
        return {"image": image, "label": record["label"]}
