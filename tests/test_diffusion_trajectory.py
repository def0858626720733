"""DDPM trajectories: forward noising frames and the samplers' per-step x_t / predicted x_0."""
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnets import ddpm as dm


def _oracle(sched, x0):
    """eps_fn that knows x0: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar), exact."""
    return lambda x, t: dm.eps_from_x0(sched, x, t, x0)


def test_forward_trajectory_frames_are_q_samples_with_one_noise():
    sched = dm.make_schedule("cosine", 400)
    x0 = jax.random.uniform(jax.random.key(0), (8, 8, 1), minval=-1, maxval=1)
    ts, frames = dm.forward_trajectory(sched, x0, jax.random.key(1), 11)
    np.testing.assert_array_equal(ts, np.arange(0, 401, 40))
    np.testing.assert_array_equal(frames[0], x0)                       # t = 0 is x_0 itself
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    for k in range(1, 11):   # paper timestep t is array index t - 1
        ref = dm.q_sample(sched, x0[None], jnp.array([ts[k] - 1]), noise[None])[0]
        np.testing.assert_allclose(frames[k], ref, rtol=1e-6, atol=1e-6)
    # At t = T the cosine schedule leaves (almost) pure noise.
    assert float(jnp.abs(frames[-1] - noise).max()) < 1e-2


def test_sampler_trajectories_chain_their_steps_and_predict_x0():
    sched = dm.make_schedule("linear", 100)
    x0 = jax.random.uniform(jax.random.key(2), (3, 8, 8, 1), minval=-1, maxval=1)
    x_T = jax.random.normal(jax.random.key(3), x0.shape)
    for sample in (lambda **kw: dm.ddim_sample(sched, _oracle(sched, x0), x_T, jax.random.key(4),
                                               num_sample_steps=10, eta=1.0, **kw),
                   lambda **kw: dm.ddpm_sample(sched, _oracle(sched, x0), x_T, jax.random.key(4), **kw)):
        plain = sample()
        out, traj = sample(trajectory=True)
        np.testing.assert_array_equal(out, plain)       # the same chain, same noise
        n = traj["t"].shape[0]
        assert traj["x_t"].shape == (n, *x0.shape) and traj["x0"].shape == (n, *x0.shape)
        np.testing.assert_array_equal(traj["x_t"][0], x_T)   # first step's input is x_T
        assert int(traj["t"][0]) == 99 and int(traj["t"][-1]) == 0
        # The oracle's predicted x_0 is exact at every step (up to float32 at t = T).
        np.testing.assert_allclose(traj["x0"][1:], jnp.broadcast_to(x0, traj["x0"][1:].shape), atol=2e-3)


def test_ddpm_report_writes_forward_and_reverse_pngs(tmp_path):
    from jaxnets.data import Dataset
    from jaxnets.tasks.diffusion import DiffusionTask
    from jaxnets.train.defaults import base_config
    from jaxnets.train.optim import OptimizerFactory

    c = base_config()
    c.task = "diffusion"
    c.model = {"name": "unet", "channels": 8, "channel_mults": (1, 2), "attention": False,
               "conditioning": "class"}
    c.task_options = {"num_steps": 50, "sample_steps": 10}
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    split = {"image": images, "label": np.arange(20, dtype=np.int32) % 10}
    data = Dataset("toy", {"train": split, "test": split}, {"image_shape": (8, 8, 1), "num_classes": 10})
    task = DiffusionTask(c, data)
    state = task.build(nnx.Rngs(0), OptimizerFactory(c))
    assert task.trajectory_figures(state.ema, str(tmp_path)) == ["forward.png", "reverse.png"]
    for name in ("forward.png", "reverse.png"):
        assert os.path.getsize(tmp_path / name) > 1000
    assert "steps shown" in open(tmp_path / "reverse_timesteps.txt").read()
