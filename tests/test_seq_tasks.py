"""Sequence data, models and tasks: checked against closed forms, oracles and second paths."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxnets.data import Dataset
from jaxnets.data.synthetic import BOS, EOS, PAD, addition, copy_memory, reversal
from jaxnets.models.rnn import RNNClassifier, RNNTagger
from jaxnets.models.seq2seq_lstm import Seq2SeqLSTM
from jaxnets.tasks.base import State
from jaxnets.tasks.language_model import LanguageModelTask
from jaxnets.tasks.seq2seq import Seq2SeqTask
from jaxnets.tasks.sequence_labeling import SequenceLabelingTask
from jaxnets.train.defaults import base_config


def text_of(ids, vocab):
    return "".join(vocab[i] for i in ids if i not in (PAD, BOS, EOS))


def test_addition_is_arithmetic_and_test_pairs_are_unseen():
    d = addition(num_train=500, num_test=100, max_digits=2)
    vocab = d.info["vocab"]
    pairs = {}
    for split in ("train", "test"):
        src, tgt = d.splits[split]["source"], d.splits[split]["target"]
        assert len(src) == len(tgt) and (tgt[:, 0] == BOS).all()
        pairs[split] = set()
        for s, t in zip(src, tgt):
            a, b = text_of(s, vocab).split("+")
            assert text_of(t, vocab) == str(int(a) + int(b))
            assert EOS in t
            pairs[split].add((int(a), int(b)))
    assert not pairs["test"] & {(b, a) for a, b in pairs["train"]} and not pairs["test"] & pairs["train"]


def test_reversal_and_copy_memory_layout():
    d = reversal(num_train=20, num_test=5)
    v = d.info["vocab"]
    for s, t in zip(d.splits["test"]["source"], d.splits["test"]["target"]):
        assert text_of(t, v) == text_of(s, v)[::-1]
    c = copy_memory(lag=7, num_copy=4, num_train=10, num_test=3)
    tok, lab, m = (c.splits["train"][k] for k in ("tokens", "labels", "label_mask"))
    assert tok.shape == (10, 4 + 7 + 1 + 4)
    np.testing.assert_array_equal(lab[:, -4:], tok[:, :4])
    np.testing.assert_array_equal(m.sum(1), 4)


def config(task, **options):
    c = base_config()
    c.task = task
    c.task_options = ml_collections.ConfigDict(options)
    return c


class CountingLM(nnx.Module):
    """Oracle LM: logit 10 on (token + 1) mod V, 0 elsewhere."""

    def __init__(self, vocab_size):
        self.v = vocab_size
        self.dummy = nnx.Param(jnp.zeros(()))

    def __call__(self, tokens, *, train=False, rngs=None):
        return 10.0 * jax.nn.one_hot((tokens + 1) % self.v, self.v) + self.dummy[...]


def test_language_model_bits_per_char_closed_form_and_sampling():
    V = 5
    vocab = list("abcde")
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, (6, 9)).astype(np.int32)
    ds = Dataset("toy", {"test": {"tokens": tokens}}, {"vocab": vocab, "vocab_size": V, "seq_len": 4})
    task = LanguageModelTask(config("language_model"), ds)
    state = State(model=CountingLM(V))
    mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
    sums = nnx.jit(task.eval_step)(state, {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask)})
    # NumPy float64: -log softmax of the oracle logits at each true next token.
    logp_hit = 10 - math.log(math.exp(10) + V - 1)
    logp_miss = -math.log(math.exp(10) + V - 1)
    hit = (tokens[:, 1:] == (tokens[:, :-1] + 1) % V)
    nll = -np.where(hit, logp_hit, logp_miss)
    expect = (nll * mask[:, None]).sum() / (mask.sum() * 8)
    out = task.summarize(jax.device_get(sums))
    np.testing.assert_allclose(out["loss"], expect, rtol=1e-5)
    np.testing.assert_allclose(out["bits_per_char"], expect / math.log(2), rtol=1e-5)
    # Sampling at a low temperature follows the oracle past the 4-token window (sliding).
    toks = task.sample_tokens(state.model, [2], length=11, temperature=0.01)
    np.testing.assert_array_equal(toks, (np.arange(3, 14)) % V)


class CopyModel(nnx.Module):
    """Oracle seq2seq obeying the decode interface: emits source[t], then EOS."""

    def __init__(self, vocab_size, wrong_rows=()):
        self.v, self.wrong = vocab_size, jnp.asarray(wrong_rows, jnp.int32)
        self.dummy = nnx.Param(jnp.zeros(()))

    def _logits(self, nxt):
        return 10.0 * jax.nn.one_hot(nxt, self.v) + self.dummy[...]

    def __call__(self, source, target_in, *, train=False, rngs=None):
        padded = jnp.pad(source, ((0, 0), (0, target_in.shape[1])))
        nxt = jnp.where(padded[:, :target_in.shape[1]] == PAD, EOS, padded[:, :target_in.shape[1]])
        return self._logits(nxt)

    def start_decode(self, source):
        rows = jnp.arange(source.shape[0])
        source = jnp.where(jnp.isin(rows, self.wrong)[:, None], (source + 1) % self.v, source)
        return {"source": jnp.pad(source, ((0, 0), (0, 8))), "t": jnp.int32(0)}

    def decode_step(self, state, tokens):
        col = state["source"][:, state["t"]]
        nxt = jnp.where(col == PAD, EOS, col)
        return self._logits(nxt), {**state, "t": state["t"] + 1}


def test_seq2seq_exact_match_with_oracle_decoders():
    d = reversal(num_train=10, num_test=8, min_len=2, max_len=5)
    # Make targets copies of the source so the CopyModel oracle is right.
    src = d.splits["test"]["source"]
    tgt = np.full((len(src), src.shape[1] + 2), PAD, np.int32)
    tgt[:, 0] = BOS
    for i, s in enumerate(src):
        n = int((s != PAD).sum())
        tgt[i, 1:n + 1], tgt[i, n + 1] = s[:n], EOS
    d.splits["test"] = {"source": src, "target": tgt}
    task = Seq2SeqTask(config("seq2seq"), d)
    mask = np.ones(len(src), np.float32)
    mask[-1] = 0.0                                      # a padded example must not count
    batch = {"source": jnp.asarray(src), "target": jnp.asarray(tgt), "mask": jnp.asarray(mask)}
    evaluate = nnx.jit(task.eval_step)
    out = task.summarize(jax.device_get(evaluate(State(model=CopyModel(d.info["vocab_size"])), batch)))
    assert out["exact_match"] == 1.0 and out["token_accuracy"] == 1.0 and out["count"] == 7
    out = task.summarize(jax.device_get(evaluate(
        State(model=CopyModel(d.info["vocab_size"], wrong_rows=(0, 3, 7))), batch)))
    np.testing.assert_allclose(out["exact_match"], 5 / 7)       # row 7 is padding


def test_seq2seq_lstm_teacher_forcing_equals_step_by_step_decoding():
    model = Seq2SeqLSTM(11, embed_dim=8, hidden=16, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    source = rng.integers(3, 11, (3, 6)).astype(np.int32)
    source[1, 4:] = PAD
    target_in = rng.integers(1, 11, (3, 5)).astype(np.int32)
    call = nnx.jit(lambda m, s, t: m(s, t))
    full = call(model, jnp.asarray(source), jnp.asarray(target_in))
    state = nnx.jit(lambda m, s: m.start_decode(s))(model, jnp.asarray(source))
    step = nnx.jit(lambda m, st, tok: m.decode_step(st, tok))
    steps = []
    for t in range(target_in.shape[1]):
        logits, state = step(model, state, jnp.asarray(target_in[:, t]))
        steps.append(logits)
    np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=2e-5)
    # Source padding is invisible: the padded row alone, unpadded, decodes identically.
    alone = call(model, jnp.asarray(source[1:2, :4]), jnp.asarray(target_in[1:2]))
    np.testing.assert_allclose(alone[0], full[1], atol=2e-5)


def test_tagger_and_classifier_ignore_padding():
    rng = np.random.default_rng(2)
    tokens = rng.integers(1, 9, (2, 7)).astype(np.int32)
    tokens[0, 5:] = PAD
    call = nnx.jit(lambda m, x: m(x))
    tagger = RNNTagger(3, 9, hidden=8, embed_dim=4, rngs=nnx.Rngs(0))
    y = call(tagger, jnp.asarray(tokens))
    np.testing.assert_allclose(call(tagger, jnp.asarray(tokens[:1, :5]))[0], y[0, :5], atol=1e-5)
    clf = RNNClassifier(4, vocab_size=9, hidden=8, embed_dim=4, bidirectional=True, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(call(clf, jnp.asarray(tokens[:1, :5]))[0], call(clf, jnp.asarray(tokens))[0],
                               atol=1e-5)
    images = rng.normal(size=(2, 6, 5, 1)).astype(np.float32)     # rows are steps
    clf_img = RNNClassifier(4, in_features=(6, 5, 1), hidden=8, cell="gru", rngs=nnx.Rngs(0))
    assert call(clf_img, jnp.asarray(images)).shape == (2, 4)


def test_sequence_labeling_metrics_match_numpy():
    c = copy_memory(lag=3, num_copy=2, num_train=4, num_test=6)
    ds = c
    task = SequenceLabelingTask(config("sequence_labeling"), ds)
    model = RNNTagger(ds.info["num_classes"], ds.info["vocab_size"], hidden=8, embed_dim=4, rngs=nnx.Rngs(0))
    split = ds.splits["test"]
    mask = np.array([1, 1, 1, 1, 0, 1], np.float32)
    batch = {k: jnp.asarray(v) for k, v in split.items()} | {"mask": jnp.asarray(mask)}
    out = task.summarize(jax.device_get(nnx.jit(task.eval_step)(State(model=model), batch)))
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(split["tokens"])), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    w = split["label_mask"] * mask[:, None]
    nll = -np.take_along_axis(logp, split["labels"][..., None], -1)[..., 0]
    np.testing.assert_allclose(out["loss"], (nll * w).sum() / w.sum(), rtol=1e-5)
    right = (logits.argmax(-1) == split["labels"])
    np.testing.assert_allclose(out["accuracy"], (right * w).sum() / w.sum(), rtol=1e-6)
    seq_right = ((~right) * w).sum(1) == 0
    np.testing.assert_allclose(out["sequence_accuracy"], (seq_right * mask).sum() / mask.sum())
