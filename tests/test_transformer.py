"""Embeddings, MultiHeadAttention, Transformer layers/models, KV-cache decoding, beam search."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnets.models.transformer import Transformer, TransformerLayer, TransformerLM
from jaxnets.models.decoding import beam_search, generate, pick_tokens
from jaxnets.nn.attention import MultiHeadAttention
from jaxnets.nn.embedding import TokenEmbedding, sinusoidal_positions


def test_sinusoidal_positions_follow_the_formula():
    d = 10
    pe = np.asarray(sinusoidal_positions(7, d))
    for pos in range(7):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            np.testing.assert_allclose(pe[pos, 2 * i], np.sin(angle), atol=1e-6)
            np.testing.assert_allclose(pe[pos, 2 * i + 1], np.cos(angle), atol=1e-6)


def test_token_embedding_lookup_scale_and_learned_positions():
    emb = TokenEmbedding(11, 8, positions="learned", max_len=16, rngs=nnx.Rngs(0))
    tokens = jnp.array([[1, 5, 7], [2, 2, 0]])
    table, pos = np.asarray(emb.table.embedding[...]), np.asarray(emb.position_table[...])
    want = table[np.asarray(tokens)] * np.sqrt(8) + pos[:3]
    np.testing.assert_allclose(emb(tokens), want, atol=1e-6)
    np.testing.assert_allclose(emb(tokens[:, 1:], positions=jnp.arange(1, 3)), want[:, 1:], atol=1e-6)


def test_learned_positions_gradient_sums_the_batch():
    """The position table's gradient (a product with ones, `embedding.add_rows`) is the float64
    sum of the output gradient over the batch, in rows 0..T-1 and zero below; the same with
    explicit positions (the gather's scatter-add)."""
    emb = TokenEmbedding(11, 16, positions="learned", max_len=12, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (4, 2, 5)))
    dy = np.random.default_rng(1).normal(size=(4, 2, 5, 16)).astype(np.float32)
    want = np.zeros((12, 16))
    want[:5] = dy.astype(np.float64).sum((0, 1))

    def grad_of(fn, *args):
        return np.asarray(nnx.grad(lambda m: jnp.sum(fn(m, *args) * dy))(emb).position_table[...])

    np.testing.assert_allclose(grad_of(lambda m, t: m(t), tokens), want, atol=1e-5)
    np.testing.assert_allclose(grad_of(lambda m, t: m(t, positions=jnp.arange(5)), tokens), want, atol=1e-5)


def numpy_mha(mha, x, context=None, causal=False):
    """float64: heads of softmax(Q K^T / sqrt(d)) V, concatenated, times W^O."""
    p = lambda lin: (np.asarray(lin.kernel[...], np.float64), np.asarray(lin.bias[...], np.float64))
    x = np.asarray(x, np.float64)
    c = x if context is None else np.asarray(context, np.float64)
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = map(p, (mha.query, mha.key, mha.value, mha.out))
    h, hk, d = mha.num_heads, mha.num_kv_heads, mha.head_dim
    q = (x @ wq + bq).reshape(*x.shape[:2], h, d)
    k = np.repeat((c @ wk + bk).reshape(*c.shape[:2], hk, d), h // hk, axis=2)
    v = np.repeat((c @ wv + bv).reshape(*c.shape[:2], hk, d), h // hk, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", a, v).reshape(*x.shape[:2], h * d) @ wo + bo


@pytest.mark.parametrize("kind", ["self", "masked", "cross", "grouped"])
def test_multi_head_attention_matches_numpy(kind):
    rng = np.random.default_rng(0)
    mha = MultiHeadAttention(16, 4, num_kv_heads=2 if kind == "grouped" else None,
                             context_features=12 if kind == "cross" else None, rngs=nnx.Rngs(0))
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    ctx = rng.normal(size=(2, 7, 12)).astype(np.float32) if kind == "cross" else None
    out = jax.jit(lambda x, ctx: mha(x, ctx, causal=kind == "masked"))(x, ctx)
    np.testing.assert_allclose(out, numpy_mha(mha, x, ctx, kind == "masked"), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_layer_residual_order_pre_and_post_layernorm(pre_ln):
    layer = TransformerLayer(16, 4, 32, dropout=0.0, pre_ln=pre_ln, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 16)), jnp.float32)
    attn = lambda h: layer.self_attention(h, causal=True)
    ff = lambda h: layer.ff_out(jax.nn.relu(layer.ff_in(h)))
    if pre_ln:
        h = x + attn(layer.self_norm(x))
        want = h + ff(layer.ff_norm(h))
    else:
        h = layer.self_norm(x + attn(x))
        want = layer.ff_norm(h + ff(h))
    np.testing.assert_allclose(jax.jit(lambda x: layer(x, causal=True)[0])(x), want, atol=1e-5)


SRC = jnp.array([[3, 4, 5, 6, 0, 0], [7, 8, 9, 1, 2, 3]])
TGT = jnp.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])


