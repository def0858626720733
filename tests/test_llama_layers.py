"""RMSNorm, rotary positions and SwiGLU against float64 NumPy of their equations; a Llama-style
TransformerLM: rotary relative-position property, KV-cached decoding = full forward, remat
policies give the same gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnets.models.transformer import TransformerLM
from jaxnets.nn.mlp import SwiGLU
from jaxnets.nn.layers import RMSNorm
from jaxnets.nn.rotary import apply_rotary


def test_rms_norm_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 16)).astype(np.float32) * 3 + 1
    norm = RMSNorm(16, epsilon=1e-6, rngs=nnx.Rngs(0))
    scale = rng.standard_normal(16).astype(np.float32)
    norm.scale[...] = scale
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), want, rtol=1e-5, atol=1e-6)


def rotary_numpy(x, positions, base=10000.0):
    """Each pair (i, i + D/2) rotated by the angle p * base^(-2i/D), as a 2x2 rotation matrix."""
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    out = np.empty_like(x)
    for t, p in enumerate(positions):
        for i in range(d // 2):
            theta = p * base ** (-2.0 * i / d)
            rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
            pair = np.stack([x[:, t, :, i], x[:, t, :, i + d // 2]], -1) @ rot.T
            out[:, t, :, i], out[:, t, :, i + d // 2] = pair[..., 0], pair[..., 1]
    return out


def test_rotary_matches_numpy_and_keeps_relative_positions():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 3, 8)).astype(np.float32)
    positions = np.array([0, 1, 2, 7, 30, 1000])
    got = np.asarray(apply_rotary(jnp.asarray(x), jnp.asarray(positions)))
    np.testing.assert_allclose(got, rotary_numpy(x, positions), rtol=1e-4, atol=1e-4)
    # q(p + s) . k(r + s) does not depend on the shift s.
    q, k = x[:1, :1], x[1:, :1]
    dot = lambda s: float(np.sum(rotary_numpy(q, [5 + s]) * rotary_numpy(k, [2 + s])))
    assert dot(0) == pytest.approx(dot(17), abs=1e-9)
    assert dot(0) != pytest.approx(float(np.sum(q * k)), abs=1e-3)   # but it is not a no-op


def test_swiglu_matches_numpy():
    rng = np.random.default_rng(2)
    ff = SwiGLU(8, 12, rngs=nnx.Rngs(0))
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    wg, wu, wd = (np.asarray(m.kernel[...], np.float64) for m in (ff.gate, ff.up, ff.down))
    g = x.astype(np.float64) @ wg
    want = ((g / (1 + np.exp(-g))) * (x @ wu)) @ wd
    np.testing.assert_allclose(np.asarray(ff(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)
    assert ff.gate.bias is None and ff.down.bias is None


def llama(**kw):
    options = dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=48,
                   positions="rotary", norm="rms", mlp="swiglu", use_bias=False, tie_output=False,
                   dropout=0.0)
    return TransformerLM(17, **{**options, **kw}, rngs=nnx.Rngs(0))


def test_llama_cached_decoding_matches_full_forward():
    model = llama()
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 17, (2, 9)))
    full = model(tokens)
    cache = model.init_cache(2, 16)
    steps = []
    for t in range(tokens.shape[1]):
        logits, cache = model.decode_step(cache, tokens[:, t])
        steps.append(logits)
    np.testing.assert_allclose(np.stack(steps, 1), full, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_policies_keep_the_gradients(policy):
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 17, (2, 8)))

    def grads(model):
        loss = lambda m: jnp.mean(m(tokens) ** 2)
        return nnx.state(nnx.grad(loss)(model), nnx.Param)

    plain, remat = llama(scan_layers=True), llama(scan_layers=True, remat_policy=policy)
    for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(remat))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="remat_policy"):
        llama(remat_policy="some")
