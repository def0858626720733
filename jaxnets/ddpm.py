"""DDPM mathematics: beta schedules, forward noising, the training loss and compiled samplers.

Notation follows Ho et al. 2020 (DDPM). The paper's timesteps are t = 1..T; arrays here are
indexed by i = t - 1 in 0..T-1, and that index is what the noise predictor receives.

- `make_schedule("linear"|"cosine", T)`: betas, alphas, alpha-bars and the posterior variance
  beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t, computed in float64 then stored as float32.
- `q_sample`: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (the closed-form forward chain).
- `ddpm_loss`: Algorithm 1, ||eps - eps_theta(x_t, t)||^2 with t ~ Uniform and eps ~ N(0, I).
- `ddpm_sample`: Algorithm 2 as one `lax.scan` over t = T..1 (one dispatch, not T).
- `ddim_sample`: DDIM (Song et al. 2021) over a strided subsequence of timesteps; eta=0 is
  deterministic, eta=1 with every step is exactly DDPM with sigma_t^2 = beta~_t.
- `guided_eps`: classifier-free guidance eps_u + s (eps_c - eps_u), one batched forward pass.
- `ema_update`: exponential moving average of a module's parameters, for sampling.
- Trajectories, for pictures and research: `forward_trajectory` (x_t of one x_0 at evenly
  spaced t = 0..T) and `trajectory=True` on both samplers (x_t and the predicted x_0 at every
  sampler step, from the same scan).

An `eps_fn(x_t, t_index) -> eps` is any callable; the samplers never see a model directly,
so tests can hand them the oracle noise and tasks hand them a guided, EMA network.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-timestep constants, index i = t - 1. A frozen dataclass of arrays: safe to close over."""
    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array
    alpha_bars_prev: jax.Array      # abar_{t-1}, with abar_0 = 1
    posterior_variance: jax.Array   # beta~_t

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """The DDPM linear schedule. Endpoints are scaled by 1000 / T so that a shorter chain still
    ends at (nearly) pure noise, as in Nichol & Dhariwal 2021; T = 1000 gives the paper's values."""
    scale = 1000.0 / num_steps
    return np.linspace(beta_start * scale, beta_end * scale, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: abar(t) = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2);
    beta_t = 1 - abar_t / abar_{t-1}, clipped at max_beta to avoid the singularity at t = T."""
    t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def make_schedule(kind: str = "linear", num_steps: int = 1000) -> Schedule:
    if kind == "linear":
        betas = linear_betas(num_steps)
    elif kind == "cosine":
        betas = cosine_betas(num_steps)
    else:
        raise ValueError(f"Unknown beta schedule {kind!r}; expected 'linear' or 'cosine'.")
    alphas = 1.0 - betas
    alpha_bars = np.cumprod(alphas)
    alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
    posterior_variance = (1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * betas
    as32 = lambda a: jnp.asarray(a, jnp.float32)
    return Schedule(as32(betas), as32(alphas), as32(alpha_bars), as32(alpha_bars_prev),
                    as32(posterior_variance))


def _per_example(values: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """values[t] shaped to broadcast against a batch x (B, ...); t may be a scalar or (B,)."""
    v = values[t]
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    abar = _per_example(schedule.alpha_bars, t, x0)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def forward_trajectory(schedule: Schedule, x0: jax.Array, rng: jax.Array,
                       num_frames: int = 11) -> tuple[np.ndarray, jax.Array]:
    """The forward process as frames: t = 0, T/(F-1), ..., T (paper timesteps, rounded) and
    x_t [F, *x0.shape], t = 0 being x_0 itself. One noise draw eps serves every frame, so the
    strip shows the same image fading into the same noise; each frame is still an exact
    sample of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
    ts = np.round(np.linspace(0, schedule.num_steps, num_frames)).astype(np.int32)
    noise = jax.random.normal(rng, x0.shape, x0.dtype)
    abar = jnp.concatenate([jnp.ones((1,)), schedule.alpha_bars])[ts]   # abar at t = 0 is 1
    abar = abar.reshape((-1,) + (1,) * x0.ndim)
    return ts, jnp.sqrt(abar) * x0[None] + jnp.sqrt(1.0 - abar) * noise[None]


def x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    abar = _per_example(schedule.alpha_bars, t, x_t)
    return (x_t - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)


def eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    abar = _per_example(schedule.alpha_bars, t, x_t)
    return (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)


def ddpm_loss(schedule: Schedule, eps_fn: EpsFn, x0: jax.Array, rng: jax.Array) -> jax.Array:
    """Algorithm 1 for one batch: per-example mean over pixels of (eps - eps_theta)^2, shape (B,)."""
    t_rng, noise_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (x0.shape[0],), 0, schedule.num_steps)
    noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    eps = eps_fn(q_sample(schedule, x0, t, noise), t)
    return jnp.mean(jnp.square(noise - eps).reshape(x0.shape[0], -1), axis=-1)


def _step_noise(rng: jax.Array, i: jax.Array, shape) -> jax.Array:
    # Noise for timestep index i depends only on (rng, i): DDPM and DDIM with all steps draw
    # the same z at the same t, which lets tests compare the two samplers exactly.
    return jax.random.normal(jax.random.fold_in(rng, i), shape)


