"""jaxnets.kernels.lstm_recurrence: the native LSTM recurrence (every ISA build, both thread
modes, padding, both directions) against a float64 reference of the course's equations, and
how the recurrent layers pick it (on CPU, per device's rows under a mesh)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxnets.kernels import lstm_recurrence, native
from jaxnets.nn.recurrent import LSTM, GRU

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU kernel")
TARGET = "jaxnets_lstm_recurrence_LstmForward"


def needs_kernel():
    if native._compiler() is None:
        pytest.skip("no C++ compiler: no native kernel on this machine")


def reference(w_h, b, xp, mask, h0, c0, reverse):
    """The course's LSTM step by step in float64 (jnp, differentiable): gates (i, f, g, o) of
    xp_t + b + h W_h; at a padded step the carry passes and the output is 0."""
    sig = jax.nn.sigmoid
    h, c, ys = h0, c0, [None] * xp.shape[0]
    for t in (reversed(range(xp.shape[0])) if reverse else range(xp.shape[0])):
        i, f, g, o = jnp.split(xp[t] + b + h @ w_h, 4, axis=-1)
        c_new = sig(f) * c + sig(i) * jnp.tanh(g)
        h_new = sig(o) * jnp.tanh(c_new)
        keep = mask[t][:, None] > 0
        h, c = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
        ys[t] = jnp.where(keep, h_new, 0.0)
    return jnp.stack(ys), h, c


def case(t, b, h, seed=0, masked=True):
    rng = np.random.default_rng(seed)
    w_h = rng.normal(size=(h, 4 * h)) * (1.5 / np.sqrt(h))
    bias = rng.normal(size=(4 * h,)) * 0.5
    xp = rng.normal(size=(t, b, 4 * h))
    h0, c0 = rng.normal(size=(b, h)) * 0.5, rng.normal(size=(b, h)) * 0.5
    mask = (rng.uniform(size=(t, b)) > 0.3).astype(np.float64) if masked else np.ones((t, b))
    if masked and b > 1:
        mask[:, -1] = 0.0          # one row padded throughout: its carry passes unchanged
    cotangents = [rng.normal(size=s) for s in ((t, b, h), (b, h), (b, h))]
    return [w_h, bias, xp, mask, h0, c0], cotangents


def check(run, args, cotangents, reverse):
    """Outputs, final carries and the gradients of <outputs, cotangents> against float64."""
    f32 = [jnp.asarray(a, jnp.float32) for a in args]

    def loss(fn, w_h, b, xp, h0, c0, mask):
        ys, h, c = fn(w_h, b, xp, mask, h0, c0)
        return sum(jnp.sum(o * jnp.asarray(ct, o.dtype)) for o, ct in zip((ys, h, c), cotangents))

    kernel = lambda w_h, b, xp, mask, h0, c0: (lambda ys, s: (ys, *s))(*run(w_h, b, xp, mask, (h0, c0)))
    w_h, b, xp, mask, h0, c0 = f32
    got = jax.jit(kernel)(*f32)
    got_grads = jax.jit(jax.grad(lambda *a: loss(kernel, *a), argnums=range(5)))(w_h, b, xp, h0, c0, mask)
    with jax.enable_x64(True):
        w_h, b, xp, mask, h0, c0 = [jnp.asarray(a, jnp.float64) for a in args]
        ref = lambda w_h, b, xp, mask, h0, c0: reference(w_h, b, xp, mask, h0, c0, reverse)
        want = ref(w_h, b, xp, mask, h0, c0)
        want_grads = jax.grad(lambda *a: loss(ref, *a), argnums=range(5))(w_h, b, xp, h0, c0, mask)
        want, want_grads = jax.tree.map(np.asarray, (want, want_grads))
    for name, g, w in zip(("ys", "h", "c"), got, want):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, atol=2e-5, rtol=2e-5, err_msg=name)
    for name, g, w in zip(("W_h", "b", "xp", "h0", "c0"), got_grads, want_grads):
        scale = max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(np.asarray(g, np.float64), w, atol=2e-5 * scale, rtol=1e-4,
                                   err_msg=f"d{name}")


@cpu_only
@pytest.mark.parametrize("isa", sorted(native.ISAS))
@pytest.mark.parametrize("t,b,h,reverse", [
    (6, 5, 16, False),     # 5 rows: a full register tile and a remainder, one hidden vector
    (5, 9, 48, True),      # 3 hidden vectors of the AVX-512 build (fewer than a backward tile)
    (1, 1, 32, False),     # a single step of a single row
    (4, 3, 80, True),      # 5 vectors: one backward tile of 4 and one single
])
def test_each_build_matches_float64_reference(isa, t, b, h, reverse):
    needs_kernel()
    if isa not in native.runnable_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    args, cts = case(t, b, h, seed=t * b + h)
    check(lambda *a: lstm_recurrence.scan(*a, reverse=reverse, isa=isa), args, cts, reverse)


@cpu_only
@pytest.mark.parametrize("threads", [0, 1])
def test_both_thread_modes_without_padding(threads):
    needs_kernel()
    args, cts = case(7, 13, 32, seed=3, masked=False)
    check(lambda w, b, xp, m, s: lstm_recurrence.scan(w, b, xp, None, s, threads=threads),
          args, cts, False)


@cpu_only
def test_layers_take_the_kernel_on_cpu_and_match_the_xla_loop(monkeypatch):
    """LSTM(...) with a hidden size the kernel takes lowers to it, and gives what the XLA loop
    gives (JAXNETS_NATIVE_KERNELS=0); GRU and unsupported sizes keep the loop."""
    needs_kernel()
    x = jax.random.normal(jax.random.key(0), (3, 9, 8))
    lengths = jnp.array([9, 4, 1])
    layer = LSTM(8, 32, rngs=nnx.Rngs(0), reverse=True)
    # Fresh functions per use: jit caches traces by function, and the choice is made tracing.
    run = lambda: lambda m, x: m(x, lengths=lengths)[0]
    lowered = lambda m: jax.jit(run()).lower(m, x).as_text()
    grad = lambda m, x: jax.jit(jax.grad(lambda m, x: jnp.sum(jnp.sin(run()(m, x))), argnums=(0, 1)))(m, x)
    assert TARGET in lowered(layer)
    assert TARGET not in lowered(LSTM(8, 20, rngs=nnx.Rngs(0)))       # 20 % 16 != 0
    assert TARGET not in lowered(GRU(8, 32, rngs=nnx.Rngs(0)))
    native_out, native_grads = jax.jit(run())(layer, x), grad(layer, x)
    monkeypatch.setenv("JAXNETS_NATIVE_KERNELS", "0")
    assert TARGET not in lowered(layer)
    xla_out, xla_grads = jax.jit(run())(layer, x), grad(layer, x)
    np.testing.assert_allclose(native_out, xla_out, atol=1e-5, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(native_grads), jax.tree.leaves(xla_grads)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@cpu_only
def test_each_device_runs_its_own_rows_under_a_mesh():
    """Batch split over 4 devices: the kernel runs inside shard_map on each device's rows (no
    all-gather of the projection), and outputs and gradients equal the one-device ones."""
    needs_kernel()
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests force 8 CPU devices)")
    layer = LSTM(8, 16, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (8, 5, 8))
    loss = lambda m, x: jnp.sum(jnp.cos(m(x)[0]))
    want = jax.jit(jax.value_and_grad(loss))(layer, x)
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))   # the trainer's
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
        step = jax.jit(jax.value_and_grad(loss))
        text = step.lower(layer, xs).as_text()
        got = step(layer, xs)
    assert TARGET in text and "manual" in text      # inside the per-device (manual) region
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)


@cpu_only
def test_refuses_what_it_cannot_run():
    needs_kernel()
    args, _ = case(3, 2, 20, masked=False)
    w_h, b, xp, mask, h0, c0 = [jnp.asarray(a, jnp.float32) for a in args]
    with pytest.raises(ValueError, match="unsupported"):
        lstm_recurrence.scan(w_h, b, xp, None, (h0, c0))                  # 20 % 16 != 0
    with pytest.raises(ValueError, match="unsupported"):
        lstm_recurrence.scan(*(a.astype(jnp.bfloat16) for a in (w_h, b, xp)), None, (h0, c0))


def test_portable_build_steps_aside(monkeypatch):
    """The layers take the kernel only with a vector build (as the attention kernel)."""
    monkeypatch.setenv("JAXNETS_NATIVE_ISA", "portable")
    assert not lstm_recurrence.enabled()
    monkeypatch.setenv("JAXNETS_NATIVE_KERNELS", "0")
    assert not lstm_recurrence.enabled()