def test_kv_cache_decoding_equals_full_recomputation():
    """Encoder-decoder (layer loop) and grouped-query LM (scanned layers), chunked and 1-by-1."""
    seq2seq = Transformer(11, target_vocab_size=13, d_model=32, num_heads=4, num_layers=2, rngs=nnx.Rngs(0))
    lm = TransformerLM(17, d_model=32, num_heads=4, num_kv_heads=2, num_layers=2,
                       scan_layers=True, rngs=nnx.Rngs(1))

    @jax.jit
    def full_and_incremental(src, tgt):
        cache = seq2seq.start_decode(src, max_len=8)
        pieces, (logits, cache) = [], seq2seq.decode_step(cache, tgt[:, :3])  # 3 tokens, then 1s
        pieces.append(logits)
        for t in range(3, 5):
            logits, cache = seq2seq.decode_step(cache, tgt[:, t])  # tokens [B] -> [B, V]
            pieces.append(logits[:, None])
        lm_cache = lm.init_cache(2, max_len=8)
        first, lm_cache = lm.decode_step(lm_cache, tgt[:, :3])
        rest, _ = lm.decode_step(lm_cache, tgt[:, 3:])
        return (seq2seq(src, tgt), jnp.concatenate(pieces, 1)), (lm(tgt), jnp.concatenate([first, rest], 1))

    for full, incremental in full_and_incremental(SRC, TGT):
        np.testing.assert_allclose(incremental, full, atol=2e-5)


def copy_into_scanned(loop_model, scan_model):
    """Same parameters in both layouts: stack the loop model's per-layer params on axis 0."""
    state = nnx.state(loop_model)
    layers = state["decoder"]["layers"]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[layers[i] for i in range(len(layers))])
    state["decoder"]["layers"] = stacked
    nnx.update(scan_model, state)


def test_scan_over_layers_and_remat_compute_the_same_function():
    kw = dict(d_model=16, num_heads=2, num_layers=2, dropout=0.0)
    loop = TransformerLM(13, rngs=nnx.Rngs(0), **kw)
    scanned = TransformerLM(13, scan_layers=True, remat=True, rngs=nnx.Rngs(1), **kw)
    copy_into_scanned(loop, scanned)
    loss = lambda m: jnp.mean(m(TGT) ** 2)
    (l_loop, g_loop), (l_scan, g_scan) = (nnx.jit(nnx.value_and_grad(loss))(m) for m in (loop, scanned))
    np.testing.assert_allclose(l_scan, l_loop, rtol=1e-5)
    np.testing.assert_allclose(g_scan["decoder"]["layers"]["ff_in"]["kernel"][...][1],
                               g_loop["decoder"]["layers"][1]["ff_in"]["kernel"][...], atol=1e-6)
    np.testing.assert_allclose(g_scan["decoder"]["embed"]["table"]["embedding"][...],
                               g_loop["decoder"]["embed"]["table"]["embedding"][...], atol=1e-6)


