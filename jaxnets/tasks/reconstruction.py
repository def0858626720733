"""AutoEncoder objective: loss = sum over pixels ||x - g(f(x))||^2, averaged over the batch.

Config: `model` = {"name": "autoencoder", "arch": "mlp"|"conv", "latent_dim": ...}; images
(uint8 or float) are scaled to [0, 1]. Eval: per-image summed squared error and per-pixel MSE.
`report` writes reconstructions and a latent interpolation strip (its decoded midpoints show
how irregular an unregularised latent space is) and, with a 2-D latent, the decoded map.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnets import images as imlib
from jaxnets.tasks.base import Inference, State, Task
from jaxnets.tasks.common import (build_task_model, different_digit_pairs, heldout_images,
                                   image_model_defaults, interpolation_codes, latent_map,
                                   one_of_each_digit, sum_squared_error, to_unit_range, write_report)


class AutoEncoderTask(Task):
    options = {}
    entry_points = frozenset({"sample", "export"})
    fit_examples = 5000   # training images whose codes the sampler's Gaussian is fitted to

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.image_shape = tuple(dataset.info["image_shape"])

    def build(self, rngs, make_optimizer):
        model = build_task_model(self.config.model, self.config, rngs,
                                 **image_model_defaults(self.config, self.dataset))
        return State(model=model, opt=make_optimizer(model))

    sse = staticmethod(sum_squared_error)

    def train_step(self, state, batch, rng):
        x = to_unit_range(batch["image"])

        def loss_fn(model):
            return self.sse(model(x, train=True), x).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(state.model)
        state.opt.update(state.model, grads)
        return {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    def eval_step(self, state, batch):
        x = to_unit_range(batch["image"])
        sse = self.sse(state.model(x), x)
        return {"sse_sum": jnp.sum(sse * batch["mask"]), "count": jnp.sum(batch["mask"])}

    def summarize(self, sums):
        sse = float(sums["sse_sum"] / sums["count"])
        return {"loss": sse, "recon_sse": sse, "recon_mse": sse / float(np.prod(self.image_shape))}

    def sample(self, state, n: int, seed: int = 0, **conditions) -> np.ndarray:
        """n decoded codes drawn from a Gaussian fitted to the codes of (up to `fit_examples`)
        training images: an AE has no prior, this is the simplest density over its codes."""
        self.refuse_conditions(**conditions)
        model = state.model
        x, _ = heldout_images(self.dataset, self.config.data.train_split, self.fit_examples)
        codes = np.asarray(jax.jit(model.encode)(x), np.float64)
        z = np.random.default_rng(seed).multivariate_normal(codes.mean(0), np.cov(codes, rowvar=False), n)
        return np.asarray(jax.jit(model.decode)(z.astype(np.float32)))

    def inference_fn(self, state):
        """The decoder: latent -> image."""
        z = np.zeros((1, state.model.latent_dim), np.float32)
        return Inference(self.config.model.name + "_decoder", state.model, lambda m, z: m.decode(z), [("z", z)])

    def report(self, state, workdir):
        model = state.model
        x, labels = heldout_images(self.dataset, self.config.data.eval_split, 1000)
        encode = jax.jit(lambda x: model.encode(x))
        decode = jax.jit(lambda z: model.decode(z))
        codes = np.asarray(encode(x))
        # reconstructions: originals (odd rows) over reconstructions (even rows)
        pick = one_of_each_digit(labels, 5)
        recon = np.asarray(decode(codes[pick]))
        pairs = np.stack([x[pick].reshape(5, 10, *x.shape[1:]), recon.reshape(5, 10, *x.shape[1:])], 1)
        imlib.save_grid(pairs.reshape(100, *x.shape[1:]), os.path.join(workdir, "reconstructions.png"),
                        10, "held-out digits (odd rows) and their reconstructions")
        a, b = different_digit_pairs(labels, 8)
        strip = np.asarray(decode(interpolation_codes(codes[a], codes[b], 10)))
        imlib.save_grid(strip, os.path.join(workdir, "interpolation.png"), 10,
                        "AE: decoded straight lines between codes of two digits")
        files = ["reconstructions.png", "interpolation.png"]
        if codes.shape[1] == 2:
            lo, hi = np.percentile(codes, 1, 0), np.percentile(codes, 99, 0)
            images, _ = latent_map(decode, lo, hi)
            imlib.save_grid(images, os.path.join(workdir, "latent_map.png"), 15,
                            "AE: decoded 15x15 grid over the box of held-out codes")
            files.append("latent_map.png")
        write_report(workdir, "AutoEncoder", self.config, files)
        return {}
