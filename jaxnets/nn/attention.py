"""Scaled dot-product attention: one entry point, several implementations.

    out = dot_product_attention(q, k, v, causal=True, kv_lengths=lengths)

Layout is [batch, seq, heads, head_dim] for q, k and v. k and v may have fewer heads than q
(grouped-query attention): query head h reads key/value head h // (Hq // Hkv).

Masks (all optional, combined with AND; True / inside means "may attend"):
  causal       query i sees keys j <= i (top-left aligned, like jax.nn and the course's M).
  mask         boolean, broadcastable to [B, Hq, Tq, Tk] (a dense mask; O(T^2) bits).
  segment_ids  int [B, T] for packed self-attention (q and kv share them), or a pair
               (q_segment_ids [B, Tq], kv_segment_ids [B, Tk]); a query only sees keys of its
               own segment. Ids must be >= 0 (negative ids are reserved for padding).
  kv_lengths   int [B]: keys j >= kv_lengths[b] are padding.
A query row that may see no key at all returns zeros (and gets zero gradient).

Implementations (`implementation=`):
  "xla"        the plain formula softmax(q k^T * scale) v; materialises the [B, H, Tq, Tk] logits
               (jaxnets/nn/attention_formula.py).
  "blockwise"  pure-JAX online softmax over key blocks with a hand-written backward
               (jaxnets/kernels/blockwise_attention.py): O(T) memory, every backend.
  "pallas"     the fused flash-attention kernel (jaxnets/kernels/flash_attention.py); Triton on
               GPU, interpret mode elsewhere (slow: for tests). No dense `mask`.
  "native"     causal self-attention by the C++ CPU kernel (jaxnets/kernels/causal_attention.py):
               float32, no other mask, head_dim a multiple of 16, at most MAX_LEN positions.
  "pallas_tpu" the Pallas TPU flash-attention kernel that ships with jax
               (jaxnets/kernels/tpu_attention.py); TPU, or its interpret mode elsewhere (tests).
  "cudnn"      jax.nn.dot_product_attention(implementation="cudnn"); GPU only, fp16/bf16.
  "auto"       the fastest valid one for the backend, dtype and shapes (see `choose_implementation`):
               TPU: pallas_tpu; GPU: cudnn (half precision) or pallas; CPU: native (causal
               self-attention it takes), else xla or blockwise.
Under the trainer's mesh the kernels run per shard (`per_shard`: batch over the data axes,
heads over "tensor"), so no device gathers another's q, k or v.
A combination an implementation cannot honour raises ValueError: a mask is never dropped.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax.sharding import PartitionSpec as P

from jaxnets.kernels import causal_attention as native
from jaxnets.kernels.blockwise_attention import blockwise_attention
from jaxnets.nn.attention_formula import attention_probabilities, xla_attention
from jaxnets.nn.layers import Linear
from jaxnets.nn.lowering import PLAIN, Lowering
from jaxnets.nn.rotary import apply_rotary
from jaxnets.parallel import sharding
from jaxnets.parallel.sharding import constrain

IMPLEMENTATIONS = ("xla", "blockwise", "pallas", "pallas_tpu", "cudnn", "native", "auto")

# CPU: below this many logits per call the plain formula is faster than the scan over key
# blocks and its memory is harmless (benchmarks/results/attention_cpu.json measures both).
_XLA_MAX_LOGITS_CPU = 1 << 24


def dot_product_attention(q, k, v, *, causal: bool = False, mask=None, segment_ids=None,
                          kv_lengths=None, scale: float | None = None,
                          implementation: str = "auto", native_threads: int = 1):
    """softmax(q k^T * scale + masks) v over [batch, seq, heads, head_dim] arrays.

    `native_threads` (the "native" kernel): 1 runs it on the calling thread, 0 splits it over
    XLA's intra-op pool (one multi-threaded CPU device only: `Lowering.native_threads`)."""
    q_seg, kv_seg = _check_inputs(q, k, v, mask, segment_ids, kv_lengths)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if implementation == "auto":
        implementation = choose_implementation(q, k, v, mask=mask, segment_ids=segment_ids,
                                               causal=causal, kv_lengths=kv_lengths)
    if implementation == "xla":
        return xla_attention(q, k, v, causal=causal, mask=mask, q_segment_ids=q_seg,
                             kv_segment_ids=kv_seg, kv_lengths=kv_lengths, scale=scale)
    if implementation == "blockwise":
        if mask is not None:   # a dense mask has its own layout: left to XLA's partitioner
            return blockwise_attention(q, k, v, causal=causal, mask=mask, q_segment_ids=q_seg,
                                       kv_segment_ids=kv_seg, kv_lengths=kv_lengths, scale=scale)
        kernel = lambda q, k, v, qs, ks, lens: blockwise_attention(
            q, k, v, causal=causal, q_segment_ids=qs, kv_segment_ids=ks, kv_lengths=lens,
            scale=scale)
        return per_shard(kernel, q, k, v, q_seg, kv_seg, kv_lengths)
    if implementation in ("pallas", "pallas_tpu"):
        if mask is not None:
            raise ValueError(
                f"implementation={implementation!r} does not take a dense `mask`: express it as "
                "causal, segment_ids or kv_lengths, or use implementation='blockwise' or 'xla'.")
        q_seg, kv_seg = _fold_lengths_into_segments(q, k, q_seg, kv_seg, kv_lengths)
        if implementation == "pallas":
            from jaxnets.kernels.flash_attention import flash_attention as kernel_fn  # delays Pallas + its Triton backend (~0.2 s) to first use
        else:
            from jaxnets.kernels.tpu_attention import tpu_flash_attention as kernel_fn  # delays the TPU Pallas ops (~0.3 s): TPU only
        # Compiled for the platform the program is for (interpret mode elsewhere, for tests).
        chip = {"pallas": "gpu", "pallas_tpu": "tpu"}[implementation]
        interpret = sharding.current_platform() != chip
        kernel = lambda q, k, v, qs, ks, lens: kernel_fn(
            q, k, v, causal=causal, q_segment_ids=qs, kv_segment_ids=ks, scale=scale,
            interpret=interpret)
        return per_shard(kernel, q, k, v, q_seg, kv_seg, None)
    if implementation == "native":
        if not causal or mask is not None or q_seg is not None or kv_lengths is not None \
                or not native.supported(q, k, v):
            raise ValueError(
                "implementation='native' is causal self-attention only, without mask, segment_ids "
                "or kv_lengths, float32 q, k, v of one length (at most "
                f"{native.MAX_LEN}), head_dim a multiple of 16, and a built native library; got "
                f"q {q.shape} {q.dtype}, k {k.shape}, causal={causal}. Use 'xla' or 'blockwise'.")
        kernel = lambda q, k, v, *_: native.causal_attention(q, k, v, scale=scale,
                                                             threads=native_threads)
        return per_shard(kernel, q, k, v, None, None, None)
    if implementation == "cudnn":
        return _cudnn_attention(q, k, v, causal=causal, mask=mask, q_segment_ids=q_seg,
                                kv_segment_ids=kv_seg, kv_lengths=kv_lengths, scale=scale)
    raise ValueError(f"Unknown attention implementation {implementation!r}; "
                     f"choose one of {', '.join(IMPLEMENTATIONS)}.")