def test_source_padding_is_masked():
    """Padding the source with pad_id (0) changes nothing for the real tokens' translation."""
    model = Transformer(11, target_vocab_size=13, d_model=16, num_heads=2, num_layers=2, dropout=0.0, rngs=nnx.Rngs(2))
    short, padded = jnp.array([[3, 4, 5]]), jnp.array([[3, 4, 5, 0, 0, 0]])
    translate = nnx.jit(lambda m, src: m(src, TGT[:1]))
    np.testing.assert_allclose(translate(model, short), translate(model, padded), atol=2e-5)


def test_dropout_only_when_training():
    model = TransformerLM(13, d_model=16, num_heads=2, num_layers=1, dropout=0.5, rngs=nnx.Rngs(0))
    run = jax.jit(lambda train, seed: model(TGT, train=train, rngs=nnx.Rngs(dropout=jax.random.key(seed))),
                  static_argnums=0)
    np.testing.assert_array_equal(run(False, 1), run(False, 2))
    assert not np.allclose(run(True, 1), run(True, 2))


def test_greedy_generation_equals_stepwise_argmax_of_full_recomputation():
    lm = TransformerLM(13, d_model=16, num_heads=2, num_layers=2, rngs=nnx.Rngs(3))
    prompt = jnp.array([[1, 2], [3, 4]])
    tokens = jax.jit(lambda p: generate(lm, lm.init_cache(2, 8), p, steps=5))(prompt)
    seq = np.asarray(prompt)
    full = jax.jit(lambda s: lm(s))
    for _ in range(5):  # recompute everything from scratch at every step
        seq = np.concatenate([seq, np.argmax(full(jnp.pad(seq, ((0, 0), (0, 7 - seq.shape[1]))))
                                             [:, seq.shape[1] - 1], -1)[:, None]], 1)
    np.testing.assert_array_equal(tokens, seq[:, 2:])


def test_top_k_sampling_stays_in_the_top_k():
    logits = jnp.log(jnp.array([[0.1, 0.4, 0.05, 0.3, 0.15]]))
    samples = jax.vmap(lambda k: pick_tokens(logits, k, temperature=1.0, top_k=2))(
        jax.random.split(jax.random.key(0), 400))
    assert set(np.unique(samples)) == {1, 3}
    np.testing.assert_array_equal(pick_tokens(logits, jax.random.key(0), temperature=0.7, top_k=1), [1])


def test_beam_search_finds_the_most_probable_sequence():
    """With beam >= vocab^(steps-1) no prefix is ever dropped: the search is exhaustive."""
    vocab, steps = 3, 3
    lm = TransformerLM(vocab, d_model=16, num_heads=2, num_layers=1, rngs=nnx.Rngs(4))
    bos = jnp.array([0, 2])
    best, score = jax.jit(lambda b: beam_search(lm, lm.init_cache(2, 8), b, steps, 9))(bos)
    seqs = np.array(list(itertools.product(range(vocab), repeat=steps)))
    for row in range(2):
        full = np.concatenate([np.full((len(seqs), 1), int(bos[row])), seqs], 1)
        logp = np.asarray(jax.jit(lambda f: jax.nn.log_softmax(lm(f)[:, :-1]))(full))
        totals = {tuple(seq): float(sum(logp[i, t, s] for t, s in enumerate(seq)))
                  for i, seq in enumerate(seqs)}
        want = max(totals, key=totals.get)
        assert tuple(np.asarray(best[row])) == want
        np.testing.assert_allclose(score[row], totals[want], atol=1e-4)
    greedy, single_beam = jax.jit(lambda b: (generate(lm, lm.init_cache(2, 8), b[:, None], steps),
                                             beam_search(lm, lm.init_cache(2, 8), b, steps, 1)[0]))(bos)
    np.testing.assert_array_equal(single_beam, greedy)


def test_seq2seq_beam_search_with_eos_keeps_finished_beams():
    model = Transformer(7, d_model=16, num_heads=2, num_layers=1, rngs=nnx.Rngs(5))
    tokens, _ = jax.jit(lambda src: beam_search(model, model.start_decode(src, 8), jnp.array([1, 1]),
                                                6, 3, eos_id=2, length_penalty=0.6))(SRC % 7)
    for row in np.asarray(tokens):
        if 2 in row:
            assert (row[list(row).index(2):] == 2).all()
