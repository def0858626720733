"""Image folders (ROOT/SPLIT/CLASS/*.jpg): listing, caching, host crops, bad input."""
import os

import numpy as np
import pytest
from PIL import Image

from jaxnets.data.fixtures import write_imagenet
from jaxnets.data.image_decode import (EvalImageTransform, TrainImageTransform, center_box,
                                       decode_box, decode_rgb, image_size, random_resized_box,
                                       resize)
from jaxnets.data.image_folder import ImageFolderSource, image_folder
from jaxnets.data.pipeline import TrainIterator, eval_batches
from jaxnets.errors import UserError


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("imagenet"))
    counts = write_imagenet(out, images=40, classes=4)
    assert counts == {"train": 32, "val": 8}
    return out


def test_layout_labels_and_cache(fixture_dir):
    ds = image_folder(fixture_dir, image_size=32)
    assert set(ds.splits) == {"train", "val"} and ds.info["num_classes"] == 4
    train = ds.splits["train"]
    assert len(train) == 32 and len(ds.splits["val"]) == 8
    # Labels follow the sorted class folder names; the record's path is in that folder.
    for i in (0, 9, 31):
        rec = train[i]
        assert os.path.basename(os.path.dirname(str(rec["path"]))) == f"n{int(rec['label']):08d}"
    assert os.path.isfile(os.path.join(fixture_dir, ".jaxnets-files-train.json"))
    # A new file changes its class folder's mtime: the cached list is rebuilt.
    Image.new("RGB", (40, 30)).save(os.path.join(fixture_dir, "train", "n00000002", "extra.png"))
    assert len(ImageFolderSource(fixture_dir, "train")) == 33
    os.remove(os.path.join(fixture_dir, "train", "n00000002", "extra.png"))


def test_train_and_eval_batches_are_fixed_size_and_deterministic(fixture_dir):
    ds = image_folder(fixture_dir, image_size=32)
    it = TrainIterator(ds.splits["train"], batch_size=8, seed=0, transform=ds.train_transform)
    a, b = it.batch(3), it.batch(3)
    assert a["image"].shape == (8, 32, 32, 3) and a["image"].dtype == np.uint8
    assert np.array_equal(a["image"], b["image"]) and set(a) == {"image", "label"}
    evals = list(eval_batches(ds.splits["val"], 5, transform=ds.eval_transform))
    assert sum(int(e["mask"].sum()) for e in evals) == 8


def test_crop_boxes_follow_the_recipe():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(x) for x in rng.integers(20, 500, 2))
        left, top, right, bottom = random_resized_box(w, h, rng)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
    # Centre box: the shorter side scaled by 0.875 and centred, in original pixels.
    assert center_box(400, 300, 224, 0.875) == (200 - 131.25, 150 - 131.25, 200 + 131.25, 150 + 131.25)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Output pixel i averages source [i s, (i + 1) s), s = n_in / n_out, by covered length."""
    s = n_in / n_out
    lo, j = np.arange(n_out)[:, None] * s, np.arange(n_in)[None, :]
    return np.clip(np.minimum(lo + s, j + 1) - np.maximum(lo, j), 0.0, None) / s


def _reference_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """float64 NumPy: each output pixel averages the source over the area it covers."""
    h, w = pixels.shape[:2]
    out = np.einsum("yi,ijc,xj->yxc", _area_weights(h, size), pixels.astype(np.float64),
                    _area_weights(w, size), optimize=True)
    return np.clip(np.round(out), 0, 255)


@pytest.mark.parametrize("shape", [(300, 200), (97, 61), (64, 64), (48, 20), (20, 48), (30, 33), (224, 500)])
def test_resize_matches_a_float64_reference(shape):
    """Shrinking (integer and fractional ratios), growing and mixed crops, within the one grey
    level of the uint8 rounding."""
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = resize(pixels[3:-2, 1:], 32)   # a strided view, as decode_box passes it
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - _reference_resize(pixels[3:-2, 1:], 32)).max() <= 1


def test_every_file_kind_decodes_to_pillows_pixels(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    for mode, suffix in (("RGB", "jpg"), ("L", "jpg"), ("CMYK", "jpg"), ("RGBA", "png"), ("P", "png")):
        path = tmp_path / f"x_{mode}.{suffix}"
        Image.fromarray(pixels).convert(mode).save(path)
        data = path.read_bytes()
        np.testing.assert_array_equal(decode_rgb(data, str(path)),
                                      np.asarray(Image.open(path).convert("RGB")))
        assert image_size(data, str(path)) == (80, 60)


def test_dct_scaling_matches_full_decoding(tmp_path):
    """libjpeg's DCT scaling gives the crop a full decode + resize gives, up to resampling
    differences of a few grey levels on a smooth image."""
    yy, xx = np.mgrid[0:800, 0:1000]
    smooth = np.stack([xx / 4, yy / 4, (xx + yy) / 8], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    data = path.read_bytes()
    assert decode_rgb(data, str(path), shrink=4).shape == (200, 250, 3)
    box = (100, 50, 900, 750)
    fast = decode_box(data, str(path), lambda w, h: box, 64)
    full = _reference_resize(np.asarray(Image.open(path).convert("RGB"))[50:750, 100:900], 64)
    assert np.abs(fast.astype(int) - full).mean() < 3.0


def test_the_box_is_cropped_resized_and_mirrored(tmp_path):
    pixels = np.random.default_rng(4).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    box = (5, 4, 45, 40)
    plain = decode_box(data, str(path), lambda w, h: box, 24)
    mirrored = decode_box(data, str(path), lambda w, h: box, 24, flip_fn=lambda: True)
    reference = _reference_resize(pixels[4:40, 5:45], 24)
    assert plain.shape == (24, 24, 3) and plain.dtype == np.uint8
    assert np.abs(plain.astype(int) - reference).max() <= 1
    np.testing.assert_array_equal(mirrored, plain[:, ::-1])


def test_bad_folders_and_files_name_the_path(tmp_path, fixture_dir):
    with pytest.raises(UserError, match=str(tmp_path / "train")):
        image_folder(str(tmp_path))                      # root without the split
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        image_folder(str(tmp_path))
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "cat" / "a.jpg")
    with pytest.raises(UserError, match="dog"):
        image_folder(str(tmp_path), splits=("train",))   # a class folder without images
    (tmp_path / "train" / "dog" / "b.jpg").write_bytes(b"this is not a jpeg")
    ds = image_folder(str(tmp_path), splits=("train",), image_size=8)
    bad = ds.splits["train"][1]
    with pytest.raises(UserError, match="b.jpg.*fatal"):
        TrainImageTransform(8)(bad, np.random.default_rng(0))
    with pytest.raises(UserError, match="b.jpg"):
        EvalImageTransform(8)(bad)


def test_a_truncated_jpeg_is_fatal_and_named(tmp_path):
    path = tmp_path / "cut.jpg"
    pixels = np.random.default_rng(5).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    data = path.read_bytes()[: path.stat().st_size // 2]
    with pytest.raises(UserError, match="cut.jpg.*truncated"):
        decode_box(data, str(path), lambda w, h: (0, 0, w, h), 32)