def per_shard(kernel, q, k, v, q_seg, kv_seg, kv_lengths):
    """`kernel(q, k, v, q_seg, kv_seg, kv_lengths)` on each device's shard, inside shard_map.

    Under a mesh set with `jax.set_mesh` (the trainer's, or a researcher's; the rules of
    `nnx.logical_axis_rules`, else jaxnets.parallel.sharding.DEFAULT_RULES) the batch is split
    over the data axes and heads over "tensor". Attention is independent per example and per head, so
    every device runs the kernel on its own block: no communication. A custom kernel is opaque
    to XLA's partitioner, which would otherwise all-gather q, k and v onto every device (Auto
    mesh) or refuse (Explicit mesh). An axis that does not divide its dimension stays whole.
    Outside a mesh context, or on one device, the kernel is called directly.
    """
    mesh, _ = sharding.current()
    if mesh is None or mesh.size == 1:
        return kernel(q, k, v, q_seg, kv_seg, kv_lengths)
    size = lambda axes: math.prod(mesh.shape[a] for a in axes)
    batch, heads = sharding.mesh_axes_of("batch"), sharding.mesh_axes_of("heads")
    if q.shape[0] % size(batch):
        batch = ()
    if q.shape[2] % size(heads) or k.shape[2] % size(heads):
        heads = ()
    b = batch if len(batch) > 1 else (batch[0] if batch else None)
    h = heads if len(heads) > 1 else (heads[0] if heads else None)
    qkv = P(b, None, h, None)
    args, specs = [q, k, v], [qkv, qkv, qkv]
    for extra, spec in ((q_seg, P(b, None)), (kv_seg, P(b, None)), (kv_lengths, P(b))):
        if extra is not None:
            args.append(extra)
            specs.append(spec)
    present = [x is not None for x in (q_seg, kv_seg, kv_lengths)]

    def body(q, k, v, *rest):
        rest = iter(rest)
        q_seg, kv_seg, lengths = (next(rest) if p else None for p in present)
        return kernel(q, k, v, q_seg, kv_seg, lengths)

    return jax.shard_map(body, in_specs=tuple(specs), out_specs=qkv, check_vma=False)(*args)


