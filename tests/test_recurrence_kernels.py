"""jaxnets.kernels.lstm_recurrence and gru_recurrence: the native recurrences (every ISA build,
both thread modes, padding, both directions) against a float64 reference of the course's
equations, and how the recurrent layers pick them (on CPU, per device's rows under a mesh)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxnets.kernels import gru_recurrence, lstm_recurrence, native
from jaxnets.nn.recurrent import GRU, LSTM, SimpleRNN

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU kernel")
KERNELS = {"lstm": lstm_recurrence, "gru": gru_recurrence}
TARGET = {"lstm": "jaxnets_lstm_recurrence_LstmForward", "gru": "jaxnets_gru_recurrence_GruForward"}


def needs_kernel():
    if native._compiler() is None:
        pytest.skip("no C++ compiler: no native kernel on this machine")


def lstm_step(w_h, b, xp_t, carry, extras):
    """The course's LSTM: gates (i, f, g, o) of xp_t + b + h W_h."""
    h, c = carry
    i, f, g, o = jnp.split(xp_t + b + h @ w_h, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return (jax.nn.sigmoid(o) * jnp.tanh(c), c)


def gru_step(w_h, b, xp_t, carry, extras):
    """GRU, reset after the product (cuDNN/PyTorch), the course's update h + z (n - h)."""
    (h,), (b_hn,) = carry, extras
    xr, xz, xn = jnp.split(xp_t + b, 3, axis=-1)
    hr, hz, hn = jnp.split(h @ w_h, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * (hn + b_hn))
    return (h + z * (n - h),)


STEPS = {"lstm": lstm_step, "gru": gru_step}


def reference(kind, w_h, b, xp, mask, carry, extras, reverse):
    """Step by step in float64 (jnp, differentiable); at a padded step the carry passes and
    the output is 0."""
    ys = [None] * xp.shape[0]
    for t in (reversed(range(xp.shape[0])) if reverse else range(xp.shape[0])):
        new = STEPS[kind](w_h, b, xp[t], carry, extras)
        keep = mask[t][:, None] > 0
        carry = tuple(jnp.where(keep, n, c) for n, c in zip(new, carry))
        ys[t] = jnp.where(keep, new[0], 0.0)
    return jnp.stack(ys), carry


def case(kind, t, b, h, seed=0, masked=True):
    """(w_h, b, xp, mask, carry, extras) in float64, and cotangents of (ys, carry)."""
    rng = np.random.default_rng(seed)
    gates = {"lstm": 4, "gru": 3}[kind]
    w_h = rng.normal(size=(h, gates * h)) * (1.5 / np.sqrt(h))
    bias = rng.normal(size=(gates * h,)) * 0.5
    xp = rng.normal(size=(t, b, gates * h))
    carry = tuple(rng.normal(size=(b, h)) * 0.5 for _ in range({"lstm": 2, "gru": 1}[kind]))
    extras = (rng.normal(size=(h,)) * 0.5,) if kind == "gru" else ()
    mask = (rng.uniform(size=(t, b)) > 0.3).astype(np.float64) if masked else np.ones((t, b))
    if masked and b > 1:
        mask[:, -1] = 0.0          # one row padded throughout: its carry passes unchanged
    cotangents = (rng.normal(size=(t, b, h)), tuple(rng.normal(size=(b, h)) for _ in carry))
    return (w_h, bias, xp, mask, carry, extras), cotangents


def check(kind, run, args, cotangents, reverse):
    """Outputs, final carries and the gradients of <(ys, carry), cotangents> against float64."""
    def loss(fn, w_h, b, xp, carry, extras, mask):
        ys, carry = fn(w_h, b, xp, mask, carry, extras)
        weigh = lambda a, ct: jnp.sum(a * jnp.asarray(ct, a.dtype))   # noqa: E731
        return weigh(ys, cotangents[0]) + sum(weigh(c, ct) for c, ct in zip(carry, cotangents[1]))

    w_h, b, xp, mask, carry, extras = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), args)
    got = jax.jit(run)(w_h, b, xp, mask, carry, extras)
    grad = jax.jit(jax.grad(lambda *a: loss(run, *a), argnums=range(5)))
    got_grads = grad(w_h, b, xp, carry, extras, mask)
    with jax.enable_x64(True):
        w_h, b, xp, mask, carry, extras = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), args)
        ref = lambda w_h, b, xp, mask, carry, extras: reference(kind, w_h, b, xp, mask, carry, extras, reverse)
        want = ref(w_h, b, xp, mask, carry, extras)
        want_grads = jax.grad(lambda *a: loss(ref, *a), argnums=range(5))(w_h, b, xp, carry, extras, mask)
        want, want_grads = jax.tree.map(np.asarray, (want, want_grads))
    for path, g, w in zip(("ys", "carry"), got, want):
        for a, e in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
            np.testing.assert_allclose(np.asarray(a, np.float64), e, atol=2e-5, rtol=2e-5, err_msg=path)
    for name, g, w in zip(("W_h", "b", "xp", "carry", "extras"), got_grads, want_grads):
        for a, e in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
            scale = max(1.0, float(np.abs(e).max()))
            np.testing.assert_allclose(np.asarray(a, np.float64), e, atol=2e-5 * scale, rtol=1e-4,
                                       err_msg=f"d{name}")


