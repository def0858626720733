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
from jaxnets.models import build_model
from jaxnets.tasks.base import State, Task


def to_unit_range(x: jax.Array) -> jax.Array:
    """uint8 0..255 -> float32 [0, 1]; float input is taken to be in [0, 1] already."""
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)


def model_defaults(config, dataset) -> dict:
    defaults = {"image_shape": tuple(dataset.info["image_shape"])}
    if config.train.compute_dtype != "float32":
        defaults["dtype"] = jnp.dtype(config.train.compute_dtype)
    return defaults


def heldout_images(dataset, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    data = dataset.splits[split]
    x = np.asarray(data["image"][:n], np.float32)
    x = x / 255.0 if np.asarray(data["image"][:1]).dtype == np.uint8 else x
    return x, np.asarray(data["label"][:n])


def interpolation_codes(z_a: np.ndarray, z_b: np.ndarray, steps: int) -> np.ndarray:
    """Codes on the straight lines from z_a[i] to z_b[i]: (pairs * steps, latent)."""
    w = np.linspace(0.0, 1.0, steps)[None, :, None]
    return ((1 - w) * z_a[:, None] + w * z_b[:, None]).reshape(-1, z_a.shape[-1])


def latent_map(decode, lo: np.ndarray, hi: np.ndarray, n: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Decode an n x n grid over the 2-D box [lo, hi] (rows top to bottom = high to low z_2)."""
    u, v = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(hi[1], lo[1], n))
    grid = np.stack([u.ravel(), v.ravel()], -1).astype(np.float32)
    return np.asarray(decode(grid)), grid


class AutoEncoderTask(Task):
    options = {}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.image_shape = tuple(dataset.info["image_shape"])

    def build(self, rngs, make_optimizer):
        model = build_model(self.config.model, rngs, **model_defaults(self.config, self.dataset))
        return State(model=model, opt=make_optimizer(model))

    @staticmethod
    def sse(recon, x):
        return jnp.sum(jnp.square(recon - x).reshape(x.shape[0], -1), axis=-1)

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
        a, b = _different_digit_pairs(labels, 8)
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


def one_of_each_digit(labels: np.ndarray, rows: int) -> np.ndarray:
    """Indices of `rows` rows of ten held-out digits, 0..9 in each row (the split is label-sorted)."""
    return np.asarray([np.flatnonzero(labels == c)[k] for k in range(rows) for c in range(10)])


def _different_digit_pairs(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first n pairs (i, j) of held-out digits with labels c and c+1 (mod 10)."""
    firsts = {c: np.flatnonzero(labels == c) for c in range(10)}
    a = [firsts[k % 10][k // 10] for k in range(n)]
    b = [firsts[(k + 1) % 10][k // 10] for k in range(n)]
    return np.asarray(a), np.asarray(b)


def write_report(workdir: str, title: str, config, files, metrics: dict | None = None,
                 notes: str = "") -> None:
    """report.md: metrics table (final.json has the eval metrics too) and the image files."""
    lines = [f"# {title}", "", f"model: `{dict(config.model)}`, steps: {config.train.steps}", ""]
    if notes:
        lines += [notes, ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items() if np.ndim(v) == 0]
        lines.append("")
    lines += [f"![{f}]({f})" for f in files]
    with open(os.path.join(workdir, "report.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
