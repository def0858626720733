"""Recurrent models: a character/token language model, a sequence classifier and a tagger.

All are built on `jaxnets.nn.StackedRNN` (cell 'rnn' | 'lstm' | 'gru'); call convention
`model(x, *, train=False, rngs=None)`. Token inputs are int arrays [B, T] where id `pad_id`
(0) marks right padding: the models turn it into sequence lengths, so padded steps change
nothing. The classifier also takes float inputs: [B, T, F] sequences, or images [B, H, W, C]
read row by row (H steps of W*C features). `cell_options` go to the cell (e.g.
{"forget_bias": 1.0} for LSTM, {"reset_after": False} for the course's GRU).
"""
from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxnets.nn.layers import Embed, Linear, lookup
from jaxnets.nn.lowering import PLAIN, Lowering
from jaxnets.nn.recurrent import StackedRNN


class _Encoder(nnx.Module):
    """Embedding (token inputs) or identity (float inputs) -> StackedRNN."""

    def __init__(self, *, cell, hidden, num_layers, bidirectional, dropout, rngs,
                 vocab_size=None, embed_dim=64, in_features=None, dtype=None, unroll=1,
                 pad_id=0, cell_options=None, lowering: Lowering = PLAIN):
        self.pad_id, self.dtype = pad_id, dtype
        if vocab_size is not None:
            self.embed = Embed(vocab_size, embed_dim, rngs=rngs)
            d = embed_dim
        else:
            self.embed = None
            d = math.prod(in_features[1:]) if isinstance(in_features, (tuple, list)) else int(in_features)
        self.rnn = StackedRNN(cell, d, hidden, num_layers=num_layers, bidirectional=bidirectional,
                              dropout=dropout, unroll=unroll, rngs=rngs, dtype=dtype,
                              lowering=lowering, **dict(cell_options or {}))
        self.out_features = self.rnn.out_features
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, *, train=False, rngs=None, initial_state=None):
        lengths = None
        if self.embed is not None:
            if self.pad_id is not None:
                lengths = jnp.sum(x != self.pad_id, axis=1)
            x = lookup(self.embed, x)
        elif x.ndim == 4:                    # images: rows are time steps
            x = x.reshape(x.shape[0], x.shape[1], -1)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        y, state = self.rnn(x, lengths=lengths, initial_state=initial_state, train=train, rngs=rngs)
        return self.dropout(y, deterministic=not train, rngs=rngs), state, lengths


class RNNLanguageModel(nnx.Module):
    """tokens [B, T] -> next-token logits [B, T, vocab] (causal: unidirectional only)."""

    def __init__(self, vocab_size: int, *, rngs: nnx.Rngs, cell: str = "lstm", embed_dim: int = 64,
                 hidden: int = 256, num_layers: int = 1, dropout: float = 0.0, dtype: Any = None,
                 unroll: int = 1, cell_options: dict | None = None, lowering: Lowering = PLAIN):
        # pad_id=None: no masking (LM windows are never padded), the scan's fastest path.
        self.encoder = _Encoder(cell=cell, hidden=hidden, num_layers=num_layers, bidirectional=False,
                                dropout=dropout, rngs=rngs, vocab_size=vocab_size, embed_dim=embed_dim,
                                dtype=dtype, unroll=unroll, pad_id=None, cell_options=cell_options,
                                lowering=lowering)
        self.head = Linear(hidden, vocab_size, axes=("embed", "vocab"), rngs=rngs, dtype=dtype,
                           dot_general=lowering.dot_general)

    def __call__(self, tokens, *, train=False, rngs=None):
        y, _, _ = self.encoder(tokens, train=train, rngs=rngs)
        return self.head(y).astype(jnp.float32)


class RNNClassifier(nnx.Module):
    """A sequence -> class logits. `pooling`: 'last' (state after the last valid step; with
    bidirectional, forward last + backward first) or 'mean' (over valid steps)."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs, vocab_size: int | None = None,
                 in_features=None, cell: str = "lstm", embed_dim: int = 64, hidden: int = 128,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                 pooling: str = "last", dtype: Any = None, unroll: int = 1, cell_options: dict | None = None,
                 lowering: Lowering = PLAIN):
        if vocab_size is None and in_features is None:
            raise ValueError("RNNClassifier needs vocab_size (tokens) or in_features (floats)")
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.encoder = _Encoder(cell=cell, hidden=hidden, num_layers=num_layers,
                                bidirectional=bidirectional, dropout=dropout, rngs=rngs,
                                vocab_size=vocab_size, embed_dim=embed_dim, in_features=in_features,
                                dtype=dtype, unroll=unroll, cell_options=cell_options,
                                lowering=lowering)
        self.head = Linear(self.encoder.out_features, num_classes, axes=("embed", None), rngs=rngs,
                           dtype=dtype, dot_general=lowering.dot_general)

    def __call__(self, x, *, train=False, rngs=None):
        y, states, lengths = self.encoder(x, train=train, rngs=rngs)
        if self.pooling == "mean":
            if lengths is None:
                pooled = jnp.mean(y, axis=1)
            else:
                pooled = jnp.sum(y, axis=1) / jnp.maximum(lengths, 1)[:, None].astype(y.dtype)
        else:
            last = states[-1]
            pooled = jnp.concatenate([last[0][0], last[1][0]], -1) if isinstance(last[0], tuple) \
                else last[0]
        return self.head(pooled).astype(jnp.float32)


class RNNTagger(nnx.Module):
    """tokens [B, T] -> per-step class logits [B, T, num_classes]; bidirectional by default."""

    def __init__(self, num_classes: int, vocab_size: int, *, rngs: nnx.Rngs, cell: str = "lstm",
                 embed_dim: int = 64, hidden: int = 128, num_layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.0, dtype: Any = None,
                 unroll: int = 1, cell_options: dict | None = None, lowering: Lowering = PLAIN):
        self.encoder = _Encoder(cell=cell, hidden=hidden, num_layers=num_layers,
                                bidirectional=bidirectional, dropout=dropout, rngs=rngs,
                                vocab_size=vocab_size, embed_dim=embed_dim, dtype=dtype,
                                unroll=unroll, cell_options=cell_options, lowering=lowering)
        self.head = Linear(self.encoder.out_features, num_classes, axes=("embed", None), rngs=rngs,
                           dtype=dtype, dot_general=lowering.dot_general)

    def __call__(self, tokens, *, train=False, rngs=None):
        y, _, _ = self.encoder(tokens, train=train, rngs=rngs)
        return self.head(y).astype(jnp.float32)
