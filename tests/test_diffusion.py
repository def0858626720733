"""DDPM mathematics against float64 closed forms and a NumPy transcription of Algorithm 2."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnets import ddpm as dm


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_matches_closed_forms(kind):
    T = 200
    sched = dm.make_schedule(kind, T)
    if kind == "linear":
        betas = 1e-4 * 1000 / T + np.arange(T) * (0.02 - 1e-4) * (1000 / T) / (T - 1)
        abar = np.cumprod(1.0 - betas)
    else:
        # alpha-bar is the closed form f(t)/f(0) wherever the beta clip (0.999) is inactive.
        t = np.arange(1, T + 1) / T
        f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
        abar = f(t) / f(0.0)
        betas = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
        clipped = betas > 0.999
        assert clipped.sum() == 1 and clipped[-1]  # only the last step hits the clip
        betas, abar = betas[:-1], abar[:-1]
    n = len(betas)
    np.testing.assert_allclose(sched.betas[:n], betas, rtol=1e-6, atol=0)
    np.testing.assert_allclose(sched.alphas[:n], 1.0 - betas, rtol=1e-6)
    np.testing.assert_allclose(sched.alpha_bars[:n], abar, rtol=2e-6)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    np.testing.assert_allclose(sched.alpha_bars_prev[:n], abar_prev, rtol=2e-6)
    post = (1.0 - abar_prev) / (1.0 - abar) * betas
    np.testing.assert_allclose(sched.posterior_variance[:n], post, rtol=2e-6, atol=1e-12)
    assert float(sched.posterior_variance[0]) == 0.0   # q(x_0 | x_1, x_0) is a point mass
    assert float(sched.alpha_bars[-1]) < 1e-3          # the chain ends at (nearly) pure noise


def test_q_sample_has_the_forward_marginal_moments():
    sched = dm.make_schedule("linear", 100)
    x0 = jnp.full((20000, 1), 0.7)
    t = jnp.full((20000,), 30)
    xt = np.asarray(dm.q_sample(sched, x0, t, jax.random.normal(jax.random.key(0), x0.shape)))
    abar = float(sched.alpha_bars[30])
    # standard errors of mean / variance with n = 20000 samples are ~0.007 sd / 0.01 var
    assert abs(xt.mean() - np.sqrt(abar) * 0.7) < 5 * np.sqrt((1 - abar) / 20000)
    assert abs(xt.var() - (1 - abar)) < 5 * (1 - abar) * np.sqrt(2 / 20000)


def _numpy_algorithm2(sched, eps_fn, x_T, noises, variance):
    """Float64 transcription of Algorithm 2 with given z_t (noises[i] for index i)."""
    b = np.asarray(sched.betas, np.float64)
    a = 1.0 - b
    abar = np.cumprod(a)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    sig2 = b if variance == "beta" else (1 - abar_prev) / (1 - abar) * b
    x = np.asarray(x_T, np.float64)
    for i in range(len(b) - 1, -1, -1):
        z = noises[i] if i > 0 else 0.0
        x = (x - (1 - a[i]) / np.sqrt(1 - abar[i]) * eps_fn(x, i)) / np.sqrt(a[i]) + np.sqrt(sig2[i]) * z
    return x


def _linear_eps(x, t, xp=jnp):
    """A fixed, non-trivial 'network': eps = 0.3 x + 0.01 t (works for NumPy and JAX)."""
    return 0.3 * x + 0.01 * xp.reshape(xp.asarray(t, x.dtype), (-1,) + (1,) * (x.ndim - 1))


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_sample_matches_numpy_algorithm2(variance):
    T = 50
    sched = dm.make_schedule("linear", T)
    rng = jax.random.key(1)
    x_T = jax.random.normal(jax.random.key(2), (3, 4, 4, 1))
    noises = [np.asarray(dm._step_noise(rng, i, x_T.shape), np.float64) for i in range(T)]
    got = jax.jit(lambda x: dm.ddpm_sample(sched, _linear_eps, x, rng, variance=variance))(x_T)
    ref = _numpy_algorithm2(sched, lambda x, i: _linear_eps(x, np.full(3, i), np), x_T, noises, variance)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def _oracle(sched, x0):
    """The true noise: the eps with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    return lambda x, t: dm.eps_from_x0(sched, x, t, x0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_with_oracle_noise_recovers_x0(kind):
    sched = dm.make_schedule(kind, 200)
    x0 = jax.random.uniform(jax.random.key(3), (4, 8, 8, 1), minval=-1, maxval=1)
    x_T = jax.random.normal(jax.random.key(4), x0.shape)
    out = jax.jit(lambda x: dm.ddpm_sample(sched, _oracle(sched, x0), x, jax.random.key(5)))(x_T)
    np.testing.assert_allclose(out, x0, atol=1e-4)


def test_ddim_with_oracle_noise_recovers_x0_in_few_steps():
    sched = dm.make_schedule("cosine", 200)
    x0 = jax.random.uniform(jax.random.key(6), (4, 8, 8, 1), minval=-1, maxval=1)
    x_T = jax.random.normal(jax.random.key(7), x0.shape)
    for eta in (0.0, 1.0):
        out = dm.ddim_sample(sched, _oracle(sched, x0), x_T, jax.random.key(8),
                             num_sample_steps=10, eta=eta)
        np.testing.assert_allclose(out, x0, atol=1e-4)


def test_ddim_eta1_all_steps_equals_ddpm_with_posterior_variance():
    """A second implementation: DDIM (eta = 1, every step) is DDPM with sigma_t^2 = beta~_t."""
    sched = dm.make_schedule("linear", 40)
    rng = jax.random.key(9)
    x_T = jax.random.normal(jax.random.key(10), (2, 4, 4, 1))
    ddpm = dm.ddpm_sample(sched, _linear_eps, x_T, rng, variance="posterior")
    ddim = dm.ddim_sample(sched, _linear_eps, x_T, rng, num_sample_steps=40, eta=1.0)
    np.testing.assert_allclose(ddim, ddpm, rtol=1e-4, atol=1e-4)


def test_ddpm_loss_matches_a_manual_algorithm1():
    sched = dm.make_schedule("linear", 100)
    x0 = jax.random.uniform(jax.random.key(11), (5, 3, 3, 1))
    rng = jax.random.key(12)
    seen = {}

    def eps_fn(x, t):
        seen["t"] = t
        return 0.5 * x

    loss = dm.ddpm_loss(sched, eps_fn, x0, rng)
    t_rng, n_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (5,), 0, 100)
    noise = np.asarray(jax.random.normal(n_rng, x0.shape), np.float64)
    abar = np.asarray(sched.alpha_bars, np.float64)[np.asarray(t)][:, None, None, None]
    xt = np.sqrt(abar) * np.asarray(x0, np.float64) + np.sqrt(1 - abar) * noise
    ref = ((noise - 0.5 * xt) ** 2).reshape(5, -1).mean(-1)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    assert seen["t"].min() >= 0 and seen["t"].max() < 100