def choose_implementation(q, k, v, *, mask=None, segment_ids=None, causal=False,
                          kv_lengths=None) -> str:
    """The fastest implementation that honours these inputs on the platform the program is
    for (`sharding.current_platform()`: a TPU slice's when compiled ahead of time for one)."""
    backend = sharding.current_platform()
    if backend == "tpu":
        from jaxnets.kernels.tpu_attention import supports  # delays the TPU Pallas ops (~0.3 s): TPU only
        return "pallas_tpu" if mask is None and supports(q, k) else "xla"
    if backend == "gpu":
        half = q.dtype in (jnp.bfloat16, jnp.float16)
        if half and mask is None and segment_ids is None and q.shape[-1] <= 128 \
                and q.shape[-1] % 8 == 0:
            return "cudnn"
        if mask is None and q.shape[-1] <= 256:
            return "pallas"
        return "xla"
    if causal and mask is None and segment_ids is None and kv_lengths is None:
        if native.enabled() and native.supported(q, k, v):
            return "native"
    logits = q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1]
    return "xla" if logits <= _XLA_MAX_LOGITS_CPU else "blockwise"


def _check_inputs(q, k, v, mask, segment_ids, kv_lengths):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError("q, k, v must be [batch, seq, heads, head_dim]; got shapes "
                         f"{q.shape}, {k.shape}, {v.shape}.")
    b, tq, hq, d = q.shape
    _, tk, hkv, _ = k.shape
    if k.shape[0] != b or v.shape[:3] != k.shape[:3] or k.shape[-1] != d:
        raise ValueError(f"Incompatible q {q.shape}, k {k.shape}, v {v.shape}: batch, key "
                         "length, kv heads and q/k head_dim must agree.")
    if hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} key/value heads.")
    if mask is not None:
        shape = jnp.shape(mask)
        full = (b, hq, tq, tk)
        if len(shape) > 4 or any(s not in (1, f) for s, f in zip(shape[::-1], full[::-1])):
            raise ValueError(f"mask of shape {shape} does not broadcast to [B, Hq, Tq, Tk] = {full}.")
    if kv_lengths is not None and jnp.shape(kv_lengths) != (b,):
        raise ValueError(f"kv_lengths must have shape ({b},), got {jnp.shape(kv_lengths)}.")
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, (tuple, list)):
        q_seg, kv_seg = segment_ids
    else:
        if tq != tk:
            raise ValueError("A single segment_ids array needs Tq == Tk; pass "
                             "(q_segment_ids, kv_segment_ids) for cross-attention.")
        q_seg = kv_seg = segment_ids
    if jnp.shape(q_seg) != (b, tq) or jnp.shape(kv_seg) != (b, tk):
        raise ValueError(f"segment ids must be [B, Tq] = {(b, tq)} and [B, Tk] = {(b, tk)}; got "
                         f"{jnp.shape(q_seg)} and {jnp.shape(kv_seg)}.")
    return jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32)


