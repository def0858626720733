"""A flat binary token file (uint16 or uint32, memory-mapped) read as windows of seq_len + 1.

    jaxnets train --config experiments/lm_tokens.py --config.data.options.path=/data/corpus.bin

Window i holds tokens [i * seq_len, i * seq_len + seq_len + 1): the model reads the first
seq_len and predicts the last seq_len, so consecutive windows share one token and together
cover the file. The last `test_windows` windows are held out as the test split. Nothing is
loaded: a window is read from the memory map when the pipeline asks for it, so a process's
resident memory stays that of the batches in flight, whatever the file's size.

The vocabulary comes from FILE.json when it exists (written by `python -m jaxnets.data.fixtures
tokens`: {"dtype", "vocab_size", "vocab"}); otherwise pass vocab_size (e.g. 50257 for GPT-2's
tokenizer, whose token files are uint16 as in nanoGPT and llm.c).
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxnets.data import Dataset
from jaxnets.data.fixtures import SIDECAR
from jaxnets.data.source import Source
from jaxnets.errors import UserError

DTYPES = ("uint16", "uint32")


class TokenWindows(Source):
    """Windows [first, last) of a token file; the memory map is opened lazily in each process
    (a pickled source carries the path, never the mapped bytes)."""

    kind = "token_file"

    def __init__(self, path: str, dtype: str, seq_len: int, first: int, last: int):
        self.path, self.dtype, self.seq_len = path, np.dtype(dtype), int(seq_len)
        self.first, self.last = int(first), int(last)
        self._tokens = None

    def __getstate__(self):
        return {**self.__dict__, "_tokens": None}

    @property
    def tokens(self) -> np.memmap:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._tokens

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, index: int):
        start = (self.first + int(index)) * self.seq_len
        return {"tokens": np.asarray(self.tokens[start:start + self.seq_len + 1], np.int32)}

    def get_batch(self, indices):
        starts = (self.first + np.asarray(indices, np.int64)) * self.seq_len
        # One gather through the memory map: rows of seq_len + 1 consecutive tokens.
        rows = starts[:, None] + np.arange(self.seq_len + 1)
        return {"tokens": np.asarray(self.tokens[rows], np.int32)}


def _sidecar(path: str) -> dict:
    try:
        with open(path + SIDECAR) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f"Cannot read the token file's description {path + SIDECAR} ({e}).") from None


def token_file(path: str = "", seq_len: int = 128, dtype: str = "", vocab_size: int = 0,
               test_windows: int = 256) -> Dataset:
    """`tokens` int32 [N, seq_len + 1] windows of a flat token file; splits train and test."""
    if not path:
        raise UserError("The token_file dataset needs its file: --config.data.options.path=FILE "
                        "(flat uint16/uint32 tokens; `python -m jaxnets.data.fixtures tokens` "
                        "writes one).")
    if not os.path.isfile(path):
        raise UserError(f"Token file {path} does not exist.")
    meta = _sidecar(path)
    dtype = dtype or meta.get("dtype", "uint16")
    if dtype not in DTYPES:
        raise UserError(f"Token file dtype must be one of {DTYPES}; got {dtype!r} for {path}.")
    vocab_size = int(vocab_size or meta.get("vocab_size", 0))
    if vocab_size <= 0:
        raise UserError(f"Token file {path} has no {path + SIDECAR} giving its vocabulary size: "
                        "pass --config.data.options.vocab_size=V (e.g. 50257 for GPT-2 tokens).")
    size, itemsize = os.path.getsize(path), np.dtype(dtype).itemsize
    if size % itemsize:
        raise UserError(f"Token file {path} has {size:,} bytes, not a multiple of {itemsize} "
                        f"({dtype}): wrong dtype (--config.data.options.dtype=uint16|uint32) or a "
                        "truncated file.")
    if seq_len < 1:
        raise UserError(f"seq_len must be a positive integer; got {seq_len}.")
    n_tokens = size // itemsize
    windows = (n_tokens - 1) // seq_len
    if windows < 1:
        raise UserError(f"seq_len={seq_len} is longer than the token file {path} "
                        f"({n_tokens:,} tokens): one window needs seq_len + 1 tokens.")
    if not 0 <= test_windows < windows:
        raise UserError(f"test_windows={test_windows} must leave training windows: {path} has "
                        f"{windows:,} windows of seq_len={seq_len}.")
    cut = windows - test_windows
    splits = {"train": TokenWindows(path, dtype, seq_len, 0, cut)}
    if test_windows:
        splits["test"] = TokenWindows(path, dtype, seq_len, cut, windows)
    info = {"vocab_size": vocab_size, "seq_len": seq_len, "vocab": meta.get("vocab"),
            "num_tokens": n_tokens,
            "description": f"Token file {path}: {n_tokens:,} {dtype} tokens, {windows:,} windows "
                           f"of {seq_len} (+1), last {test_windows} held out as test."}
    return Dataset("token_file", splits, info)