def test_cfg_scale0_is_unconditional_and_scale1_conditional():
    def eps_fn(x, t, c):   # depends on the condition in a non-linear way
        return jnp.tanh(x * (1.0 + c[:, None, None, None])) + 0.01 * t[:, None, None, None]

    x = jax.random.normal(jax.random.key(13), (3, 4, 4, 1))
    t = jnp.array([1, 5, 9])
    cond, null = jnp.array([0.5, -1.0, 2.0]), jnp.array(0.0)
    e_u, e_c = eps_fn(x, t, jnp.zeros(3)), eps_fn(x, t, cond)
    np.testing.assert_allclose(dm.guided_eps(eps_fn, x, t, cond, null, 0.0), e_u, atol=1e-6)
    np.testing.assert_allclose(dm.guided_eps(eps_fn, x, t, cond, null, 1.0), e_c, atol=1e-6)
    np.testing.assert_allclose(dm.guided_eps(eps_fn, x, t, cond, null, 3.0),
                               e_u + 3.0 * (e_c - e_u), atol=1e-5)


def test_ema_update_is_an_exponential_average():
    ema, model = nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(2, 3, rngs=nnx.Rngs(1))
    e0, m = np.asarray(ema.kernel[...], np.float64), np.asarray(model.kernel[...], np.float64)
    for _ in range(3):
        dm.ema_update(ema, model, 0.9)
    # three updates towards a fixed target: e_3 = 0.9^3 e_0 + (1 - 0.9^3) m
    np.testing.assert_allclose(ema.kernel[...], 0.729 * e0 + 0.271 * m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ema.bias[...], 0.271 * np.asarray(model.bias[...]), atol=1e-6)


