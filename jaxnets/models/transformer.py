"""The Transformer (Vaswani et al. 2017): encoder-decoder and decoder-only language model.

    model = Transformer(vocab_size=20, d_model=128, rngs=nnx.Rngs(0))
    logits = model(src, tgt_in, train=True, rngs=rngs)        # teacher forcing, all steps at once
    cache = model.start_decode(src, max_len=32)                # runs the encoder once
    logits, cache = model.decode_step(cache, tokens)           # tokens [B] -> logits [B, V]

    lm = TransformerLM(vocab_size=65, d_model=256, num_layers=4, rngs=nnx.Rngs(0))
    logits = lm(tokens)                                        # [B, T, vocab]

One `TransformerLayer` serves all three stacks: self-attention (causal in decoders),
cross-attention to the encoder output (decoder of the encoder-decoder model only), and a
position-wise feed-forward block, each wrapped in a residual connection with LayerNorm before
(pre-LN, default: stable without warm-up tricks) or after (post-LN, as in the paper).
`scan_layers=True` stores the layers' parameters stacked and runs them with one lax.scan
(one compiled layer, fast compiles for deep stacks; `lowering.unroll_layers` unrolls short
stacks, as the platform layer asks on CPU); `remat=True` recomputes each layer's
activations in the backward pass (jax.checkpoint) to trade compute for memory.
Source padding (`pad_id`) is masked through segment ids, which every attention
implementation honours, including the fused kernel. Decoding: decoding.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnets.nn.attention import MultiHeadAttention
from jaxnets.nn.embedding import TokenEmbedding
from jaxnets.nn.layers import Linear, Norm
from jaxnets.nn.mlp import SwiGLU
from jaxnets.nn.lowering import PLAIN, Lowering
from jaxnets.parallel.sharding import constrain


class TransformerLayer(nnx.Module):
    """`norm` "layer" (LayerNorm) or "rms" (RMSNorm); `mlp` "plain" (W2 act(W1 x)) or "swiglu";
    `rotary_base`: rotary positions in self-attention (Llama: norm="rms", mlp="swiglu",
    use_bias=False, rotary_base=10000)."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, *, cross_attention=False,
                 dropout=0.1, pre_ln=True, num_kv_heads=None, activation="relu",
                 attention_impl="auto", norm="layer", mlp="plain", use_bias=True,
                 rotary_base=None, dtype=None, lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        mha = lambda rotary: MultiHeadAttention(
            d_model, num_heads, num_kv_heads=num_kv_heads, implementation=attention_impl,
            use_bias=use_bias, rotary_base=rotary, dtype=dtype, lowering=lowering, rngs=rngs)
        norm_layer = lambda: Norm(norm, d_model, dtype=dtype, native_threads=lowering.norm_threads,
                                  rngs=rngs)
        self.pre_ln, self.activation = pre_ln, getattr(jax.nn, activation)
        self.self_attention, self.self_norm = mha(rotary_base), norm_layer()
        self.cross_attention = mha(None) if cross_attention else None
        self.cross_norm = norm_layer() if cross_attention else None
        if mlp == "swiglu":
            self.ff = SwiGLU(d_model, d_ff, use_bias=use_bias, dtype=dtype,
                             dot_general=lowering.dot_general, rngs=rngs)
        elif mlp == "plain":
            dense = lambda i, o, axes: Linear(i, o, axes=axes, use_bias=use_bias, dtype=dtype,
                                              dot_general=lowering.dot_general, rngs=rngs)
            self.ff_in = dense(d_model, d_ff, ("embed", "mlp"))
            self.ff_out = dense(d_ff, d_model, ("mlp", "embed"))
        else:
            raise ValueError(f"mlp must be 'plain' or 'swiglu', got {mlp!r}.")
        self.mlp = mlp
        self.ff_norm = norm_layer()
        self.dropout = nnx.Dropout(dropout)

    def _residual(self, x, norm, block, train, key):
        """x + Dropout(block(LN(x))) (pre-LN) or LN(x + Dropout(block(x))) (post-LN)."""
        y = block(norm(x) if self.pre_ln else x)
        y = self.dropout(y, deterministic=not train, rngs=key)
        out = x + y if self.pre_ln else norm(x + y)
        return constrain(out, ("batch", None, "embed_act"))   # the residual stream: batch split

    def __call__(self, x, *, causal=False, segment_ids=None, memory=None,
                 memory_segment_ids=None, cache=None, cache_index=None, train=False,
                 dropout_key=None, positions=None):
        """Returns (x, new_cache); `cache` = {"self": {"k","v"}, "cross": (k, v)} when decoding."""
        keys = jax.random.split(dropout_key, 3) if dropout_key is not None else [None] * 3
        new_cache = None

        def self_block(h):
            nonlocal new_cache
            if cache is None:
                return self.self_attention(h, causal=causal, segment_ids=segment_ids,
                                           positions=positions)
            h, self_cache = self.self_attention(h, cache=cache["self"], cache_index=cache_index,
                                                positions=positions)
            new_cache = dict(cache, self=self_cache)
            return h

        x = self._residual(x, self.self_norm, self_block, train, keys[0])
        if self.cross_attention is not None:
            kv = cache["cross"] if cache is not None else None
            segments = None
            if memory_segment_ids is not None:
                segments = (jnp.zeros(x.shape[:2], jnp.int32), memory_segment_ids)
            cross = lambda h: self.cross_attention(h, memory, kv=kv, segment_ids=segments)
            x = self._residual(x, self.cross_norm, cross, train, keys[1])
        if self.mlp == "swiglu":
            ff = self.ff
        else:
            ff = lambda h: self.ff_out(constrain(self.activation(self.ff_in(h)), ("batch", None, "mlp")))
        return self._residual(x, self.ff_norm, ff, train, keys[2]), new_cache


