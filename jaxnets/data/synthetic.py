"""Synthetic and derived sequence tasks, made on the fly (no downloads, deterministic in seed).

Token conventions shared by the sequence tasks: id 0 = PAD, 1 = BOS, 2 = EOS, then the
task's characters; `info["vocab"]` lists the symbols by id. Every split is a dict of
equally long NumPy arrays:

- seq2seq (`addition`, `reversal`, `sequence_copy`): `source` int32 [N, S] (right-padded with PAD) and
  `target` int32 [N, U + 1] = BOS, answer..., EOS, PAD...; a model reads `target[:, :-1]`
  and predicts `target[:, 1:]` (teacher forcing).
- sequence labelling (`copy_memory`, `truecase`): `tokens` int32 [N, T], `labels` int32
  [N, T] and `label_mask` float32 [N, T] (1 where a label counts).
"""
from __future__ import annotations

import numpy as np

from jaxnets.data import Dataset
from jaxnets.data.offline import shakespeare_text
from jaxnets.errors import UserError

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["<pad>", "<bos>", "<eos>"]


def _char_vocab(chars: str) -> tuple[list[str], dict[str, int]]:
    vocab = SPECIALS + list(chars)
    return vocab, {c: i for i, c in enumerate(vocab)}


def _pad_rows(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.full((len(rows), width), PAD, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _seq2seq(name: str, pairs: list[tuple[str, str]], num_test: int, chars: str, info: dict) -> Dataset:
    vocab, index = _char_vocab(chars)
    src = [[index[c] for c in s] for s, _ in pairs]
    tgt = [[BOS] + [index[c] for c in t] + [EOS] for _, t in pairs]
    s_len, t_len = max(map(len, src)), max(map(len, tgt))
    source, target = _pad_rows(src, s_len), _pad_rows(tgt, t_len)
    split = lambda a: (a[num_test:], a[:num_test])            # noqa: E731
    (s_tr, s_te), (t_tr, t_te) = split(source), split(target)
    return Dataset(name, {"train": {"source": s_tr, "target": t_tr},
                          "test": {"source": s_te, "target": t_te}},
                   {"vocab": vocab, "vocab_size": len(vocab), "pad_id": PAD, "bos_id": BOS,
                    "eos_id": EOS, "source_len": s_len, "target_len": t_len - 1, **info})


def addition(num_train: int = 20000, num_test: int = 1000, max_digits: int = 3, seed: int = 0,
             pad_operands: bool = True) -> Dataset:
    """"a+b" -> str(a + b) with a, b uniform in [0, 10**max_digits); test pairs never occur
    in training (in either order), so test exact match measures generalisation.
    pad_operands: write operands with leading zeros ("045+123" -> "168") so digit columns
    line up as on paper; the answer never has leading zeros."""
    rng = np.random.default_rng(seed)
    hi = 10 ** max_digits
    total = num_train + num_test
    if total > hi * hi // 2:
        raise UserError(f"{total} distinct pairs asked for but only {hi * hi // 2} exist with "
                        f"max_digits={max_digits}; raise max_digits or lower num_train/num_test.")
    seen, pairs = set(), []
    while len(pairs) < total:
        a, b = (int(v) for v in rng.integers(0, hi, 2))
        if (a, b) in seen:
            continue
        seen.update({(a, b), (b, a)})
        w = max_digits if pad_operands else 0
        pairs.append((f"{a:0{w}d}+{b:0{w}d}", str(a + b)))
    return _seq2seq("addition", pairs, num_test, "0123456789+",
                    {"description": f"a+b with a, b < {hi}; {num_test} held-out pairs"})


def reversal(num_train: int = 20000, num_test: int = 1000, min_len: int = 3, max_len: int = 12,
             alphabet: str = "abcdefghijklmnopqrstuvwxyz", seed: int = 0) -> Dataset:
    """A random string -> the same string reversed (lengths uniform in [min_len, max_len])."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(alphabet))
    pairs = []
    for n in rng.integers(min_len, max_len + 1, num_train + num_test):
        s = "".join(rng.choice(letters, n))
        pairs.append((s, s[::-1]))
    return _seq2seq("reversal", pairs, num_test, alphabet,
                    {"description": f"reverse strings of {min_len}-{max_len} letters"})


def sequence_copy(length: int = 20, num_train: int = 20000, num_test: int = 1000,
                  alphabet: str = "abcdefgh", reverse: bool = False, seed: int = 0) -> Dataset:
    """A random string of exactly `length` letters -> the same string (or reversed).

    The long-range seq2seq probe: copying, output position t needs input position t, `length`
    steps back through an encoder-decoder's fixed-size context (reversal: the first outputs
    are near, the last ones 2 * `length` steps back). Test strings never occur in training."""
    if length < 1:
        raise UserError(f"sequence_copy needs length >= 1, got {length}.")
    rng = np.random.default_rng(seed)
    n = num_train + num_test
    if len(alphabet) ** length < 2 * n:
        raise UserError(f"{n} distinct strings asked for but only {len(alphabet)}**{length} exist.")
    ids = rng.integers(0, len(alphabet), (n, length))
    # Distinct rows, test first: a held-out string is never a training string.
    _, first = np.unique(ids, axis=0, return_index=True)
    while len(first) < n:
        ids = np.concatenate([ids[np.sort(first)], rng.integers(0, len(alphabet), (n - len(first), length))])
        _, first = np.unique(ids, axis=0, return_index=True)
    ids = ids[np.sort(first)]
    letters = np.array(list(alphabet))
    pairs = [("".join(letters[r]), "".join(letters[r[::-1] if reverse else r])) for r in ids]
    return _seq2seq("sequence_copy", pairs, num_test, alphabet,
                    {"description": f"{'reverse' if reverse else 'copy'} strings of {length} "
                                    f"letters from {alphabet!r}"})


def copy_memory(lag: int = 50, num_symbols: int = 8, num_copy: int = 10, num_train: int = 10000,
                num_test: int = 1000, seed: int = 0) -> Dataset:
    """Copy memory (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): `num_copy` random
    symbols, `lag` blanks, a go marker, then `num_copy` blanks during which the model must emit
    the symbols it saw `lag + num_copy` steps earlier. Only those last steps are labelled;
    chance accuracy is 1 / num_symbols."""
    rng = np.random.default_rng(seed)
    n = num_train + num_test
    blank, go = 3 + num_symbols, 4 + num_symbols          # ids after PAD/BOS/EOS and symbols
    symbols = rng.integers(3, 3 + num_symbols, (n, num_copy)).astype(np.int32)
    length = num_copy + lag + 1 + num_copy
    tokens = np.full((n, length), blank, np.int32)
    tokens[:, :num_copy] = symbols
    tokens[:, num_copy + lag] = go
    labels = np.zeros((n, length), np.int32)
    labels[:, -num_copy:] = symbols
    mask = np.zeros((n, length), np.float32)
    mask[:, -num_copy:] = 1.0
    vocab = SPECIALS + [f"s{k}" for k in range(num_symbols)] + ["_", "!"]
    fields = {"tokens": tokens, "labels": labels, "label_mask": mask}
    return Dataset("copy_memory", {"train": {k: v[num_test:] for k, v in fields.items()},
                                   "test": {k: v[:num_test] for k, v in fields.items()}},
                   {"vocab": vocab, "vocab_size": len(vocab), "num_classes": len(vocab), "lag": lag,
                    "num_symbols": num_symbols, "chance_accuracy": 1.0 / num_symbols})


def truecase(seq_len: int = 128, test_fraction: float = 0.05, max_train: int | None = None) -> Dataset:
    """Sequence labelling on real text: the Shakespeare plays lower-cased, label 1 where the
    original character was upper case (sentence starts, names, speaker tags in capitals).
    Deciding needs context on both sides, so a bidirectional RNN helps."""
    text = shakespeare_text()
    lower = text.lower()
    chars = sorted(set(lower))
    vocab, index = _char_vocab("".join(chars))
    table = np.zeros(max(map(ord, chars)) + 1, np.int32)
    table[[ord(c) for c in chars]] = [index[c] for c in chars]
    ids = table[np.frombuffer(lower.encode("utf-32-le"), np.uint32)]
    upper = np.frombuffer(text.encode("utf-32-le"), np.uint32) != np.frombuffer(lower.encode("utf-32-le"), np.uint32)
    if len(ids) != len(text):
        raise UserError("lower-casing changed the text length; cannot align labels")
    n = len(ids) // seq_len
    tokens, labels = ids[:n * seq_len].reshape(n, seq_len), upper[:n * seq_len].reshape(n, seq_len)
    n_test = max(1, int(round(n * test_fraction)))
    n_train = n - n_test if max_train is None else min(max_train, n - n_test)
    split = lambda a, lo, hi: a[lo:hi]                      # noqa: E731
    mk = lambda lo, hi: {"tokens": split(tokens, lo, hi), "labels": split(labels, lo, hi).astype(np.int32),  # noqa: E731
                         "label_mask": np.ones((hi - lo, seq_len), np.float32)}
    return Dataset("truecase", {"train": mk(0, n_train), "test": mk(n - n_test, n)},
                   {"vocab": vocab, "vocab_size": len(vocab), "num_classes": 2,
                    "class_names": ["lower", "upper"],
                    "description": "Shakespeare lower-cased; label = was upper case"})