def _fold_lengths_into_segments(q, k, q_seg, kv_seg, kv_lengths):
    """kv_lengths as segment ids: padded keys get id -1, which no query (ids >= 0) has."""
    if kv_lengths is None:
        return q_seg, kv_seg
    b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    if q_seg is None:
        q_seg = jnp.zeros((b, tq), jnp.int32)
        kv_seg = jnp.zeros((b, tk), jnp.int32)
    valid = jnp.arange(tk)[None, :] < jnp.asarray(kv_lengths)[:, None]
    return q_seg, jnp.where(valid, kv_seg, -1)


def _cudnn_attention(q, k, v, *, causal, mask, q_segment_ids, kv_segment_ids, kv_lengths, scale):
    if sharding.current_platform() != "gpu":
        raise ValueError("implementation='cudnn' needs an NVIDIA GPU (the default backend is "
                         f"{sharding.current_platform()!r}); use 'blockwise' or 'xla' here.")
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"implementation='cudnn' takes float16/bfloat16 inputs, got {q.dtype}.")
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError("implementation='cudnn' with causal=True needs Tq == Tk (its causal "
                         "alignment differs from ours otherwise); pass a dense mask instead.")
    if q_segment_ids is not None:
        # cuDNN via jax.nn has no segment ids: honour them as a dense mask.
        seg = (q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :])
        mask = seg if mask is None else mask & seg
    lengths = None if kv_lengths is None else jnp.asarray(kv_lengths, jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=causal,
                                        key_value_seq_lengths=lengths, implementation="cudnn")