# What a rematerialised layer keeps for the backward pass: "full" only its input (everything
# else is recomputed), "dots_saveable" the outputs of its matmuls (the cheap elementwise ops
# are recomputed), "none" everything (no recomputation, most memory).
REMAT_POLICIES = ("none", "full", "dots_saveable")


def remat_policy_of(remat) -> str:
    """A model's `remat` (bool) or `remat_policy` (str) as one of REMAT_POLICIES."""
    policy = {True: "full", False: "none", None: "none"}.get(remat, remat)
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat_policy must be one of {', '.join(REMAT_POLICIES)}; got {remat!r}.")
    return policy


def make_layers(n, scan, make_layer, rngs):
    """n layers: an nnx.List, or one module whose parameters carry a leading layer axis."""
    if not scan:
        return nnx.List([make_layer(rngs) for _ in range(n)])

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(rngs):
        return make_layer(rngs)

    return create(rngs)


def run_layers(layers, x, *, num_layers, scan, remat, train=False, rngs=None, cache=None,
               unroll=1, **kwargs):
    """Apply the stack; `cache` leaves are stacked [num_layers, ...]. Returns (x, new_cache).
    `unroll`: of the lax.scan when `scan` (see `Lowering.scan_unroll`)."""
    dropout_key = rngs.dropout() if (train and rngs is not None) else None
    keys = jax.random.split(dropout_key, num_layers) if dropout_key is not None else None

    def apply(layer, x, layer_cache, key):
        return layer(x, cache=layer_cache, train=train, dropout_key=key, **kwargs)

    def apply_split(graphdef, state, x, layer_cache, key):
        return apply(nnx.merge(graphdef, state), x, layer_cache, key)

    policy = remat_policy_of(remat)
    if policy != "none":
        saveable = jax.checkpoint_policies.dots_saveable if policy == "dots_saveable" else None
        apply_split = jax.checkpoint(apply_split, static_argnums=(0,), policy=saveable)
    if scan:
        graphdef, state = nnx.split(layers)

        def body(x, xs):
            return apply_split(graphdef, *xs[:1], x, *xs[1:])

        return jax.lax.scan(body, x, (state, cache, keys), unroll=unroll)
    new_caches = []
    for i, layer in enumerate(layers):
        layer_cache = None if cache is None else jax.tree.map(lambda a: a[i], cache)
        key = None if keys is None else keys[i]
        if policy != "none":
            x, c = apply_split(*nnx.split(layer), x, layer_cache, key)
        else:  # called in place, so sown intermediates (attention maps) stay on the layer
            x, c = apply(layer, x, layer_cache, key)
        new_caches.append(c)
    stacked = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *new_caches)
    return x, stacked


