"""One attention and one decoder: seq2seq's Luong attention through jaxnets.nn.attention, the
shared greedy/beam routine for the LSTM seq2seq model, KV-cached LM sampling, and the
diffusion prompt encoder's padding mask."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnets.models.unet import PromptTokenizer, TextEncoder
from jaxnets.models.seq2seq_lstm import Seq2SeqLSTM
from jaxnets.models.transformer import TransformerLM
from jaxnets.models.decoding import beam_search
from jaxnets.tasks.language_model import sample_cached, sample_window
from jaxnets.tasks.seq2seq import decode

PAD = 0


def test_luong_attention_matches_the_einsum_formula_in_float32_and_float64():
    model = Seq2SeqLSTM(11, embed_dim=8, hidden=16, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 5, 16)).astype(np.float32)
    memory = rng.normal(size=(3, 6, 32)).astype(np.float32)
    mask = np.ones((3, 6), bool)
    mask[1, 4:] = False
    mask[2, 1:] = False
    got = np.asarray(nnx.jit(lambda m, *a: m.attend(*a))(model, h, memory, mask))
    # The formula the model used before it went through jaxnets.nn.attention (float32 einsums).
    scores = jnp.einsum("bue,bse->bus", model.attn(h), memory)
    weights = jax.nn.softmax(jnp.where(mask[:, None, :], scores, -1e9), axis=-1)
    context = jnp.einsum("bus,bse->bue", weights, memory)
    before = model.out(jnp.tanh(model.combine(jnp.concatenate([context, h], -1))))
    np.testing.assert_allclose(got, before, rtol=0, atol=2e-6)
    # float64 NumPy: a_t = softmax(h W_a e) over the unpadded source, c_t = sum a e.
    w_a = np.asarray(model.attn.kernel[...], np.float64)
    s64 = np.einsum("bue,bse->bus", h.astype(np.float64) @ w_a, memory)
    s64 = np.where(mask[:, None, :], s64, -np.inf)
    a64 = np.exp(s64 - s64.max(-1, keepdims=True))
    a64 /= a64.sum(-1, keepdims=True)
    c64 = np.einsum("bus,bse->bue", a64, memory)
    w_c, b_c = (np.asarray(x[...], np.float64) for x in (model.combine.kernel, model.combine.bias))
    w_o, b_o = (np.asarray(x[...], np.float64) for x in (model.out.kernel, model.out.bias))
    ref = np.tanh(np.concatenate([c64, h], -1) @ w_c + b_c) @ w_o + b_o
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_lstm_seq2seq_greedy_and_beam_through_the_shared_decoder():
    model = Seq2SeqLSTM(9, embed_dim=8, hidden=16, rngs=nnx.Rngs(1))
    source = np.array([[3, 4, 5, 6, PAD], [7, 8, 3, PAD, PAD]], np.int32)
    bos, steps = 1, 4
    run = nnx.jit(lambda m, s: (decode(m, s, steps, bos_id=bos),
                                decode(m, s, steps, bos_id=bos, beam_size=1)))
    greedy, _ = run(model, jnp.asarray(source))
    chex.assert_shape(greedy, (2, steps))
    chex.assert_type(greedy, jnp.int32)
    # Reference: full teacher-forced recomputation, appending the argmax at every step.
    full = nnx.jit(lambda m, s, t: m(s, t))
    seq = np.full((2, 1), bos, np.int32)
    for _ in range(steps):
        nxt = np.argmax(np.asarray(full(model, jnp.asarray(source), jnp.asarray(seq)))[:, -1], -1)
        seq = np.concatenate([seq, nxt[:, None].astype(np.int32)], 1)
    np.testing.assert_array_equal(greedy, seq[:, 1:])
    # Beam search over the LSTM's per-row state: beam 1 is greedy, a wide beam is exhaustive.
    vocab = 9
    one = nnx.jit(lambda m, s: beam_search(m, m.start_decode(s), jnp.full((2,), bos), steps, 1)[0])
    np.testing.assert_array_equal(one(model, jnp.asarray(source)), greedy)
    best, score = nnx.jit(lambda m, s: beam_search(m, m.start_decode(s), jnp.full((2,), bos), 2,
                                                   vocab))(model, jnp.asarray(source))
    target_in = np.array([[bos, a] for a in range(vocab) for _ in range(vocab)], np.int32)
    second = np.array([b for _ in range(vocab) for b in range(vocab)])
    for row in range(2):
        src = np.repeat(source[row:row + 1], len(target_in), 0)
        logp = np.asarray(jax.nn.log_softmax(full(model, jnp.asarray(src), jnp.asarray(target_in))))
        totals = logp[np.arange(len(target_in)), 0, target_in[:, 1]] + \
            logp[np.arange(len(target_in)), 1, second]
        i = int(np.argmax(totals))
        assert tuple(np.asarray(best[row])) == (target_in[i, 1], second[i])
        np.testing.assert_allclose(score[row], totals[i], atol=1e-4)


def test_kv_cached_lm_sampling_draws_the_same_tokens_as_window_recomputation():
    lm = TransformerLM(11, d_model=16, num_heads=2, num_layers=2, dropout=0.0, max_len=32,
                       rngs=nnx.Rngs(2))
    prompt, ctx = [3, 1, 4], 12
    # While prompt + text fit the context both samplers see the same tokens: same draws.
    fits = ctx - len(prompt) + 1
    cached = sample_cached(lm, prompt, fits, 0.9, ctx, seed=5)
    window = sample_window(lm, prompt, fits, 0.9, ctx, seed=5)
    np.testing.assert_array_equal(cached, window)
    # Past the context the cache restarts from the newest ctx // 2 tokens: recompute each
    # token from exactly that context with the uncached model (same key per token).
    length = 20
    cached = sample_cached(lm, prompt, length, 0.9, ctx, seed=5)
    keys = jax.random.split(jax.random.key(5), length)
    forward = jax.jit(lambda t: lm(t[None])[0, -1])
    history, start = list(prompt), 0
    for i in range(length):
        if len(history) - start > ctx:
            start = len(history) - ctx // 2
        logits = forward(jnp.asarray(history[start:], jnp.int32))
        history.append(int(jax.random.categorical(keys[i], logits / 0.9)))
    np.testing.assert_array_equal(cached, history[len(prompt):])


def test_prompt_encoder_ignores_padding():
    tok = PromptTokenizer(max_len=8)
    enc = TextEncoder(tok.vocab_size, dim=16, num_layers=2, num_heads=2, max_len=8,
                      rngs=nnx.Rngs(3))
    ids = tok.encode(["a handwritten seven", "three", ""])
    padded = np.asarray(nnx.jit(lambda m, x: m(x))(enc, jnp.asarray(ids)))
    for row, n in enumerate((ids != 0).sum(1)):
        alone = np.asarray(enc(jnp.asarray(ids[row:row + 1, :n])))[0]
        np.testing.assert_allclose(padded[row], alone, rtol=0, atol=1e-5)
