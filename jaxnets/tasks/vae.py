"""VAE objective: maximise ELBO = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)), reported in nats.

Config: `model` = {"name": "vae", "arch": "mlp"|"conv", "latent_dim": ..., "likelihood":
"bernoulli"|"gaussian"}. task_options:
- `binarize` (default True for Bernoulli): pixels thresholded at 0.5, so the Bernoulli
  likelihood is a proper probability and the ELBO a bound on log p(x) in nats.
- `kl_weight` (default 1; beta-VAE when != 1; the reported ELBO always uses weight 1) and
  `recon_weight` (default 1): `kl_weight=0` trains reconstruction only, `recon_weight=0` KL
  only (benchmarks/course/vae_terms.py shows why the ELBO needs both).
- `compare_autoencoder` (default False): also train a plain AutoEncoder of the same
  architecture in the same step (own optimizer from config.optim), so that `report` can put
  their latent spaces side by side.
`judged_images` gives the image judge (jaxnets/evaluators, `config.evals`) prior samples,
interpolation midpoints and latent maps to score (confidence: does a decoded code look like a digit?).
Eval (held-out, one reparameterised sample per image, fixed noise): neg_elbo = recon_nll + kl.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from scipy import stats

from jaxnets import images as imlib
from jaxnets.models import model_options
from jaxnets.models.autoencoder import AutoEncoder
from jaxnets.tasks.base import Inference, State, Task
from jaxnets.tasks.common import (build_task_model, different_digit_pairs, heldout_images,
                                  image_model_defaults, interpolation_codes, latent_map,
                                  one_of_each_digit, store_params, sum_squared_error, to_unit_range, write_report)


class VAETask(Task):
    options = {"binarize": None, "kl_weight": 1.0, "compare_autoencoder": False,   # binarize None:
               "recon_weight": 1.0}                                                 # Bernoulli only

    entry_points = frozenset({"sample", "export"})

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # the model's keywords over its constructor's defaults (declared there, once)
        self.model_kw = {**model_options(config.model.name), **config.model}
        self.likelihood = self.model_kw["likelihood"]
        binarize = self.opts["binarize"]
        self.binarize = self.likelihood == "bernoulli" if binarize is None else binarize
        self.kl_weight = self.opts["kl_weight"]
        self.recon_weight = self.opts["recon_weight"]   # 0 with kl_weight 1: the KL-only model
        self.compare_ae = self.opts["compare_autoencoder"]

    def build(self, rngs, make_optimizer):
        defaults = image_model_defaults(self.config, self.dataset)
        vae = build_task_model(self.config.model, self.config, rngs, **defaults)
        parts = {"model": vae, "opt": make_optimizer(vae)}
        if self.compare_ae:
            m = self.model_kw
            ae = store_params(AutoEncoder(
                defaults["image_shape"], m["latent_dim"], m["arch"], m["hidden"],
                dtype=defaults.get("dtype"), rngs=rngs), self.config)
            parts.update(ae=ae, ae_opt=make_optimizer(ae))
        return State(**parts)

    def targets(self, batch):
        x = to_unit_range(batch["image"])
        return (x > 0.5).astype(jnp.float32) if self.binarize else x

    def train_step(self, state, batch, rng):
        x = self.targets(batch)

        def loss_fn(model):
            terms = model.elbo_terms(x, nnx.Rngs(latent=rng))
            loss = -(self.recon_weight * terms["log_px_z"] - self.kl_weight * terms["kl"]).mean()
            return loss, terms

        (loss, terms), grads = nnx.value_and_grad(loss_fn, has_aux=True)(state.model)
        state.opt.update(state.model, grads)
        metrics = {"loss": loss, "neg_elbo": -terms["elbo"].mean(), "recon_nll": -terms["log_px_z"].mean(),
                   "kl": terms["kl"].mean(), "grad_norm": optax.tree.norm(grads)}
        if self.compare_ae:
            images = to_unit_range(batch["image"])
            ae_loss, ae_grads = nnx.value_and_grad(
                lambda ae: sum_squared_error(ae(images, train=True), images).mean())(state.ae)
            state.ae_opt.update(state.ae, ae_grads)
            metrics["ae_loss"] = ae_loss
        return metrics

    def eval_step(self, state, batch):
        terms = state.model.elbo_terms(self.targets(batch), nnx.Rngs(latent=0))
        mask = batch["mask"]
        return {"neg_elbo_sum": -jnp.sum(terms["elbo"] * mask), "recon_nll_sum": -jnp.sum(terms["log_px_z"] * mask),
                "kl_sum": jnp.sum(terms["kl"] * mask), "count": jnp.sum(mask)}

    def summarize(self, sums):
        n = float(sums["count"])
        out = {k[:-4]: float(sums[k]) / n for k in ("neg_elbo_sum", "recon_nll_sum", "kl_sum")}
        out["loss"] = out["neg_elbo"]
        return out

    # ------------------------------------------------------------------ inference
    def sample(self, state, n: int, seed: int = 0, **conditions) -> np.ndarray:
        """n images E[x | z] decoded from the prior z ~ N(0, I) (z drawn from jax.random.key(seed))."""
        self.refuse_conditions(**conditions)
        vae = state.model
        z = jax.random.normal(jax.random.key(seed), (n, vae.latent_dim))
        return np.asarray(jax.jit(lambda z: vae.mean_image(z))(z))

    def inference_fn(self, state):
        """The decoder's mean image E[x | z]: latent -> image."""
        z = np.zeros((1, state.model.latent_dim), np.float32)
        return Inference(self.config.model.name + "_decoder", state.model, lambda m, z: m.mean_image(z),
                         [("z", z)])

    # ------------------------------------------------------------------ report
    def judged_images(self, state, context):
        return _judged_vae_images(self, state, context)

    def report(self, state, workdir):
        vae, ae = state.model, getattr(state, "ae", None)
        x, labels = heldout_images(self.dataset, self.config.data.eval_split, 1000)
        x_in = (x > 0.5).astype(np.float32) if self.binarize else x
        enc = jax.jit(lambda x: vae.encode(x)[0])
        dec = jax.jit(lambda z: vae.mean_image(z))
        codes = np.asarray(enc(x_in))
        latent = codes.shape[1]
        metrics, files = {}, []

        prior = self.sample(state, 100, seed=0)
        files.append(_save(prior, workdir, "samples.png", "VAE: decoded z ~ N(0, I)"))
        pick = one_of_each_digit(labels, 5)
        recon = np.asarray(dec(codes[pick]))
        pairs = np.stack([x_in[pick].reshape(5, 10, *x.shape[1:]), recon.reshape(5, 10, *x.shape[1:])], 1)
        files.append(_save(pairs.reshape(100, *x.shape[1:]), workdir, "reconstructions.png",
                           "held-out digits (odd rows) and VAE reconstructions (posterior means)"))
        a, b = different_digit_pairs(labels, 8)
        panels = [("VAE", np.asarray(dec(interpolation_codes(codes[a], codes[b], 10))), 10)]
        if ae is not None:
            ae_codes = np.asarray(jax.jit(lambda x: ae.encode(x))(x))
            ae_dec = jax.jit(lambda z: ae.decode(z))
            panels.insert(0, ("AE", np.asarray(ae_dec(interpolation_codes(ae_codes[a], ae_codes[b], 10))), 10))
        files.append(_save_panels(panels, workdir, "interpolation.png"))
        if latent == 2:
            quantiles = stats.norm.ppf([0.03, 0.97])      # the prior's central 94% box
            vae_map, _ = latent_map(dec, np.full(2, quantiles[0]), np.full(2, quantiles[1]))
            maps = [("VAE: 15x15 grid over N(0, I) quantiles", vae_map, 15)]
            scatter = [("VAE codes", codes)]
            if ae is not None:
                lo, hi = np.percentile(ae_codes, 1, 0), np.percentile(ae_codes, 99, 0)
                ae_map, _ = latent_map(ae_dec, lo, hi)
                maps.insert(0, ("AE: 15x15 grid over the box of its codes", ae_map, 15))
                scatter.insert(0, ("AE codes", ae_codes))
            files.append(_save_panels(maps, workdir, "latent_map.png"))
            files.append(_scatter(scatter, labels, workdir, "latent_codes.png"))
        notes = ("ELBO terms are in final.json (eval/neg_elbo = eval/recon_nll + eval/kl, nats per "
                 "image" + (", binarised pixels)." if self.binarize else ", continuous density)."))
        write_report(workdir, "VAE", self.config, files, metrics, notes)
        return metrics


