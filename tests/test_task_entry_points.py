"""The inference entry points the commands call live in the tasks: one sampler per model kind
(the AE's Gaussian-fit sampler, the VAE's prior), checked against NumPy float64 references."""
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxnets.data import Dataset
from jaxnets.errors import UserError
from jaxnets.tasks.reconstruction import AutoEncoderTask
from jaxnets.tasks.vae import VAETask
from jaxnets.train.defaults import base_config


def _task(cls, model):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    data = Dataset("tiny", {"train": {"image": images, "label": np.zeros(64, np.int32)},
                            "test": {"image": images[:8], "label": np.zeros(8, np.int32)}},
                   {"image_shape": (8, 8, 1), "num_classes": 10})
    c = base_config()
    c.task, c.model = ("autoencoder" if cls is AutoEncoderTask else "vae"), model
    task = cls(c, data)
    state = task.build(nnx.Rngs(0), lambda m, *a: nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param))
    return task, state, images.astype(np.float64) / 255.0


def test_autoencoder_samples_decoded_gaussian_fit_of_training_codes():
    task, state, x = _task(AutoEncoderTask, {"name": "autoencoder", "latent_dim": 3, "hidden": (16,)})
    got = task.sample(state, 5, seed=7)
    codes = np.asarray(state.model.encode(x.astype(np.float32)), np.float64)
    centred = codes - codes.mean(0)
    cov = centred.T @ centred / (len(codes) - 1)          # the unbiased covariance, by hand
    z = np.random.default_rng(7).multivariate_normal(codes.mean(0), cov, 5)
    want = np.asarray(state.model.decode(z.astype(np.float32)))
    assert got.shape == (5, 8, 8, 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="--label"):
        task.sample(state, 2, label=3)


def test_vae_samples_decode_the_standard_normal_prior():
    task, state, _ = _task(VAETask, {"name": "vae", "latent_dim": 2, "hidden": (16,)})
    got = task.sample(state, 4, seed=5)
    z = jax.random.normal(jax.random.key(5), (4, 2))
    np.testing.assert_allclose(got, np.asarray(state.model.mean_image(z)), rtol=0, atol=1e-6)
    assert 0.0 <= got.min() and got.max() <= 1.0       # Bernoulli means
    name, module, fn, inputs = task.inference_fn(state)
    assert name == "vae_decoder" and [n for n, _ in inputs] == ["z"]
    np.testing.assert_allclose(np.asarray(fn(module, np.asarray(z))), got, rtol=0, atol=1e-6)
    task.require("sample")
    with pytest.raises(UserError, match="no 'translate' entry point"):
        task.require("translate")