def _diffusion_task(conditioning, p_uncond=0.1):
    from jaxnets.data import Dataset
    from jaxnets.tasks.diffusion import DiffusionTask
    from jaxnets.train.defaults import base_config

    c = base_config()
    c.task = "diffusion"
    c.model = {"name": "unet", "channels": 8, "channel_mults": (1, 2), "attention": False,
               "conditioning": conditioning}
    c.task_options = {"num_steps": 50, "p_uncond": p_uncond, "ema_decay": 0.999}
    images = np.random.default_rng(0).integers(0, 256, (400, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(400, dtype=np.int32) % 10
    data = Dataset("toy", {"train": {"image": images, "label": labels}},
                   {"image_shape": (8, 8, 1), "num_classes": 10})
    return DiffusionTask(c, data), c, images, labels


def test_condition_dropout_uses_the_null_condition_at_rate_p_uncond():
    from jaxnets.models.unet import PromptTokenizer

    task, _, _, labels = _diffusion_task("text", p_uncond=0.3)
    null = PromptTokenizer().encode("")[0]
    stub = type("Stub", (), {"null_condition": staticmethod(lambda: jnp.asarray(null))})()
    cond = np.asarray(task.condition(stub, jnp.asarray(labels), jax.random.key(0)))
    is_null = (cond == null).all(-1)
    # 400 Bernoulli(0.3) draws: sd 0.023, so 0.3 +- 0.1 is > 4 sd
    assert abs(is_null.mean() - 0.3) < 0.1
    kept = cond[~is_null]
    words = set(PromptTokenizer().vocab[i] for i in kept[labels[~is_null] == 7].ravel())
    assert {"seven", "7"} & words and not {"six", "eight", "6", "8"} & words
    np.testing.assert_array_equal(task.condition(stub, jnp.asarray(labels[:3])),   # eval: template 0
                                  PromptTokenizer().encode(["a handwritten zero", "a handwritten one",
                                                            "a handwritten two"]))


def test_diffusion_train_step_updates_the_model_and_warms_up_the_ema():
    from jaxnets.train.optim import OptimizerFactory

    task, config, images, labels = _diffusion_task("class")
    build = lambda: task.build(nnx.Rngs(0), OptimizerFactory(config))
    graphdef = nnx.split(nnx.eval_shape(build))[0]
    state = nnx.merge(graphdef, jax.jit(lambda: nnx.split(build())[1])())
    params = lambda m: [np.asarray(p, np.float64) for p in jax.tree.leaves(nnx.state(m, nnx.Param))]
    m0 = params(state.model)
    np.testing.assert_array_equal(np.concatenate([p.ravel() for p in params(state.ema)]),
                                  np.concatenate([p.ravel() for p in m0]))   # EMA starts as a copy
    batch = {"image": jnp.asarray(images[:16]), "label": jnp.asarray(labels[:16])}
    metrics = nnx.jit(task.train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    m1, e1 = params(state.model), params(state.ema)
    assert any(not np.array_equal(a, b) for a, b in zip(m0, m1))
    d = min(0.999, 2.0 / 11.0)      # warm-up decay after the first update: (1 + n) / (10 + n), n = 1
    for a0, a1, e in zip(m0, m1, e1):
        np.testing.assert_allclose(e, d * a0 + (1 - d) * a1, rtol=1e-5, atol=1e-7)
