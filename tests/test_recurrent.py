"""Recurrent layers against a float64 NumPy implementation of the course's equations.

Gradients are checked against central finite differences of the NumPy float64 forward
(directional derivatives), with the JAX side run in float64 so the tolerance is tight.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnets.nn.recurrent import (GRU, LSTM, Bidirectional, GRUCell, LSTMCell, SimpleRNN,
                                  StackedRNN)

B, T, D, H = 3, 7, 4, 5
KINDS = ["rnn", "lstm", "gru_course", "gru_reset_after"]


def make(kind, *, dtype=jnp.float32, unroll=1, reverse=False, seed=0):
    kw = dict(rngs=nnx.Rngs(seed), unroll=unroll, reverse=reverse, param_dtype=dtype)
    if kind == "rnn":
        layer = SimpleRNN(D, H, **kw)
    elif kind == "lstm":
        layer = LSTM(D, H, forget_bias=1.0, **kw)
    else:
        layer = GRU(D, H, reset_after=kind == "gru_reset_after", **kw)
    # Random biases so every bias path is exercised.
    rng = np.random.default_rng(seed + 1)
    cell = layer.cell
    cell.bias[...] = jnp.asarray(rng.normal(size=cell.bias.shape), dtype)
    if hasattr(cell, "recurrent_bias"):
        cell.recurrent_bias[...] = jnp.asarray(rng.normal(size=(H,)), dtype)
    return layer


def np_params(layer):
    c = layer.cell
    p = {"wx": c.input_kernel[...], "wh": c.recurrent_kernel[...], "b": c.bias[...]}
    if hasattr(c, "recurrent_bias"):
        p["bhn"] = c.recurrent_bias[...]
    return {k: np.asarray(v, np.float64) for k, v in p.items()}


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_step(kind, p, x, h, c):
    """One step of the course's equations, gate by gate (no fused tricks)."""
    g = lambda w, k: w[:, k * H:(k + 1) * H]          # noqa: E731
    bb = lambda k: p["b"][k * H:(k + 1) * H]          # noqa: E731
    wx, wh = p["wx"], p["wh"]
    if kind == "rnn":
        h = np.tanh(x @ wx + h @ wh + p["b"])
        return h, c
    if kind == "lstm":
        i = sig(x @ g(wx, 0) + h @ g(wh, 0) + bb(0))
        f = sig(x @ g(wx, 1) + h @ g(wh, 1) + bb(1))
        cc = np.tanh(x @ g(wx, 2) + h @ g(wh, 2) + bb(2))
        o = sig(x @ g(wx, 3) + h @ g(wh, 3) + bb(3))
        c = f * c + i * cc
        return o * np.tanh(c), c
    r = sig(x @ g(wx, 0) + h @ g(wh, 0) + bb(0))
    z = sig(x @ g(wx, 1) + h @ g(wh, 1) + bb(1))
    if kind == "gru_course":
        n = np.tanh(x @ g(wx, 2) + (r * h) @ g(wh, 2) + bb(2))
    else:
        n = np.tanh(x @ g(wx, 2) + bb(2) + r * (h @ g(wh, 2) + p["bhn"]))
    return (1 - z) * h + z * n, c


def np_run(kind, p, x, lengths, h0, c0, reverse=False):
    """Per-example loop over its own valid steps; outputs at padded steps are 0."""
    ys = np.zeros(x.shape[:2] + (H,))
    hs, cs = [], []
    for b in range(x.shape[0]):
        h, c = h0[b], c0[b]
        steps = range(lengths[b])
        for t in (reversed(steps) if reverse else steps):
            h, c = np_step(kind, p, x[b, t], h, c)
            ys[b, t] = h
        hs.append(h)
        cs.append(c)
    return ys, np.stack(hs), np.stack(cs)


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, D))
    lengths = np.array([T, 4, 1])
    h0, c0 = rng.normal(size=(B, H)) * 0.5, rng.normal(size=(B, H)) * 0.5
    return x, lengths, h0, c0


