"""Sequence-to-sequence: teacher forcing in training, greedy decoding at evaluation.

Data (see `jaxnets.data.synthetic`): `batch["source"]` int [B, S] right-padded with
`pad_id`, `batch["target"]` int [B, U + 1] = BOS, answer..., EOS, PAD...; ids come from
`dataset.info` (pad_id, bos_id, eos_id, vocab_size).

Decode interface a model implements (LSTM+attention in `jaxnets.models.seq2seq_lstm`; a
Transformer encoder-decoder implements the same three methods):

    model(source, target_in, *, train=False, rngs=None) -> logits [B, U, V]
        teacher forcing: position t sees target_in[:, :t + 1] and predicts target[:, t + 1].
    state = model.start_decode(source)
        encodes once; `state` is any pytree (encoder memory, masks, recurrent state or cache).
    logits, state = model.decode_step(state, tokens)
        tokens int [B] (the previous output; BOS first) -> next-token logits [B, V].

Metrics: loss and token accuracy under teacher forcing; `exact_match` = fraction of
sequences whose greedy decoding equals the target at every position up to and including
EOS (what comes after EOS is ignored). `report()` writes decoded test examples to
`workdir/decoded.txt`. task_options: source_key ("source"), target_key ("target"),
report_examples (20).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnets.models.decoding import beam_search, generate
from jaxnets.errors import UserError
from jaxnets.tasks.base import Inference, State, Task
from jaxnets.tasks.common import build_task_model, encode_text


class Seq2SeqTask(Task):
    options = {"source_key": "source", "target_key": "target", "report_examples": 20}
    entry_points = frozenset({"translate", "export"})

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        info = dataset.info
        self.source_key = self.opts["source_key"]
        self.target_key = self.opts["target_key"]
        self.report_examples = int(self.opts["report_examples"])
        self.pad_id, self.bos_id, self.eos_id = info["pad_id"], info["bos_id"], info["eos_id"]
        self.vocab = info.get("vocab")

    def build(self, rngs, make_optimizer):
        model = build_task_model(self.config.model, self.config, rngs,
                                 vocab_size=self.dataset.info["vocab_size"], pad_id=self.pad_id)
        return State(model=model, opt=make_optimizer(model))

    def _teacher_forced(self, model, batch, *, train=False, rngs=None):
        target = batch[self.target_key]
        target_in, target_out = target[:, :-1], target[:, 1:]
        logits = model(batch[self.source_key], target_in, train=train, rngs=rngs)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, target_out)
        weights = (target_out != self.pad_id).astype(jnp.float32)
        return logits, nll, weights, target_out

    def greedy_decode(self, model, source, length: int, beam_size: int = 1):
        """int [B, length]: greedy (or beam) decoding from BOS through the shared decoders."""
        return decode(model, source, length, bos_id=self.bos_id, eos_id=self.eos_id,
                      beam_size=beam_size)

    def train_step(self, state, batch, rng):
        def loss_fn(model):
            logits, nll, w, target_out = self._teacher_forced(model, batch, train=True,
                                                              rngs=nnx.Rngs(dropout=rng))
            return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0), (logits, w, target_out)

        (loss, (logits, w, target_out)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(state.model)
        state.opt.update(state.model, grads)
        correct = jnp.sum((jnp.argmax(logits, -1) == target_out) * w)
        return {"loss": loss, "token_accuracy": correct / jnp.maximum(jnp.sum(w), 1.0),
                "grad_norm": optax.tree.norm(grads)}

    def eval_step(self, state, batch):
        logits, nll, w, target_out = self._teacher_forced(state.model, batch)
        mask = batch["mask"]
        w = w * mask[:, None]
        pred = self.greedy_decode(state.model, batch[self.source_key], target_out.shape[1])
        wrong = jnp.sum((pred != target_out) * (target_out != self.pad_id), axis=1)
        return {"loss_sum": jnp.sum(nll * w), "tokens": jnp.sum(w),
                "correct": jnp.sum((jnp.argmax(logits, -1) == target_out) * w),
                "exact": jnp.sum((wrong == 0) * mask), "count": jnp.sum(mask)}

    def summarize(self, sums):
        return {"loss": float(sums["loss_sum"] / sums["tokens"]),
                "token_accuracy": float(sums["correct"] / sums["tokens"]),
                "exact_match": float(sums["exact"] / sums["count"]), "count": float(sums["count"])}

    def detokenize(self, ids) -> str:
        """Text of token ids up to EOS, without padding and BOS."""
        out = []
        for i in np.asarray(ids):
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(self.vocab[i] if self.vocab else f"{i} ")
        return "".join(out)

    def translate(self, state, text: str, beam: int = 1) -> str:
        """Greedy (beam 1) or beam-search decoding of one source string."""
        if beam < 1:
            raise UserError(f"The beam size must be at least 1, got {beam}.")
        source_row, target_row = self.example_row(self.source_key), self.example_row(self.target_key)
        width, length = source_row.shape[1], target_row.shape[1] - 1
        ids = encode_text(self.vocab, text)
        if len(ids) > width:
            raise UserError(f"The source has {len(ids)} characters; this model reads at most {width}.")
        source = np.full((1, width), self.pad_id, np.int32)
        source[0, :len(ids)] = ids
        graphdef, params = nnx.split(state.model)
        run = jax.jit(lambda p, s: self.greedy_decode(nnx.merge(graphdef, p), s, length, beam_size=beam))
        return self.detokenize(np.asarray(run(params, jnp.asarray(source)))[0])

    def inference_fn(self, state):
        """Teacher-forced logits(source, target_in)."""
        src, tgt = self.example_row(self.source_key), self.example_row(self.target_key)[:, :-1]
        return Inference(self.config.model.name, state.model, lambda m, s, t: m(s, t),
                         [("source", src), ("target_in", tgt)])

    def report(self, state, workdir):
        split = self.dataset.splits.get(self.config.data.eval_split)
        if not split or self.report_examples <= 0:
            return {}
        n = min(self.report_examples, len(split[self.source_key]))
        source, target = split[self.source_key][:n], split[self.target_key][:n]
        model = state.model
        graphdef, params = nnx.split(model)
        decode = jax.jit(lambda p, s: self.greedy_decode(nnx.merge(graphdef, p), s, target.shape[1] - 1))
        pred = np.asarray(decode(params, jnp.asarray(source)))
        lines = []
        for s, t, p in zip(source, target, pred):
            ok = self.detokenize(p) == self.detokenize(t[1:])
            lines.append(f"{self.detokenize(s)!r:>24} -> {self.detokenize(p)!r:<16} target {self.detokenize(t[1:])!r}"
                         f"{'' if ok else '  WRONG'}")
        with open(os.path.join(workdir, "decoded.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return {}


def decode(model, source, length: int, *, bos_id: int, eos_id: int | None = None,
           beam_size: int = 1):
    """int [B, length] from BOS: greedy (`beam_size` 1) or beam search, for any model with
    `start_decode(source)` and `decode_step(state, tokens)`."""
    state = model.start_decode(source)
    bos = jnp.full((source.shape[0],), bos_id, jnp.int32)
    if beam_size == 1:
        return generate(model, state, bos, length)
    return beam_search(model, state, bos, length, beam_size, eos_id=eos_id)[0]
