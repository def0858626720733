"""A small U-Net noise predictor eps_theta(x_t, t[, condition]) for DDPM, with a prompt encoder.

- Time: sinusoidal embedding of the timestep index (Vaswani-style frequencies), then a 2-layer MLP;
  every residual block turns it into a per-channel scale and shift after its second GroupNorm.
- Condition (optional, added to the time embedding): a class label (`conditioning="class"`,
  label `num_classes` is the learned "no condition" token used by classifier-free guidance) or
  a prompt (`conditioning="text"`): token ids from `PromptTokenizer` read by `TextEncoder`, a
  small pre-LN Transformer whose [CLS] output is the prompt embedding, plus (`text_bag_of_words`,
  default on) a sum of learned per-word vectors; the empty prompt (only [CLS]) is the "no
  condition" input. Why the bag of words: trained through the denoising loss alone, the
  Transformer's prompt embeddings stayed nearly collinear for look-alike digits ("three" and
  "five" cosine 0.93, "one" and "seven" 0.76) in the ddpm_mnist smoke budget, and text class
  accuracy was 0.64 (0.92 with the bag of words; 0.93 with class labels): a per-word vector
  reaches the denoiser as directly as a class embedding does, while the Transformer still
  reads word order and templates.
- Layout: conv in -> per level a ResBlock (kept as a skip) and a stride-2 conv -> middle
  ResBlock, self-attention, ResBlock -> per level concat skip, ResBlock, nearest x2 + conv -> out.
  Three levels take 28x28 MNIST to 14 and 7 pixels; H and W must divide by 2^(levels-1).
- `patch_size` p > 1 folds each p x p pixel patch into channels first (space-to-depth) and
  unfolds the output at the end: the network runs at H/p x W/p, where a CPU spends its time
  on wide convolutions instead of narrow full-resolution ones (a 28x28 level of 16 channels
  costs as much as a 14x14 level of 32, and runs at half the FLOP/s on one CPU core).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnets.nn.attention import MultiHeadAttention
from jaxnets.nn.conv import conv_function
from jaxnets.nn.layers import Conv, Embed, GroupNorm, LayerNorm, Linear, Param, lookup
from jaxnets.nn.lowering import PLAIN, Lowering

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PROMPT_WORDS = ("a", "an", "the", "of", "handwritten", "digit", "number", "picture", "image",
                "drawing", "written", "by", "hand", "scan", "photo")


class PromptTokenizer:
    """Word-level tokenizer over a closed vocabulary: [PAD]=0, [CLS]=1, [UNK]=2, then words.

    Prompts are lower-cased and split on anything that is not a letter or digit; every
    sequence starts with [CLS] and is cut or padded to `max_len`."""

    def __init__(self, words: Sequence[str] = PROMPT_WORDS + NUMBER_WORDS + tuple("0123456789"),
                 max_len: int = 8):
        self.vocab = ["[PAD]", "[CLS]", "[UNK]", *dict.fromkeys(words)]
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, prompts: Sequence[str] | str) -> np.ndarray:
        if isinstance(prompts, str):
            prompts = [prompts]
        out = np.zeros((len(prompts), self.max_len), np.int32)
        for row, prompt in enumerate(prompts):
            words = re.findall(r"[a-z0-9]+", prompt.lower())
            ids = [1] + [self.ids.get(w, 2) for w in words]
            out[row, :len(ids[:self.max_len])] = ids[:self.max_len]
        return out


def sinusoidal_time_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """[sin(t w_k), cos(t w_k)] with w_k = max_period^(-k / (dim/2)), k = 0..dim/2-1; shape (B, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TextEncoder(nnx.Module):
    """Token + learned position embeddings, pre-LN Transformer blocks, LayerNorm'd [CLS] output."""

    def __init__(self, vocab_size: int, dim: int = 64, num_layers: int = 2, num_heads: int = 4,
                 max_len: int = 8, *, dtype=None, lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        self.tokens = Embed(vocab_size, dim, dtype=dtype, rngs=rngs)
        self.positions = Param(0.02 * jax.random.normal(rngs.params(), (max_len, dim)), (None, "embed"))
        self.attn_norms = nnx.List([LayerNorm(dim, dtype=dtype, rngs=rngs) for _ in range(num_layers)])
        self.attns = nnx.List([MultiHeadAttention(dim, num_heads, dtype=dtype, lowering=lowering, rngs=rngs)
                               for _ in range(num_layers)])
        self.mlp_norms = nnx.List([LayerNorm(dim, dtype=dtype, rngs=rngs) for _ in range(num_layers)])
        dense = lambda i, o, axes: Linear(i, o, axes=axes, dtype=dtype, dot_general=lowering.dot_general, rngs=rngs)
        self.mlps_in = nnx.List([dense(dim, 4 * dim, ("embed", "mlp")) for _ in range(num_layers)])
        self.mlps_out = nnx.List([dense(4 * dim, dim, ("mlp", "embed")) for _ in range(num_layers)])
        self.final_norm = LayerNorm(dim, dtype=dtype, rngs=rngs)

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        """The pooled prompt embedding: the [CLS] row of `token_states` [B, dim]."""
        return self.token_states(token_ids)[:, 0]

    def token_states(self, token_ids: jax.Array) -> jax.Array:
        """All token states [B, L, dim] (LayerNorm'd, per row). Prompts are right-padded
        ([CLS] words... [PAD]...): [PAD] keys are masked out by length; pad queries still see
        the real keys (finite rows) and a reader masks them again (cross-attention kv_lengths)."""
        lengths = jnp.sum(token_ids != 0, axis=1)
        h = lookup(self.tokens, token_ids) + self.positions[...][: token_ids.shape[1]]
        for ln1, attn, ln2, fc1, fc2 in zip(self.attn_norms, self.attns, self.mlp_norms,
                                            self.mlps_in, self.mlps_out):
            h = h + attn(ln1(h), kv_lengths=lengths)
            h = h + fc2(jax.nn.gelu(fc1(ln2(h))))
        return self.final_norm(h)


def conv3x3(cin, cout, *, lowering: Lowering = PLAIN, **kwargs):
    """3x3 'SAME' convolution; through jaxnets.nn.conv where `lowering.conv` asks (CPU: folded
    narrow layers, native filter gradient), else plain lax."""
    return Conv(cin, cout, (3, 3), conv_general_dilated=conv_function(lowering.conv), **kwargs)


class ResBlock(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int = 8, *, dtype=None,
                 lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        self.norm1 = GroupNorm(in_ch, num_groups=min(groups, in_ch), dtype=dtype, rngs=rngs)
        self.conv1 = conv3x3(in_ch, out_ch, dtype=dtype, lowering=lowering, rngs=rngs)
        # The time/condition embedding sets a per-channel scale and shift of the second norm
        # (ADM's "scale-shift norm"): a multiplicative path lets the class steer every feature.
        self.emb = Linear(emb_dim, 2 * out_ch, axes=("embed", "conv_out"), dtype=dtype, rngs=rngs)
        self.norm2 = GroupNorm(out_ch, num_groups=min(groups, out_ch), dtype=dtype, rngs=rngs)
        # Zero-initialised last conv: each block starts as the identity (skip) map.
        self.conv2 = conv3x3(out_ch, out_ch, kernel_init=nnx.initializers.zeros, dtype=dtype,
                             lowering=lowering, rngs=rngs)
        self.skip = Conv(in_ch, out_ch, (1, 1), dtype=dtype, rngs=rngs) if in_ch != out_ch else None

    def __call__(self, x, emb):
        h = self.conv1(nnx.silu(self.norm1(x)))
        scale, shift = jnp.split(self.emb(nnx.silu(emb))[:, None, None, :], 2, axis=-1)
        h = self.conv2(nnx.silu(self.norm2(h) * (1.0 + scale) + shift))
        return h + (self.skip(x) if self.skip is not None else x)


class SelfAttention2D(nnx.Module):
    def __init__(self, ch: int, num_heads: int = 4, groups: int = 8, *, dtype=None,
                 lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        self.norm = GroupNorm(ch, num_groups=min(groups, ch), dtype=dtype, rngs=rngs)
        self.attn = MultiHeadAttention(ch, num_heads, dtype=dtype, lowering=lowering, rngs=rngs)

    def __call__(self, x):
        b, h, w, c = x.shape
        seq = self.norm(x).reshape(b, h * w, c)
        return x + self.attn(seq).reshape(b, h, w, c)


class CrossAttention2D(nnx.Module):
    """Image positions attend to the prompt's token states (latent-diffusion style): queries from
    the GroupNorm'd feature map, keys/values from the text encoder, [PAD] tokens masked."""

    def __init__(self, ch: int, context_dim: int, num_heads: int = 4, groups: int = 8, *,
                 dtype=None, lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        self.norm = GroupNorm(ch, num_groups=min(groups, ch), dtype=dtype, rngs=rngs)
        self.attn = MultiHeadAttention(ch, num_heads, context_features=context_dim, dtype=dtype,
                                       lowering=lowering, rngs=rngs)

    def __call__(self, x, context, lengths):
        b, h, w, c = x.shape
        seq = self.norm(x).reshape(b, h * w, c)
        return x + self.attn(seq, context, kv_lengths=lengths).reshape(b, h, w, c)


class UNet(nnx.Module):
    """eps_theta(x_t, t, cond). `conditioning` is None, "class" or "text"."""

    def __init__(self, image_shape: Sequence[int] = (28, 28, 1), channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2), attention: bool = True,
                 conditioning: str | None = None, num_classes: int = 10,
                 text_dim: int = 64, text_layers: int = 2, text_bag_of_words: bool = True,
                 patch_size: int = 1, text_conditioning: str = "pooled", *, dtype=None,
                 lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        if conditioning not in (None, "class", "text"):
            raise ValueError(f"conditioning must be None, 'class' or 'text', got {conditioning!r}")
        # "pooled": the prompt's [CLS] vector (+ bag of words) joins the time embedding;
        # "cross_attention": the prompt reaches the U-Net only through cross-attention blocks
        # (after the middle and every up-level ResBlock) over its token states.
        if text_conditioning not in ("pooled", "cross_attention"):
            raise ValueError(f"text_conditioning must be 'pooled' or 'cross_attention', got {text_conditioning!r}")
        self.cross = conditioning == "text" and text_conditioning == "cross_attention"
        h, w, c = image_shape
        scale = patch_size * 2 ** (len(channel_mults) - 1)
        if h % scale or w % scale:
            raise ValueError(f"UNet with {len(channel_mults)} levels and patch size {patch_size} "
                             f"needs H, W divisible by {scale}")
        self.conditioning, self.num_classes, self.channels = conditioning, num_classes, channels
        self.patch_size, c = patch_size, c * patch_size ** 2
        emb_dim = 4 * channels
        self.time_in = Linear(channels, emb_dim, axes=(None, "embed"), dtype=dtype, rngs=rngs)
        self.time_out = Linear(emb_dim, emb_dim, axes=("embed", None), dtype=dtype, rngs=rngs)
        self.tokenizer = PromptTokenizer() if conditioning == "text" else None
        if conditioning == "class":
            self.cond_embed = Embed(num_classes + 1, emb_dim, dtype=dtype, rngs=rngs)
        elif conditioning == "text":
            self.text_encoder = TextEncoder(self.tokenizer.vocab_size, text_dim, text_layers,
                                            max_len=self.tokenizer.max_len, dtype=dtype,
                                            lowering=lowering, rngs=rngs)
            if not self.cross:
                self.cond_embed = Linear(text_dim, emb_dim, axes=("embed", None), dtype=dtype, rngs=rngs)
            self.word_embed = (Embed(self.tokenizer.vocab_size, emb_dim, dtype=dtype, rngs=rngs)
                               if text_bag_of_words and not self.cross else None)
        chs = [channels * m for m in channel_mults]
        self.conv_in = conv3x3(c, channels, dtype=dtype, lowering=lowering, rngs=rngs)
        ins = [channels, *chs[:-1]]
        self.down = nnx.List([ResBlock(a, b, emb_dim, dtype=dtype, lowering=lowering, rngs=rngs) for a, b in zip(ins, chs)])
        self.downsample = nnx.List([conv3x3(c_, c_, strides=2, dtype=dtype, lowering=lowering, rngs=rngs)
                                    for c_ in chs[:-1]])
        self.mid1 = ResBlock(chs[-1], chs[-1], emb_dim, dtype=dtype, lowering=lowering, rngs=rngs)
        self.mid_attn = SelfAttention2D(chs[-1], dtype=dtype, lowering=lowering, rngs=rngs) if attention else None
        self.mid2 = ResBlock(chs[-1], chs[-1], emb_dim, dtype=dtype, lowering=lowering, rngs=rngs)
        ups_in = [chs[-1], *chs[:0:-1]]            # channels arriving at each level, top-down
        self.up = nnx.List([ResBlock(a + b, b, emb_dim, dtype=dtype, lowering=lowering, rngs=rngs)
                            for a, b in zip(ups_in, chs[::-1])])
        self.upsample = nnx.List([conv3x3(c_, c_, dtype=dtype, lowering=lowering, rngs=rngs) for c_ in chs[:0:-1]])
        if self.cross:
            self.cross_mid = CrossAttention2D(chs[-1], text_dim, dtype=dtype, lowering=lowering, rngs=rngs)
            self.cross_up = nnx.List([CrossAttention2D(b, text_dim, dtype=dtype, lowering=lowering, rngs=rngs)
                                      for b in chs[::-1]])
        self.norm_out = GroupNorm(channels, num_groups=min(8, channels), dtype=dtype, rngs=rngs)
        self.conv_out = conv3x3(channels, c, kernel_init=nnx.initializers.zeros,
                                 dtype=dtype, lowering=lowering, rngs=rngs)

    def null_condition(self) -> jax.Array:
        """The 'no condition' input for classifier-free guidance (broadcasts against a batch)."""
        if self.conditioning == "class":
            return jnp.asarray(self.num_classes, jnp.int32)
        if self.conditioning == "text":
            return jnp.asarray(self.tokenizer.encode("")[0])
        raise ValueError("an unconditional UNet has no null condition")

    def __call__(self, x, t, cond=None, *, train: bool = False, rngs: nnx.Rngs | None = None):
        emb = self.time_out(nnx.silu(self.time_in(sinusoidal_time_embedding(t, self.channels))))
        if self.conditioning == "class":
            emb = emb + lookup(self.cond_embed, cond)
        elif self.cross:
            context, lengths = self.text_encoder.token_states(cond), jnp.sum(cond != 0, axis=1)
        elif self.conditioning == "text":
            emb = emb + self.cond_embed(self.text_encoder(cond))
            if self.word_embed is not None:     # [PAD] (id 0) adds nothing
                emb = emb + jnp.sum(lookup(self.word_embed, cond) * (cond != 0)[..., None], axis=1)
        h = self.conv_in(_fold(x, self.patch_size))
        skips = []
        for level, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        if self.cross:
            h = self.cross_mid(h, context, lengths)
        h = self.mid2(h, emb)
        for level, block in enumerate(self.up):
            h = block(jnp.concatenate([h, skips[-1 - level]], axis=-1), emb)
            if self.cross:
                h = self.cross_up[level](h, context, lengths)
            if level < len(self.upsample):
                b, hh, ww, c = h.shape
                h = self.upsample[level](jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest"))
        out = self.conv_out(nnx.silu(self.norm_out(h))).astype(jnp.float32)
        return _unfold(out, self.patch_size)


def _fold(x: jax.Array, p: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/p, W/p, p*p*C): each p x p patch becomes one pixel's channels."""
    if p == 1:
        return x
    b, h, w, c = x.shape
    patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return patches.reshape(b, h // p, w // p, p * p * c)


def _unfold(x: jax.Array, p: int) -> jax.Array:
    """The inverse of `_fold`."""
    if p == 1:
        return x
    b, h, w, pc = x.shape
    c = pc // (p * p)
    return x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c)