def state_of(kind, h0, c0):
    return (h0, c0) if kind == "lstm" else (h0,)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_outputs_and_state_match_numpy(kind, reverse):
    layer = make(kind, unroll=3, reverse=reverse)
    x, lengths, h0, c0 = data()
    ys, state = layer(jnp.asarray(x, jnp.float32), lengths=lengths,
                      initial_state=tuple(jnp.asarray(s, jnp.float32) for s in state_of(kind, h0, c0)))
    ys_ref, h_ref, c_ref = np_run(kind, np_params(layer), x, lengths, h0, c0, reverse)
    np.testing.assert_allclose(ys, ys_ref, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(state[0], h_ref, atol=2e-5, rtol=1e-5)
    if kind == "lstm":
        np.testing.assert_allclose(state[1], c_ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_numpy_finite_differences(kind):
    """d/deps L(theta + eps*u) from the NumPy float64 forward == <grad L, u> from JAX."""
    x, lengths, h0, c0 = data(1)
    rng = np.random.default_rng(2)
    wy, wh = rng.normal(size=(B, T, H)), rng.normal(size=(B, H))   # loss weights

    def np_loss(p, x, h0, c0):
        ys, hT, _ = np_run(kind, p, x, lengths, h0, c0)
        return np.sum(wy * ys) + np.sum(wh * hT)

    with jax.enable_x64(True):
        layer = make(kind, dtype=jnp.float64)
        graphdef, params = nnx.split(layer)

        def loss(params, x, h0, c0):
            ys, st = nnx.merge(graphdef, params)(x, lengths=lengths, initial_state=state_of(kind, h0, c0))
            return jnp.sum(wy * ys) + jnp.sum(wh * st[0])

        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(params, x, h0, c0)
        p = np_params(layer)
        g_cell = {"wx": grads[0]["cell"]["input_kernel"][...], "wh": grads[0]["cell"]["recurrent_kernel"][...],
                  "b": grads[0]["cell"]["bias"][...]}
        if "bhn" in p:
            g_cell["bhn"] = grads[0]["cell"]["recurrent_bias"][...]
    args = {"x": x, "h0": h0, "c0": c0}
    g_args = {"x": grads[1], "h0": grads[2], "c0": grads[3]}
    eps = 1e-6
    for name in list(p) + list(args):
        u = rng.normal(size=(p.get(name, args.get(name))).shape)
        plus = {k: v.copy() for k, v in p.items()}, dict(args)
        minus = {k: v.copy() for k, v in p.items()}, dict(args)
        if name in p:
            plus[0][name] += eps * u
            minus[0][name] -= eps * u
            g = g_cell[name]
        else:
            plus[1][name] = args[name] + eps * u
            minus[1][name] = args[name] - eps * u
            g = g_args[name]
        fd = (np_loss(plus[0], **plus[1]) - np_loss(minus[0], **minus[1])) / (2 * eps)
        np.testing.assert_allclose(np.sum(np.asarray(g) * u), fd, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru_course"])
def test_padding_changes_nothing_valid(kind):
    """Garbage in padded steps: same valid outputs, same final state, zero input gradient."""
    layer = make(kind, unroll=2)
    x, lengths, _, _ = data(3)
    x_garbage = x.copy()
    for b, n in enumerate(lengths):
        x_garbage[b, n:] = 1e3 * np.random.default_rng(b).normal(size=(T - n, D))
    run = nnx.jit(lambda layer, x, lengths=None, mask=None: layer(x, lengths=lengths, mask=mask))
    ys1, s1 = run(layer, jnp.asarray(x, jnp.float32), lengths=lengths)
    ys2, s2 = run(layer, jnp.asarray(x_garbage, jnp.float32), mask=np.arange(T)[None] < lengths[:, None])
    valid = (np.arange(T)[None] < lengths[:, None])[..., None]
    np.testing.assert_array_equal(np.where(valid, ys1, 0), np.where(valid, ys2, 0))
    np.testing.assert_array_equal(np.asarray(ys2)[~valid[..., 0]], 0.0)
    for a, b in zip(s1, s2):
        np.testing.assert_array_equal(a, b)
    # A padded example alone, unpadded, gives the same state.
    _, sb = run(layer, jnp.asarray(x[1:2, :lengths[1]], jnp.float32))
    np.testing.assert_allclose(sb[0][0], s1[0][1], atol=1e-6)
    gx = nnx.jit(nnx.grad(lambda x, layer: jnp.sum(layer(x, lengths=lengths)[0]) + jnp.sum(layer(x, lengths=lengths)[1][0])))(
        jnp.asarray(x_garbage, jnp.float32), layer)
    np.testing.assert_array_equal(np.asarray(gx)[~valid[..., 0]], 0.0)


def flip_within(x, lengths):
    out = np.array(x)
    for b, n in enumerate(lengths):
        out[b, :n] = out[b, :n][::-1]
    return out


@pytest.mark.parametrize("kind", ["lstm", "gru_reset_after"])
def test_bidirectional_backward_is_forward_on_reversed_input(kind):
    fwd, bwd = make(kind, seed=0), make(kind, seed=1, reverse=True)
    bi = Bidirectional(fwd, bwd)
    x, lengths, _, _ = data(4)
    y, (s_f, s_b) = bi(jnp.asarray(x, jnp.float32), lengths=lengths)
    # Same parameters as `bwd`, run forward over each sequence reversed within its length.
    twin = make(kind, seed=1)
    y_twin, s_twin = twin(jnp.asarray(flip_within(x, lengths), jnp.float32), lengths=lengths)
    np.testing.assert_allclose(y[..., H:], flip_within(np.asarray(y_twin), lengths), atol=1e-6)
    np.testing.assert_allclose(y[..., :H], fwd(jnp.asarray(x, jnp.float32), lengths=lengths)[0], atol=1e-6)
    for a, b in zip(s_b, s_twin):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_state_carries_across_chunks_and_unroll_is_invisible(kind):
    x = jnp.asarray(data(5)[0], jnp.float32)
    full, s_full = make(kind, unroll=1)(x)
    layer = make(kind, unroll=4)        # 4 does not divide T = 7
    a, s_a = layer(x[:, :3])
    b, s_b = layer(x[:, 3:], initial_state=s_a)
    np.testing.assert_allclose(jnp.concatenate([a, b], 1), full, atol=1e-6)
    for u, v in zip(s_b, s_full):
        np.testing.assert_allclose(u, v, atol=1e-6)


def test_single_step_cell_call_matches_layer():
    for cell in [LSTMCell(D, H, rngs=nnx.Rngs(0)), GRUCell(D, H, reset_after=False, rngs=nnx.Rngs(0))]:
        x = jnp.asarray(data(6)[0], jnp.float32)
        carry = cell.initial_state(B)
        outs = []
        for t in range(T):
            carry, y = cell(carry, x[:, t])
            outs.append(y)
        from jaxnets.nn.recurrent import RNN
        ys, state = RNN(cell)(x)
        np.testing.assert_allclose(jnp.stack(outs, 1), ys, atol=1e-6)
        np.testing.assert_allclose(carry[0], state[0], atol=1e-6)


def test_forget_bias_initialisation():
    cell = LSTMCell(D, H, forget_bias=2.5, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(cell.bias[...], np.r_[np.zeros(H), 2.5 * np.ones(H), np.zeros(2 * H)])


def test_chrono_initialisation():
    """Tallec & Ollivier 2018: b_f = log(u), u ~ U(1, T_max - 1) per unit, b_i = -b_f; the
    candidate and output biases keep bias_init (zeros). Checked against the same draw made
    with NumPy from the uniform variates, and the spread of u against U(1, T_max - 1)."""
    h, t_max = 2000, 60.0
    cell = LSTMCell(D, h, forget_bias="chrono", chrono_max=t_max, rngs=nnx.Rngs(3))
    b = np.asarray(cell.bias[...], np.float64)
    b_i, b_f, b_g, b_o = b[:h], b[h:2 * h], b[2 * h:3 * h], b[3 * h:]
    np.testing.assert_array_equal(b_i, -b_f)
    np.testing.assert_array_equal(b_g, np.zeros(h))
    np.testing.assert_array_equal(b_o, np.zeros(h))
    u = np.exp(b_f)   # the per-unit characteristic times
    assert u.min() >= 1.0 - 1e-6 and u.max() <= t_max - 1.0 + 1e-4
    # U(1, T_max - 1): mean (T_max) / 2, std (T_max - 2) / sqrt(12); 2,000 draws.
    np.testing.assert_allclose(u.mean(), t_max / 2, atol=4 * (t_max - 2) / np.sqrt(12 * h))
    np.testing.assert_allclose(u.std(), (t_max - 2) / np.sqrt(12), rtol=0.06)
    # Kolmogorov-Smirnov distance to the uniform CDF (critical value at 1e-3: 1.95 / sqrt(n)).
    s = np.sort(u)
    cdf = (s - 1.0) / (t_max - 2.0)
    ks = max(np.max(np.arange(1, h + 1) / h - cdf), np.max(cdf - np.arange(h) / h))
    assert ks < 1.95 / np.sqrt(h)
    # The same seed gives the same biases; the kernels are untouched by the option.
    again = LSTMCell(D, h, forget_bias="chrono", chrono_max=t_max, rngs=nnx.Rngs(3))
    np.testing.assert_array_equal(again.bias[...], cell.bias[...])
    plain = LSTMCell(D, h, forget_bias=0.0, rngs=nnx.Rngs(3))
    np.testing.assert_array_equal(plain.input_kernel[...], cell.input_kernel[...])


def test_chrono_needs_its_horizon():
    with pytest.raises(ValueError, match="chrono_max"):
        LSTMCell(D, H, forget_bias="chrono", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="chrono_max"):
        LSTMCell(D, H, chrono_max=50, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="number or 'chrono'"):
        LSTMCell(D, H, forget_bias="chrono_init", chrono_max=50, rngs=nnx.Rngs(0))


def test_stacked_bidirectional_dropout_between_layers():
    net = StackedRNN("gru", D, H, num_layers=2, bidirectional=True, dropout=0.5, rngs=nnx.Rngs(0))
    x = jnp.asarray(data(7)[0], jnp.float32)
    call = nnx.jit(lambda m, x: m(x))
    y, states = call(net, x)
    assert y.shape == (B, T, 2 * H) and len(states) == 2
    # Deterministic evaluation equals composing the layers by hand.
    y1, _ = call(net.layers[0], x)
    y2, _ = call(net.layers[1], y1)
    np.testing.assert_allclose(y, y2, atol=1e-6)
    # Training applies dropout between the layers only: reproducible given the rng, different from eval.
    train = nnx.jit(lambda m, x, key: m(x, train=True, rngs=nnx.Rngs(dropout=key)))
    ya, _ = train(net, x, jax.random.key(1))
    yb, _ = train(net, x, jax.random.key(1))
    np.testing.assert_array_equal(ya, yb)
    assert not np.allclose(ya, y)