class _Stack(nnx.Module):
    """Embedding -> layers -> (final LayerNorm if pre-LN): shared by encoder, decoder and LM."""

    def __init__(self, vocab_size, *, d_model, num_heads, num_layers, d_ff, cross_attention,
                 dropout, pre_ln, num_kv_heads, positions, max_len, activation, scan_layers,
                 remat, attention_impl, dtype, rngs, lowering=PLAIN, embedding=None,
                 norm="layer", mlp="plain", use_bias=True, rotary_base=10000.0):
        # Rotary positions live in attention: the embedding adds none and, with no sinusoid
        # to balance, is not scaled by sqrt(d_model) (Llama).
        rotary = positions == "rotary"
        self.embed = embedding or TokenEmbedding(
            vocab_size, d_model, positions=None if rotary else positions, scale=not rotary,
            max_len=max_len, dropout=dropout, dtype=dtype, rngs=rngs)
        make = lambda r: TransformerLayer(
            d_model, num_heads, d_ff, cross_attention=cross_attention, dropout=dropout,
            pre_ln=pre_ln, num_kv_heads=num_kv_heads, activation=activation,
            attention_impl=attention_impl, norm=norm, mlp=mlp, use_bias=use_bias,
            rotary_base=rotary_base if rotary else None, dtype=dtype, lowering=lowering, rngs=r)
        self.layers = make_layers(num_layers, scan_layers, make, rngs)
        self.unroll = lowering.scan_unroll(num_layers)
        self.final_norm = (Norm(norm, d_model, dtype=dtype, native_threads=lowering.norm_threads,
                                rngs=rngs) if pre_ln else None)
        self.num_layers, self.scan_layers, self.remat = num_layers, scan_layers, remat
        self.rotary = rotary

    def __call__(self, tokens, *, positions=None, train=False, rngs=None, cache=None, **kwargs):
        x = self.embed(tokens, positions=positions, train=train, rngs=rngs)
        if self.rotary:
            kwargs["positions"] = positions
        x, cache = run_layers(self.layers, x, num_layers=self.num_layers, scan=self.scan_layers,
                              remat=self.remat, train=train, rngs=rngs, cache=cache,
                              unroll=self.unroll, **kwargs)
        return (self.final_norm(x) if self.final_norm is not None else x), cache


def _stack_options(**kw):
    if kw.get("d_ff") is None:
        kw["d_ff"] = 4 * kw["d_model"]
    return kw


