"""Autoregressive decoding for every decoder in jaxnets: greedy, temperature/top-k, beam search.

One routine serves the decoder-only TransformerLM, the encoder-decoder Transformer and the
LSTM seq2seq model. The model contract:
    logits, cache = model.decode_step(cache, tokens)   # tokens [B] -> [B, V]; [B, t] -> [B, t, V]
    cache = {"layers": leaves [num_layers, B, ...], "batch": leaves [B, ...], ...}
where "layers" (stacked per-layer KV caches) and "batch" (per-example state: encoder memory,
recurrent carry) are optional; other entries (the Transformer's "index") are shared by all
rows. A Transformer feeds only the newest token and reads earlier keys/values from its
cache; an encoder-decoder encodes once in `start_decode`. Everything runs inside one
lax.scan, so a whole decode compiles once under jit.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def pick_tokens(logits, key=None, *, temperature=0.0, top_k=None):
    """Greedy (temperature 0) or sampling from softmax(logits / temperature) over the top k."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k is not None:
        kth_best = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_best, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


def generate(model, cache, prompt, steps: int, *, rng=None, temperature=0.0, top_k=None,
             eos_id=None, keys=None):
    """Continue `prompt` by `steps` tokens -> [B, steps].

    `prompt` is one token per row [B] (e.g. BOS, fed as `decode_step(cache, [B])`) or a
    chunk [B, t0] fed at once. The cache must hold t0 + steps - 1 positions (the last token
    is never fed back). After `eos_id` a sequence keeps emitting eos_id. Sampling draws
    token i with `keys[i]` (default: `jax.random.split(rng, steps)`).
    """
    if temperature != 0.0 and rng is None and keys is None:
        raise ValueError("Sampling (temperature > 0) needs an `rng` key.")
    logits, cache = model.decode_step(cache, prompt)
    if prompt.ndim == 2:
        logits = logits[:, -1]
    if keys is None:
        keys = jax.random.split(rng, steps) if rng is not None else jnp.zeros((steps, 2), jnp.uint32)

    def pick(logits, key, done):
        token = pick_tokens(logits, key, temperature=temperature, top_k=top_k).astype(jnp.int32)
        if eos_id is None:
            return token, done
        token = jnp.where(done, eos_id, token)
        return token, done | (token == eos_id)

    def step(carry, key):
        last_logits, cache, done = carry
        token, done = pick(last_logits, key, done)
        logits, cache = model.decode_step(cache, token)
        return (logits, cache, done), token

    done = jnp.zeros(prompt.shape[0], bool)
    (logits, _, done), tokens = jax.lax.scan(step, (logits, cache, done), keys[:-1])
    last, _ = pick(logits, keys[-1], done)
    return jnp.concatenate([tokens.T, last[:, None]], axis=1)


def reorder_cache(cache, rows):
    """Select batch rows of a cache (beam search keeps the caches of the surviving beams)."""
    out = dict(cache)
    if "layers" in cache:
        out["layers"] = jax.tree.map(lambda a: jnp.take(a, rows, axis=1), cache["layers"])
    if "batch" in cache:
        out["batch"] = jax.tree.map(lambda a: jnp.take(a, rows, axis=0), cache["batch"])
    return out


def beam_search(model, cache, bos, steps: int, beam_size: int, *, eos_id=None,
                length_penalty: float = 0.0):
    """Keep the `beam_size` most probable prefixes per example; return the best [B, steps].

    Beams are ranked by total log-probability; finished beams (after eos_id) stay put with
    their score. The final choice divides by length ** length_penalty (0: pure probability).
    Returns (tokens [B, steps], log-probabilities [B] of the chosen sequences).
    """
    b, k = bos.shape[0], beam_size
    cache = reorder_cache(cache, jnp.repeat(jnp.arange(b), k))  # [B*K] rows, beam-major
    scores = jnp.tile(jnp.array([0.0] + [-jnp.inf] * (k - 1)), (b, 1))  # one live beam at first
    tokens = jnp.zeros((b, k, steps), jnp.int32)
    finished = jnp.zeros((b, k), bool)
    lengths = jnp.zeros((b, k), jnp.int32)

    def step(carry, t):
        last, cache, scores, tokens, finished, lengths = carry
        logits, cache = model.decode_step(cache, last.reshape(b * k))
        logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, -1)
        vocab = logp.shape[-1]
        if eos_id is not None:  # a finished beam can only extend by eos, at no cost
            stay = jnp.full((vocab,), -jnp.inf).at[eos_id].set(0.0)
            logp = jnp.where(finished[..., None], stay, logp)
        best, flat = jax.lax.top_k((scores[..., None] + logp).reshape(b, k * vocab), k)
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        gather = lambda a: jnp.take_along_axis(a, parent, axis=1)
        tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1).at[:, :, t].set(token)
        was_finished = gather(finished)
        lengths = gather(lengths) + (~was_finished).astype(jnp.int32)
        finished = was_finished | (token == eos_id if eos_id is not None else False)
        cache = reorder_cache(cache, (jnp.arange(b)[:, None] * k + parent).reshape(-1))
        return (token, cache, best, tokens, finished, lengths), None

    init = (jnp.repeat(bos[:, None], k, axis=1), cache, scores, tokens, finished, lengths)
    (_, _, scores, tokens, _, lengths), _ = jax.lax.scan(step, init, jnp.arange(steps))
    ranked = scores / jnp.maximum(lengths, 1).astype(jnp.float32) ** length_penalty
    choice = jnp.argmax(ranked, axis=1)
    return tokens[jnp.arange(b), choice], scores[jnp.arange(b), choice]