@cpu_only
@pytest.mark.parametrize("kind", sorted(KERNELS))
@pytest.mark.parametrize("isa", sorted(native.ISAS))
@pytest.mark.parametrize("t,b,h,reverse", [
    (6, 5, 16, False),     # 5 rows: a full register tile and a remainder, one hidden vector
    (5, 9, 48, True),      # 3 hidden vectors of the AVX-512 build (fewer than a backward tile)
    (1, 1, 32, False),     # a single step of a single row
    (4, 3, 80, True),      # 5 vectors: one backward tile of 4 and one single
])
def test_each_build_matches_float64_reference(kind, isa, t, b, h, reverse):
    needs_kernel()
    if isa not in native.runnable_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    args, cts = case(kind, t, b, h, seed=t * b + h)
    check(kind, lambda *a: KERNELS[kind].scan(*a, reverse=reverse, isa=isa), args, cts, reverse)


@cpu_only
@pytest.mark.parametrize("kind", sorted(KERNELS))
@pytest.mark.parametrize("threads", [0, 1])
def test_both_thread_modes_without_padding(kind, threads):
    needs_kernel()
    args, cts = case(kind, 7, 13, 32, seed=3, masked=False)
    check(kind, lambda w, b, xp, m, c, e: KERNELS[kind].scan(w, b, xp, None, c, e, threads=threads),
          args, cts, False)


@cpu_only
@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_layers_take_the_kernel_on_cpu_and_match_the_xla_loop(kind, monkeypatch):
    """LSTM(...) / GRU(...) with a hidden size the kernel takes lower to it, and give what the
    XLA loop gives (JAXNETS_NATIVE_KERNELS=0); other sizes and cells keep the loop."""
    needs_kernel()
    x = jax.random.normal(jax.random.key(0), (3, 9, 8))
    lengths = jnp.array([9, 4, 1])
    cls = {"lstm": LSTM, "gru": GRU}[kind]
    layer = cls(8, 32, rngs=nnx.Rngs(0), reverse=True)
    # Fresh functions per use: jit caches traces by function, and the choice is made tracing.
    run = lambda: lambda m, x: m(x, lengths=lengths)[0]
    lowered = lambda m: jax.jit(run()).lower(m, x).as_text()
    grad = lambda m, x: jax.jit(jax.grad(lambda m, x: jnp.sum(jnp.sin(run()(m, x))), argnums=(0, 1)))(m, x)
    assert TARGET[kind] in lowered(layer)
    forced = cls(8, 32, rngs=nnx.Rngs(0))
    forced.implementation = "xla"                                           # as `jaxnets export` sets
    assert TARGET[kind] not in lowered(forced)
    forced.implementation = "native"
    with pytest.raises(ValueError, match="must be one of"):
        lowered(forced)
    assert TARGET[kind] not in lowered(cls(8, 20, rngs=nnx.Rngs(0)))       # 20 % 16 != 0
    assert not any(t in lowered(SimpleRNN(8, 32, rngs=nnx.Rngs(0))) for t in TARGET.values())
    if kind == "gru":   # the course's GRU (reset before the product) keeps the XLA loop
        assert TARGET[kind] not in lowered(GRU(8, 32, reset_after=False, rngs=nnx.Rngs(0)))
    native_out, native_grads = jax.jit(run())(layer, x), grad(layer, x)
    monkeypatch.setenv("JAXNETS_NATIVE_KERNELS", "0")
    assert TARGET[kind] not in lowered(layer)
    xla_out, xla_grads = jax.jit(run())(layer, x), grad(layer, x)
    np.testing.assert_allclose(native_out, xla_out, atol=1e-5, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(native_grads), jax.tree.leaves(xla_grads)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@cpu_only
@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_each_device_runs_its_own_rows_under_a_mesh(kind):
    """Batch split over 4 devices: the kernel runs inside shard_map on each device's rows (no
    all-gather of the projection), and outputs and gradients equal the one-device ones."""
    needs_kernel()
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests force 8 CPU devices)")
    layer = {"lstm": LSTM, "gru": GRU}[kind](8, 16, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (8, 5, 8))
    loss = lambda m, x: jnp.sum(jnp.cos(m(x)[0]))
    want = jax.jit(jax.value_and_grad(loss))(layer, x)
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))   # the trainer's
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
        step = jax.jit(jax.value_and_grad(loss))
        text = step.lower(layer, xs).as_text()
        got = step(layer, xs)
    assert TARGET[kind] in text and "manual" in text      # inside the per-device (manual) region
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)


@cpu_only
@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_refuses_what_it_cannot_run(kind):
    needs_kernel()
    args, _ = case(kind, 3, 2, 20, masked=False)
    w_h, b, xp, _, carry, extras = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), args)
    with pytest.raises(ValueError, match="unsupported"):
        KERNELS[kind].scan(w_h, b, xp, None, carry, extras)                  # 20 % 16 != 0
    args, _ = case(kind, 3, 2, 16, masked=False)
    w_h, b, xp, _, carry, extras = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), args)
    with pytest.raises(ValueError, match="unsupported"):
        KERNELS[kind].scan(w_h, b, xp, None, carry, extras)


def test_portable_build_steps_aside(monkeypatch):
    """The layers take the kernels only with a vector build (as the attention kernel)."""
    monkeypatch.setenv("JAXNETS_NATIVE_ISA", "portable")
    assert not lstm_recurrence.enabled() and not gru_recurrence.enabled()
    monkeypatch.setenv("JAXNETS_NATIVE_ISA", "")
    monkeypatch.setenv("JAXNETS_NATIVE_KERNELS", "0")
    assert not lstm_recurrence.enabled() and not gru_recurrence.enabled()