def reference_attention_numpy(q, k, v, *, causal=False, mask=None, segment_ids=None,
                              kv_lengths=None, scale=None):
    """float64 NumPy version of the formula, for tests and benchmark checks."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    k = np.repeat(k, hq // hkv, axis=2)
    v = np.repeat(v, hq // hkv, axis=2)
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    allowed = np.ones((b, hq, tq, tk), bool)
    if causal:
        allowed &= np.tril(np.ones((tq, tk), bool))
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask, bool), allowed.shape)
    if segment_ids is not None:
        qs, ks = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids,) * 2
        allowed &= (np.asarray(qs)[:, None, :, None] == np.asarray(ks)[:, None, None, :])
    if kv_lengths is not None:
        allowed &= np.arange(tk)[None, None, None, :] < np.asarray(kv_lengths)[:, None, None, None]
    logits = np.where(allowed, logits, -np.inf)
    row_max = logits.max(-1, keepdims=True)
    weights = np.where(allowed, np.exp(logits - np.where(np.isfinite(row_max), row_max, 0)), 0)
    total = weights.sum(-1, keepdims=True)
    probs = weights / np.where(total == 0, 1, total)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


class MultiHeadAttention(nnx.Module):
    """Q = x W^Q, K = c W^K, V = c W^V split into heads, attention per head, mixed by W^O.

    Self-attention: `mha(x)`; masked self-attention: `mha(x, causal=True)`; cross-attention:
    `mha(x, context)` (queries from x, keys and values from the encoder output). Masks and
    `implementation` go to `dot_product_attention` unchanged.

    KV cache (autoregressive decoding): `mha(x, cache=c, cache_index=i)` with
    c = mha.init_cache(batch, max_len) writes this call's keys/values at positions i.. of the
    cache, attends causally over positions <= i + t, and returns (out, new_cache).
    For cross-attention, `kv = mha.project_kv(context)` once and `mha(x, kv=kv)` every step.
    Set `sow_weights = True` to record the probabilities [B, H, Tq, Tk] as an nnx.Intermediate
    named "attention_weights" (for plots; layer loops only, not scan_layers).
    """

    sow_weights = False

    def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
                 head_dim: int | None = None, context_features: int | None = None,
                 use_bias: bool = True, implementation: str = "auto", rotary_base=None, dtype=None,
                 lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads or num_heads
        self.head_dim = head_dim or d_model // num_heads
        self.implementation = implementation
        self.native_threads = lowering.native_threads
        self.rotary_base = rotary_base   # rotate q and k by their positions (nn/rotary.py)
        # Logical axes: projections split by head over "tensor" (Megatron: no communication
        # inside attention), model width over "fsdp".
        dense = lambda i, o, axes: Linear(i, o, axes=axes, use_bias=use_bias, dtype=dtype,
                                          dot_general=lowering.dot_general, rngs=rngs)
        kv_in = context_features or d_model
        self.query = dense(d_model, num_heads * self.head_dim, ("embed", "heads"))
        self.key = dense(kv_in, self.num_kv_heads * self.head_dim, ("embed", "kv_heads"))
        self.value = dense(kv_in, self.num_kv_heads * self.head_dim, ("embed", "kv_heads"))
        self.out = dense(num_heads * self.head_dim, d_model, ("heads", "embed"))

    def project_kv(self, context):
        split = lambda y: constrain(y.reshape(y.shape[:2] + (self.num_kv_heads, self.head_dim)),
                                    ("batch", None, "kv_heads", None))
        return split(self.key(context)), split(self.value(context))

    def init_cache(self, batch: int, max_len: int, dtype=jnp.float32):
        shape = (batch, max_len, self.num_kv_heads, self.head_dim)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def __call__(self, x, context=None, *, causal=False, mask=None, segment_ids=None,
                 kv_lengths=None, kv=None, cache=None, cache_index=None, positions=None):
        """`positions` ([T] or [B, T]; default arange(T), offset by `cache_index` when
        decoding) place queries and keys for rotary attention; ignored without it."""
        b, t, _ = x.shape
        q = constrain(self.query(x).reshape(b, t, self.num_heads, self.head_dim),
                      ("batch", None, "heads", None))
        if kv is None:
            kv = self.project_kv(x if context is None else context)
        k, v = kv
        if self.rotary_base is not None:
            if context is not None:
                raise ValueError("Rotary positions are for self-attention (q and k share positions).")
            if positions is None:
                positions = jnp.arange(t) + (0 if cache_index is None else cache_index)
            q = apply_rotary(q, positions, base=self.rotary_base)
            k = apply_rotary(k, positions, base=self.rotary_base)
        if cache is not None:
            if context is not None or causal or mask is not None:
                raise ValueError("A KV cache is for causal self-attention: pass only x, cache and "
                                 "cache_index (the causal offset mask is built here).")
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype),
                                                    cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype),
                                                    cache_index, axis=1)
            cache = {"k": k, "v": v}
            # Query i (absolute position cache_index + i) sees cached keys j <= its position.
            mask = (jnp.arange(k.shape[1])[None, :] <= cache_index + jnp.arange(t)[:, None])
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        y = dot_product_attention(q, k, v, causal=causal, mask=mask, segment_ids=segment_ids,
                                  kv_lengths=kv_lengths, implementation=self.implementation,
                                  native_threads=self.native_threads)
        if self.sow_weights:  # for attention-map plots; costs a second, plain computation
            q_seg, kv_seg = _check_inputs(q, k, v, mask, segment_ids, kv_lengths)
            mask4 = None if mask is None else jnp.reshape(mask, (1,) * (4 - jnp.ndim(mask)) + jnp.shape(mask))
            probs = attention_probabilities(q, k, causal=causal, mask=mask4, q_segment_ids=q_seg,
                                            kv_segment_ids=kv_seg, kv_lengths=kv_lengths,
                                            scale=self.head_dim ** -0.5)
            self.sow(nnx.Intermediate, "attention_weights",
                     probs.reshape(b, self.num_heads, t, k.shape[1]))
        y = self.out(y.reshape(b, t, self.num_heads * self.head_dim))
        return y if cache is None else (y, cache)
