"""Host-side image decoding and augmentation, run per record in the readers/workers.

Training (`TrainImageTransform`): Inception-style random-resized crop (a box covering a
uniform fraction in [min_scale, 1] of the image area with log-uniform aspect ratio in
[3/4, 4/3]; ten tries, then the largest centred box of a ratio in range), resized to
size x size, and a horizontal flip with probability 1/2. Evaluation (`EvalImageTransform`):
resize the shorter side to size / crop_fraction (256 for 224) and take the centre size x size.
Both yield uint8 HxWx3; the scaling to [0, 1] and the per-channel normalisation run on the
device inside the jitted step (task option `input_mean`/`input_std`), which keeps host-to-device
traffic at one byte per pixel channel.

Decoding: JPEG files go to libjpeg-turbo through simplejpeg, straight into an RGB array (the
pixels Pillow gives, without Pillow's 4-byte-per-pixel copy). Where the crop keeps at least
twice `size` pixels a side, libjpeg scales the DCT by 1/2, 1/4 or 1/8 while decoding, so a
large photo is never fully decoded only to be shrunk (tf.data's decode_and_crop_jpeg idea).
Every other file (PNG, CMYK JPEG, anything simplejpeg refuses) is decoded by Pillow.

Resizing: OpenCV's area interpolation (FFCV's choice): each output pixel is the average of the
crop over the area it covers, on each side separately, which antialiases a shrinking crop and
blends at most two source pixels of a growing one. It costs about half of Pillow's bilinear
resampling, the other large cost beside the decoder (benchmarks.input_pipeline).

A file that cannot be decoded (corrupt, truncated, or not an image) is fatal: `UserError`
naming the file (exit 2). Skipping it silently would change the training order.
"""
from __future__ import annotations

import io
import math

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from jaxnets.errors import UserError

Box = tuple[float, float, float, float]   # left, top, right, bottom in pixels
JPEG_MAGIC = b"\xff\xd8"


def _bad_file(path: str, error: Exception) -> UserError:
    return UserError(f"Cannot decode image file {path} ({type(error).__name__}: {error}). "
                     "Corrupt or non-image files are fatal (not skipped): remove or replace the "
                     "file, then rerun (the cached file list is rebuilt when a class folder changes).")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG simplejpeg can decode to RGB, else None (Pillow's files)."""
    if not data.startswith(JPEG_MAGIC):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return None if colorspace in ("CMYK", "YCCK") else (width, height)


def _pillow_rgb(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))   # a non-image raises here, truncated data in convert
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def decode_rgb(data: bytes, path: str, shrink: int = 1) -> np.ndarray:
    """The image as uint8 HxWx3; a JPEG may be decoded `shrink` (1, 2, 4 or 8) times smaller
    (libjpeg's DCT scaling: the output is ceil(side / shrink) a side)."""
    return _decode(data, path, _jpeg_size(data), shrink)


def _decode(data: bytes, path: str, jpeg_size: tuple[int, int] | None, shrink: int) -> np.ndarray:
    """`decode_rgb` given `_jpeg_size(data)`, read once by the caller."""
    try:
        if jpeg_size is not None:
            try:
                return simplejpeg.decode_jpeg(data, colorspace="RGB",
                                              min_width=-(-jpeg_size[0] // shrink),
                                              min_height=-(-jpeg_size[1] // shrink))
            except ValueError:
                pass   # a recoverable libjpeg warning (strict mode): Pillow decides
        return _pillow_rgb(data)
    except Exception as e:  # noqa: BLE001 - any decoder failure is the file's fault
        raise _bad_file(path, e) from None


def image_size(data: bytes, path: str) -> tuple[int, int]:
    """(width, height) from the header alone."""
    return _jpeg_size(data) or _pillow_size(data, path)


def _pillow_size(data: bytes, path: str) -> tuple[int, int]:
    try:
        return Image.open(io.BytesIO(data)).size
    except Exception as e:  # noqa: BLE001
        raise _bad_file(path, e) from None


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """pixels (HxWx3 uint8, any strides) -> size x size x 3, each output pixel the average of
    the source over the area it covers (antialiased when shrinking, OpenCV's INTER_AREA)."""
    height, width = pixels.shape[:2]
    if min(height, width) < size < max(height, width):
        # One side shrinks, the other grows: INTER_AREA would fall back to two-tap weights on
        # both sides, aliasing the shrinking one. Shrink it alone first (exact areas).
        shape = (width, size) if height > size else (size, height)
        pixels = cv2.resize(pixels, shape, interpolation=cv2.INTER_AREA)
    return cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA)


def decode_box(data: bytes, path: str, box_fn, size: int, flip_fn=None) -> np.ndarray:
    """Decode `data`, take the box `box_fn(width, height)` (rounded to whole pixels), resize it
    to size x size RGB and mirror it left-right if `flip_fn()` (called after `box_fn`: the
    draws keep their order)."""
    jpeg_size = _jpeg_size(data)   # the header, parsed once for the box and the decode
    width, height = jpeg_size or _pillow_size(data, path)
    left, top, right, bottom = box_fn(width, height)
    flip = bool(flip_fn()) if flip_fn is not None else False
    # The largest power-of-two DCT scale keeping the box >= size pixels per side.
    shrink = 1
    while shrink < 8 and min(right - left, bottom - top) >= 2 * shrink * size:
        shrink *= 2
    pixels = _decode(data, path, jpeg_size, shrink)
    sx, sy = pixels.shape[1] / width, pixels.shape[0] / height
    x0, x1 = _span(left * sx, right * sx, pixels.shape[1])
    y0, y1 = _span(top * sy, bottom * sy, pixels.shape[0])
    out = resize(pixels[y0:y1, x0:x1], size)
    return cv2.flip(out, 1) if flip else out   # on the small result: one cheap copy


def _span(lo: float, hi: float, limit: int) -> tuple[int, int]:
    """Whole-pixel [start, stop) of at least one pixel inside [0, limit)."""
    start = min(max(int(round(lo)), 0), limit - 1)
    return start, max(min(int(round(hi)), limit), start + 1)


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