class Transformer(nnx.Module):
    """Encoder-decoder Transformer: model(src [B,S], tgt_in [B,T]) -> logits [B,T,tgt_vocab]."""

    def __init__(self, vocab_size: int, *, target_vocab_size: int | None = None, d_model=128, num_heads=4, num_layers=2, num_decoder_layers=None, d_ff=None,
                 dropout=0.1, pre_ln=True, num_kv_heads=None, positions="sinusoidal",
                 max_len=1024, activation="relu", pad_id: int | None = 0, tie_output=True,
                 max_decode_len=64, scan_layers=False, remat=False, attention_impl="auto",
                 dtype=None, lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        tgt_vocab_size = target_vocab_size or vocab_size
        common = _stack_options(d_model=d_model, num_heads=num_heads, d_ff=d_ff, dropout=dropout,
                                pre_ln=pre_ln, num_kv_heads=num_kv_heads, positions=positions,
                                max_len=max_len, activation=activation, scan_layers=scan_layers,
                                remat=remat, attention_impl=attention_impl, dtype=dtype,
                                lowering=lowering, rngs=rngs)
        self.encoder = _Stack(vocab_size, num_layers=num_layers, cross_attention=False,
                              **common)
        self.decoder = _Stack(tgt_vocab_size, num_layers=num_decoder_layers or num_layers,
                              cross_attention=True, **common)
        self.output = None if tie_output else Linear(d_model, tgt_vocab_size, axes=("embed", "vocab"),
                                                     dtype=dtype, dot_general=lowering.dot_general,
                                                     rngs=rngs)
        self.pad_id, self.max_decode_len = pad_id, max_decode_len

    def _logits(self, h):
        logits = self.decoder.embed.attend(h) if self.output is None else self.output(h)
        return logits.astype(jnp.float32)

    def encode(self, src, *, train=False, rngs=None):
        """Encoder output [B, S, d_model] and the source segment ids (1 marks padding)."""
        segments = None if self.pad_id is None else (src == self.pad_id).astype(jnp.int32)
        memory, _ = self.encoder(src, segment_ids=segments, train=train, rngs=rngs)
        return memory, segments

    def __call__(self, src, tgt_in, *, train=False, rngs=None):
        memory, segments = self.encode(src, train=train, rngs=rngs)
        h, _ = self.decoder(tgt_in, causal=True, memory=memory, memory_segment_ids=segments,
                            train=train, rngs=rngs)
        return self._logits(h)

    def start_decode(self, src, max_len: int | None = None):
        """Encode once; project the encoder output to every decoder layer's keys/values.
        The cache holds `max_len` (default `max_decode_len`) target positions."""
        max_len = max_len or self.max_decode_len
        memory, segments = self.encode(src)
        project = lambda layer: layer.cross_attention.project_kv(memory)
        stack = self.decoder
        if stack.scan_layers:
            graphdef, state = nnx.split(stack.layers)
            cross = jax.vmap(lambda st: project(nnx.merge(graphdef, st)))(state)
        else:
            cross = jax.tree.map(lambda *a: jnp.stack(a), *[project(l) for l in stack.layers])
        self_cache = _empty_self_cache(stack, src.shape[0], max_len, memory.dtype)
        return {"index": jnp.zeros((), jnp.int32), "batch": {"memory_segment_ids": segments},
                "layers": {"self": self_cache, "cross": cross}}

    def decode_step(self, cache, tokens):
        """tokens [B] -> logits [B, V] (or a chunk [B, t] -> [B, t, V]) at the cache's position."""
        return _cached_step(self.decoder, self._logits, cache, tokens, memory=None,
                            memory_segment_ids=cache["batch"]["memory_segment_ids"])


class TransformerLM(nnx.Module):
    """Decoder-only language model: lm(tokens [B, T]) -> next-token logits [B, T, vocab]."""

    def __init__(self, vocab_size: int, *, d_model=256, num_heads=4, num_layers=4, d_ff=None,
                 dropout=0.1, pre_ln=True, num_kv_heads=None, positions="learned", max_len=1024,
                 activation="gelu", tie_output=True, scan_layers=False, remat=False,
                 remat_policy=None, attention_impl="auto", norm="layer", mlp="plain",
                 use_bias=True, rotary_base=10000.0, dtype=None, lowering: Lowering = PLAIN,
                 rngs: nnx.Rngs):
        """Llama-style: positions="rotary", norm="rms", mlp="swiglu", use_bias=False,
        tie_output=False, num_kv_heads < num_heads (GQA). `remat_policy` ("none", "full",
        "dots_saveable") overrides `remat` (True = "full")."""
        self.decoder = _Stack(vocab_size, **_stack_options(
            d_model=d_model, num_heads=num_heads, num_layers=num_layers, d_ff=d_ff,
            cross_attention=False, dropout=dropout, pre_ln=pre_ln, num_kv_heads=num_kv_heads,
            positions=positions, max_len=max_len, activation=activation, scan_layers=scan_layers,
            remat=remat_policy_of(remat_policy or remat), attention_impl=attention_impl,
            norm=norm, mlp=mlp, use_bias=use_bias, rotary_base=rotary_base, dtype=dtype,
            lowering=lowering, rngs=rngs))
        self.output = None if tie_output else Linear(d_model, vocab_size, axes=("embed", "vocab"),
                                                     dtype=dtype, dot_general=lowering.dot_general,
                                                     rngs=rngs)

    def _logits(self, h):
        logits = self.decoder.embed.attend(h) if self.output is None else self.output(h)
        return logits.astype(jnp.float32)

    def __call__(self, tokens, *, train=False, rngs=None, segment_ids=None, positions=None):
        """`segment_ids` [B, T] keep packed documents apart (pass per-document `positions`)."""
        h, _ = self.decoder(tokens, positions=positions, causal=True, segment_ids=segment_ids,
                            train=train, rngs=rngs)
        return self._logits(h)

    def init_cache(self, batch: int, max_len: int, dtype=jnp.float32):
        return {"index": jnp.zeros((), jnp.int32), "batch": {},
                "layers": {"self": _empty_self_cache(self.decoder, batch, max_len, dtype)}}

    def decode_step(self, cache, tokens):
        """tokens [B] -> logits [B, V] (or a chunk [B, t] -> [B, t, V]) at the cache's position."""
        return _cached_step(self.decoder, self._logits, cache, tokens)


def _cached_step(stack, to_logits, cache, tokens, **kwargs):
    chunk = tokens if tokens.ndim == 2 else tokens[:, None]
    index = cache["index"]
    h, layers = stack(chunk, positions=index + jnp.arange(chunk.shape[1]), cache=cache["layers"],
                      cache_index=index, **kwargs)
    logits = to_logits(h)
    new_cache = dict(cache, index=index + chunk.shape[1], layers=layers)
    return (logits if tokens.ndim == 2 else logits[:, 0]), new_cache


def training_flops_per_token(model, seq_len: int) -> float:
    """Model FLOPs per trained token (forward + backward): 6 x matmul parameters plus the
    attention scores and mixing, 12 x layers x d_model x seq_len (Kaplan et al. 2020; PaLM
    appendix B). Divide tokens/s x this by the device peak for model FLOP utilisation."""
    params = sum(x.size for path, x in nnx.to_flat_state(nnx.state(model, nnx.Param))
                 if path[-1] == "kernel")
    stacks = [model.encoder, model.decoder] if isinstance(model, Transformer) else [model.decoder]
    attention = 0
    for stack in stacks:
        d_model = stack.embed.d_model
        attention += 12 * stack.num_layers * d_model * seq_len
    return 6.0 * params + attention


def _empty_self_cache(stack, batch, max_len, dtype):
    attn = (stack.layers[0] if not stack.scan_layers else stack.layers).self_attention
    shape = (stack.num_layers, batch, max_len, attn.num_kv_heads, attn.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
