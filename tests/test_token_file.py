"""Flat token files: windows of seq_len + 1 from a memory map, splits, bad input."""
import pickle

import numpy as np
import pytest

from jaxnets.data import load_dataset
from jaxnets.data.fixtures import write_tokens
from jaxnets.data.offline import encode, shakespeare_text
from jaxnets.data.pipeline import TrainIterator
from jaxnets.errors import UserError


def test_windows_are_consecutive_stretches_of_the_file(tmp_path):
    path = str(tmp_path / "t.bin")
    write_tokens(path, 5000, chunk=777)   # several chunks: the text must continue across them
    text = shakespeare_text()
    ids = encode(text, sorted(set(text)))
    flat = np.fromfile(path, np.uint16)
    assert np.array_equal(flat, np.resize(ids, 5000))
    ds = load_dataset("token_file", path=path, seq_len=16, test_windows=10)
    train, test = ds.splits["train"], ds.splits["test"]
    assert len(train) + len(test) == (5000 - 1) // 16 and len(test) == 10
    assert ds.info["vocab_size"] == len(set(text)) and ds.info["seq_len"] == 16
    for i in (0, 7, len(train) - 1):
        assert np.array_equal(train[i]["tokens"], flat[i * 16:i * 16 + 17])
    j = len(train)   # the first test window starts where the training windows end
    assert np.array_equal(test[0]["tokens"], flat[j * 16:j * 16 + 17])
    batch = TrainIterator(train, batch_size=4, seed=0).batch(5)
    assert batch["tokens"].shape == (4, 17) and batch["tokens"].dtype == np.int32
    # A pickled source (what Grain workers receive) carries the path, not the mapped bytes.
    _ = train[0]
    assert len(pickle.dumps(train)) < 2000


def test_bad_token_files_name_the_path(tmp_path):
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    with pytest.raises(UserError, match=f"{odd}.*not a multiple of 2"):
        load_dataset("token_file", path=str(odd), vocab_size=10)
    short = tmp_path / "short.bin"
    np.arange(50, dtype=np.uint16).tofile(short)
    with pytest.raises(UserError, match=f"seq_len=64 is longer than the token file {short}"):
        load_dataset("token_file", path=str(short), seq_len=64, vocab_size=50)
    with pytest.raises(UserError, match="vocab_size"):
        load_dataset("token_file", path=str(short), seq_len=4)
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("token_file", path=str(tmp_path / "missing.bin"))
