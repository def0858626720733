"""GAN objective: min_G max_D E_x[log D(x)] + E_z[log(1 - D(G(z)))], alternating updates.

One `train_step` (one jit-compiled, sharded program) does a discriminator update then a
generator update, each with its own optimizer: `config.optim` for G, `config.optim_d` for D.
- D step: maximise log D(x) + log(1 - D(G(z))), i.e. minimise softplus(-l_real) + softplus(l_fake)
  with l = D's logit; G is run (batch-norm statistics update) but not differentiated.
- G step on fresh z: task_options.generator_loss = "non_saturating" (default; minimise
  -log D(G(z)) = softplus(-l), strong gradients when D rejects the fakes) or "minimax"
  (minimise log(1 - D(G(z))) = -softplus(l), the objective as written).
Config: `model` is the generator ({"name": "dcgan_generator", "latent_dim", "channels"}),
`model_d` the discriminator ({"name": "dcgan_discriminator", "channels", "dropout"}).
Images are scaled to [-1, 1]. At the game's equilibrium D(x) = 1/2 on real and fake images:
train metrics d_real and d_fake are the mean D outputs; eval reports D(x) on held-out digits.
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
from jaxnets.tasks.common import (build_task_model, image_model_defaults,
                                  to_unit_range, write_report)


def discriminator_loss(logits_real, logits_fake):
    """-[log D(x) + log(1 - D(G(z)))], batch mean, from logits (stable softplus form)."""
    return jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake))


def generator_loss(logits_fake, kind: str = "non_saturating"):
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-logits_fake))      # -log D(G(z))
    if kind == "minimax":
        return -jnp.mean(jax.nn.softplus(logits_fake))      # log(1 - D(G(z)))
    raise ValueError(f"generator_loss must be 'non_saturating' or 'minimax', got {kind!r}")


class GANTask(Task):
    options = {"generator_loss": "non_saturating"}
    entry_points = frozenset({"sample", "export"})

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.g_loss_kind = self.opts["generator_loss"]
        generator_loss(jnp.zeros(1), self.g_loss_kind)   # a bad name fails now

    def build(self, rngs, make_optimizer):
        defaults = image_model_defaults(self.config, self.dataset)
        g = build_task_model(self.config.model, self.config, rngs, **defaults)
        d = build_task_model(self.config.model_d, self.config, rngs, **defaults)
        return State(generator=g, discriminator=d, opt_g=make_optimizer(g, "optim"),
                     opt_d=make_optimizer(d, "optim_d"))

    @staticmethod
    def real_images(batch):
        return to_unit_range(batch["image"]) * 2.0 - 1.0

    def latents(self, state, rng, n):
        return jax.random.normal(rng, (n, state.generator.latent_dim))

    def d_step(self, state, x, z, rng):
        """One discriminator update; returns its loss before the update and D's mean outputs."""
        fake = jax.lax.stop_gradient(state.generator(z, train=True))

        def loss_fn(d):
            r_rng, f_rng = jax.random.split(rng)
            l_real = d(x, train=True, rngs=nnx.Rngs(dropout=r_rng))
            l_fake = d(fake, train=True, rngs=nnx.Rngs(dropout=f_rng))
            return discriminator_loss(l_real, l_fake), (l_real, l_fake)

        (loss, (l_real, l_fake)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(state.discriminator)
        state.opt_d.update(state.discriminator, grads)
        return {"d_loss": loss, "d_real": jnp.mean(jax.nn.sigmoid(l_real)),
                "d_fake": jnp.mean(jax.nn.sigmoid(l_fake)), "d_grad_norm": optax.tree.norm(grads)}

    def g_step(self, state, z, rng):
        """One generator update through the (fixed) discriminator; returns its loss before it."""

        def loss_fn(g, d):
            logits = d(g(z, train=True), train=True, rngs=nnx.Rngs(dropout=rng))
            return generator_loss(logits, self.g_loss_kind)

        loss, grads = nnx.value_and_grad(loss_fn, argnums=0)(state.generator, state.discriminator)
        state.opt_g.update(state.generator, grads)
        return {"g_loss": loss, "g_grad_norm": optax.tree.norm(grads)}

    def train_step(self, state, batch, rng):
        x = self.real_images(batch)
        zd_rng, zg_rng, d_rng, g_rng = jax.random.split(rng, 4)
        metrics = self.d_step(state, x, self.latents(state, zd_rng, x.shape[0]), d_rng)
        metrics.update(self.g_step(state, self.latents(state, zg_rng, x.shape[0]), g_rng))
        metrics["loss"] = metrics["d_loss"] + metrics["g_loss"]
        return metrics

    def eval_step(self, state, batch):
        logits = state.discriminator(self.real_images(batch))
        mask = batch["mask"]
        return {"d_real_sum": jnp.sum(jax.nn.sigmoid(logits) * mask),
                "d_loss_real_sum": jnp.sum(jax.nn.softplus(-logits) * mask), "count": jnp.sum(mask)}

    def summarize(self, sums):
        n = float(sums["count"])
        return {"d_real_heldout": float(sums["d_real_sum"]) / n,
                "loss": float(sums["d_loss_real_sum"]) / n}

    def sample(self, state, n: int, seed: int = 0, **conditions) -> np.ndarray:
        """n generated images in [0, 1] (G in inference mode: running batch-norm statistics)."""
        self.refuse_conditions(**conditions)
        graphdef, params = nnx.split(state.generator)
        gen = jax.jit(lambda p, z: (nnx.merge(graphdef, p)(z) + 1.0) / 2.0)
        return np.asarray(gen(params, self.latents(state, jax.random.key(seed), n)))

    def judged_images(self, state, context):
        """1000 samples for the image judge (jaxnets/evaluators), compared with held-out digits;
        generated on the sharded state on every process (`context.call`)."""
        graphdef, params = nnx.split(state.generator)
        z = np.asarray(self.latents(state, jax.random.key(0), 1000), np.float32)
        gen = lambda p, z: (nnx.merge(graphdef, p)(z) + 1.0) / 2.0
        return {"samples_": (context.call(gen, params, z), None, True)}

    def inference_fn(self, state):
        """The generator G(z), images in [-1, 1]."""
        z = np.zeros((1, state.generator.latent_dim), np.float32)
        return Inference("generator", state.generator, lambda g, z: g(z), [("z", z)])

    def report(self, state, workdir):
        samples = self.sample(state, 1000)
        imlib.save_grid(samples[:100], os.path.join(workdir, "samples.png"), 10, "DCGAN samples")
        metrics = {}
        write_report(workdir, "DCGAN", self.config, ["samples.png"], metrics,
                     f"generator loss: {self.g_loss_kind}; D(x) on held-out digits is in final.json.")
        return metrics