def _judged_vae_images(task, state, context):
    """The image judge's sets: 100 prior samples (compared with held-out digits), the midpoints
    of 8 interpolation lines between different digits (codes no training image had) and, for a
    2-d latent, the latent maps; for the VAE and, if trained beside it, the AE. Computed on
    the sharded state through `context.call` (every process, nothing gathered)."""
    vae, ae = state.model, getattr(state, "ae", None)
    x, labels = heldout_images(task.dataset, task.config.data.eval_split, 1000)
    x_in = (x > 0.5).astype(np.float32) if task.binarize else x
    vgraph, vparams = nnx.split(vae)
    codes = context.call(lambda p, x: nnx.merge(vgraph, p).encode(x)[0], vparams, x_in)
    vae_dec = lambda z: context.call(lambda p, z: nnx.merge(vgraph, p).mean_image(z), vparams, z)
    latent = codes.shape[1]
    prior = vae_dec(np.asarray(jax.random.normal(jax.random.key(0), (100, latent)), np.float32))
    sets = {"prior_samples_": (prior, None, True)}
    lines = [("vae", vae_dec, codes)]
    if ae is not None:
        agraph, aparams = nnx.split(ae)
        ae_codes = context.call(lambda p, x: nnx.merge(agraph, p).encode(x), aparams, x)
        ae_dec = lambda z: context.call(lambda p, z: nnx.merge(agraph, p).decode(z), aparams, z)
        lines.insert(0, ("ae", ae_dec, ae_codes))
    a, b = different_digit_pairs(labels, 8)
    for name, dec, c in lines:
        imgs = dec(np.asarray(interpolation_codes(c[a], c[b], 10), np.float32))
        mid = imgs.reshape(8, 10, *x.shape[1:])[:, 3:7].reshape(-1, *x.shape[1:])
        sets[f"{name}_interpolation_"] = (mid, None, False)
        if latent == 2:
            if name == "vae":
                lo, hi = stats.norm.ppf([0.03, 0.97])     # the prior's central 94% box
                lo, hi = np.full(2, lo), np.full(2, hi)
            else:
                lo, hi = np.percentile(c, 1, 0), np.percentile(c, 99, 0)
            sets[f"{name}_latent_map_"] = (latent_map(dec, lo, hi)[0], None, False)
    return sets


def _save(images, workdir, name, title):
    imlib.save_grid(images, os.path.join(workdir, name), 10, title)
    return name


def _save_panels(panels, workdir, name):
    imlib.save_figure(panels, os.path.join(workdir, name))
    return name


def _scatter(named_codes, labels, workdir, name):
    import matplotlib  # heavy: only for the 2-D latent figure of a report
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display backend

    fig, axes = plt.subplots(1, len(named_codes), figsize=(5 * len(named_codes), 4.5), squeeze=False)
    for ax, (title, codes) in zip(axes[0], named_codes):
        points = ax.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=4)
        ax.set_title(f"{title} of 1,000 held-out digits (colour = label)", fontsize=9)
    fig.colorbar(points, ax=axes[0].tolist(), ticks=range(10))
    fig.savefig(os.path.join(workdir, name), dpi=90)
    plt.close(fig)
    return name