def _clip_eps(schedule, x, t, eps, clip_x0):
    """With clip_x0, eps is replaced by the one implied by the clipped x0 estimate; the update
    then equals the posterior mean q(x_{t-1} | x_t, clip(x0_hat)). Without it: Algorithm 2 as is."""
    if clip_x0 is None:
        return eps
    x0 = jnp.clip(x0_from_eps(schedule, x, t, eps), -clip_x0, clip_x0)
    return eps_from_x0(schedule, x, t, x0)


def ddpm_sample(schedule: Schedule, eps_fn: EpsFn, x_T: jax.Array, rng: jax.Array, *,
                variance: str = "beta", clip_x0: float | None = None, trajectory: bool = False):
    """Algorithm 2: for t = T..1, x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)
    + sigma_t z, with z = 0 at t = 1 and sigma_t^2 = beta_t ("beta") or beta~_t ("posterior").
    One `lax.scan` over timesteps; call it inside `jax.jit`. With `trajectory=True` returns
    (x_0, {"t": index i per step, "x_t": the input of each step, "x0": its predicted x_0})."""
    if variance not in ("beta", "posterior"):
        raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
    sigmas = jnp.sqrt(schedule.betas if variance == "beta" else schedule.posterior_variance)
    batch = x_T.shape[0]

    def step(x, i):
        t = jnp.full((batch,), i)
        eps = _clip_eps(schedule, x, t, eps_fn(x, t), clip_x0)
        mean = (x - schedule.betas[i] / jnp.sqrt(1.0 - schedule.alpha_bars[i]) * eps) / jnp.sqrt(
            schedule.alphas[i])
        z = jnp.where(i > 0, 1.0, 0.0) * _step_noise(rng, i, x.shape)
        seen = (x, x0_from_eps(schedule, x, t, eps)) if trajectory else None
        return (mean + sigmas[i] * z).astype(x_T.dtype), seen

    steps = jnp.arange(schedule.num_steps - 1, -1, -1)
    x0, seen = jax.lax.scan(step, x_T, steps)
    return (x0, {"t": steps, "x_t": seen[0], "x0": seen[1]}) if trajectory else x0


def ddim_timesteps(num_steps: int, num_sample_steps: int) -> np.ndarray:
    """Evenly strided indices T-1 > ... > 0 (always ends at index 0, i.e. t = 1)."""
    if not 1 <= num_sample_steps <= num_steps:
        raise ValueError(f"num_sample_steps must be in [1, {num_steps}], got {num_sample_steps}")
    return np.round(np.linspace(num_steps - 1, 0, num_sample_steps)).astype(np.int32)


def ddim_sample(schedule: Schedule, eps_fn: EpsFn, x_T: jax.Array, rng: jax.Array, *,
                num_sample_steps: int = 50, eta: float = 0.0,
                clip_x0: float | None = None, trajectory: bool = False):
    """DDIM: x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z with
    sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev). One `lax.scan`.
    `trajectory=True`: (x_0, {"t", "x_t", "x0"}) as for `ddpm_sample`, one entry per step."""
    steps = ddim_timesteps(schedule.num_steps, num_sample_steps)
    prev = np.concatenate([steps[1:], [-1]]).astype(np.int32)   # -1 marks "x_0": abar = 1
    batch = x_T.shape[0]

    def step(x, pair):
        i, j = pair
        t = jnp.full((batch,), i)
        eps = _clip_eps(schedule, x, t, eps_fn(x, t), clip_x0)
        abar = schedule.alpha_bars[i]
        abar_prev = jnp.where(j >= 0, schedule.alpha_bars[jnp.maximum(j, 0)], 1.0)
        x0 = (x - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)
        sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
        direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0)) * eps
        z = _step_noise(rng, i, x.shape)
        seen = (x, x0) if trajectory else None
        return (jnp.sqrt(abar_prev) * x0 + direction + sigma * z).astype(x_T.dtype), seen

    x0, seen = jax.lax.scan(step, x_T, (jnp.asarray(steps), jnp.asarray(prev)))
    return (x0, {"t": jnp.asarray(steps), "x_t": seen[0], "x0": seen[1]}) if trajectory else x0


def guided_eps(eps_fn_cond: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
               x: jax.Array, t: jax.Array, cond: jax.Array, null_cond: jax.Array,
               scale: float | jax.Array) -> jax.Array:
    """Classifier-free guidance: eps_u + scale (eps_c - eps_u). scale = 0 is the unconditional
    model, 1 the conditional one, > 1 extrapolates. Conditional and unconditional predictions
    come from one forward pass over the doubled batch."""
    batch = x.shape[0]
    null = jnp.broadcast_to(null_cond, cond.shape)
    eps = eps_fn_cond(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                      jnp.concatenate([cond, null]))
    eps_c, eps_u = eps[:batch], eps[batch:]
    return eps_u + scale * (eps_c - eps_u)


def ema_update(ema: nnx.Module, model: nnx.Module, decay: float | jax.Array) -> None:
    """ema <- decay * ema + (1 - decay) * model, over nnx.Param only (in place, NNX style)."""
    ema_params = nnx.state(ema, nnx.Param)
    params = nnx.state(model, nnx.Param)
    nnx.update(ema, jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params))
