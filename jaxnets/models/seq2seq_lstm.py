"""LSTM encoder-decoder with Luong attention (Luong, Pham & Manning 2015, "general" score).

Encoder: embedding -> (bidirectional) LSTM over the right-padded source; the decoder LSTM
starts from the encoder's final state (through a tanh bridge). Decoder: at step t the LSTM
reads y_{t-1}; its output h_t attends over the encoder outputs
    a_t = softmax(h_t^T W_a e_s)  (padded source positions masked),  c_t = sum_s a_t,s e_s,
    h~_t = tanh(W_c [c_t; h_t]),  logits_t = W_o h~_t.
The attention is `jaxnets.nn.attention.dot_product_attention` with one head of width E:
q = W_a h_t, k = v = e, scale 1, source padding as kv_lengths (`attention_impl` picks the
implementation). Without input feeding the decoder LSTM does not depend on attention, so
teacher-forced training runs it as one fast scan over all target steps and attends for all
steps at once.

`cell="gru"|"rnn"` swaps the recurrent cell (GRU, Elman RNN) in encoder and decoder;
`attention=False` is the fixed-size-context encoder-decoder (Sutskever et al. 2014 / Cho et
al. 2014): the decoder sees the source only through its initial state, logits = W_o h_t.

Implements the decode interface of `jaxnets.tasks.seq2seq` and of the shared greedy/beam
decoders in `jaxnets.models.decoding`:
    model(source, target_in, train=, rngs=) -> logits [B, U, V]
    state = model.start_decode(source)     # {"batch": {memory, mask, carry}}: rows = examples
    logits, state = model.decode_step(state, tokens)   # [B] -> [B, V]; [B, t] -> [B, t, V]
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnets.nn.attention import dot_product_attention
from jaxnets.nn.layers import Embed, Linear, lookup
from jaxnets.nn.lowering import PLAIN, Lowering
from jaxnets.nn.recurrent import GRU, LSTM, Bidirectional, SimpleRNN

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": SimpleRNN}


class Seq2SeqLSTM(nnx.Module):
    def __init__(self, vocab_size: int, *, rngs: nnx.Rngs, embed_dim: int = 64, hidden: int = 128,
                 bidirectional_encoder: bool = True, dropout: float = 0.0, pad_id: int = 0,
                 dtype: Any = None, unroll: int = 1, attention_impl: str = "auto",
                 cell: str = "lstm", attention: bool = True, lowering: Lowering = PLAIN):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}.")
        self.pad_id, self.dtype, self.attention_impl = pad_id, dtype, attention_impl
        self.cell_kind, self.use_attention = cell, attention
        self.embed = Embed(vocab_size, embed_dim, rngs=rngs)   # shared by source and target
        make = lambda d, **kw: CELLS[cell](d, hidden, rngs=rngs, dtype=dtype, unroll=unroll,  # noqa: E731
                                          lowering=lowering, **kw)
        self.bidirectional = bidirectional_encoder
        self.encoder = Bidirectional(make(embed_dim), make(embed_dim, reverse=True)) \
            if bidirectional_encoder else make(embed_dim)
        enc = 2 * hidden if bidirectional_encoder else hidden
        self.bridge_h = Linear(enc, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        if cell == "lstm":   # the memory cell c gets its own bridge
            self.bridge_c = Linear(enc, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.decoder = make(embed_dim)
        if attention:
            self.attn = Linear(hidden, enc, axes=("mlp", "embed"), use_bias=False, rngs=rngs, dtype=dtype)     # W_a
            self.combine = Linear(enc + hidden, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)         # W_c
        self.out = Linear(hidden, vocab_size, axes=("mlp", "vocab"), rngs=rngs, dtype=dtype,                # W_o
                          dot_general=lowering.dot_general)
        self.dropout = nnx.Dropout(dropout)

    # ------------------------------------------------------------------ pieces
    def encode(self, source, *, train=False, rngs=None):
        """-> (encoder outputs [B, S, E], source mask [B, S], decoder initial state (h, c))."""
        mask = source != self.pad_id
        x = self.dropout(lookup(self.embed, source), deterministic=not train, rngs=rngs)
        memory, state = self.encoder(x, lengths=jnp.sum(mask, axis=1))
        if self.bidirectional:   # (h, c) for an LSTM, (h,) for a GRU or RNN, per direction
            state = jax.tree.map(lambda f, b: jnp.concatenate([f, b], -1), *state)
        bridges = (self.bridge_h, self.bridge_c) if self.cell_kind == "lstm" else (self.bridge_h,)
        return memory, mask, tuple(jnp.tanh(b(s)) for b, s in zip(bridges, state))

    def attention_weights(self, h, memory, mask):
        """a [B, U, S] = softmax_s(h_u^T W_a e_s), padded source positions masked (float32): the
        weights `attend` applies through the attention entry point, spelled out for pictures."""
        scores = jnp.einsum("bue,bse->bus", self.attn(h), memory)
        scores = jnp.where(mask[:, None, :], scores.astype(jnp.float32), -1e9)
        return jax.nn.softmax(scores, axis=-1)

    def attend(self, h, memory, mask, *, train=False, rngs=None):
        """h [B, U, H] -> logits [B, U, V] (Luong general attention over memory [B, S, E])."""
        if not self.use_attention:   # fixed-size context: the source reached h only via the state
            h = self.dropout(h, deterministic=not train, rngs=rngs)
            return self.out(h).astype(jnp.float32)
        # One head of width E: [B, U, E] -> [B, U, 1, E]. The source is right-padded.
        q, kv = self.attn(h)[:, :, None].astype(memory.dtype), memory[:, :, None]
        context = dot_product_attention(q, kv, kv, scale=1.0, kv_lengths=jnp.sum(mask, axis=1),
                                        implementation=self.attention_impl)[:, :, 0]
        h_tilde = jnp.tanh(self.combine(jnp.concatenate([context, h], -1)))
        h_tilde = self.dropout(h_tilde, deterministic=not train, rngs=rngs)
        return self.out(h_tilde).astype(jnp.float32)

    # ------------------------------------------------------------------ decode interface
    def __call__(self, source, target_in, *, train=False, rngs=None):
        memory, mask, state = self.encode(source, train=train, rngs=rngs)
        y = self.dropout(lookup(self.embed, target_in), deterministic=not train, rngs=rngs)
        h, _ = self.decoder(y, initial_state=state)
        return self.attend(h, memory, mask, train=train, rngs=rngs)

    def start_decode(self, source):
        memory, mask, state = self.encode(source)
        return {"batch": {"memory": memory, "mask": mask, "carry": state}}

    def decode_step(self, state, tokens):
        rows = state["batch"]
        chunk = tokens if tokens.ndim == 2 else tokens[:, None]
        h, carry = self.decoder(lookup(self.embed, chunk), initial_state=rows["carry"])
        logits = self.attend(h, rows["memory"], rows["mask"])
        return (logits if tokens.ndim == 2 else logits[:, 0]), {"batch": {**rows, "carry": carry}}
