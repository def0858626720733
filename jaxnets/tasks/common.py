"""Helpers every task may use: the mixed-precision policy, model building, held-out images
and the report page. Tasks import from here, never from each other.

Mixed precision (one policy, applied where tasks build models: `build_task_model`):
    train.compute_dtype  the dtype layers compute in, passed to the model as `dtype`
                         ("bfloat16" on accelerators; losses and softmaxes stay float32);
    train.param_dtype    the dtype the parameters (and so the optimizer's updates) are stored
                         in; float32 unless memory matters more than update precision.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnets import models, storage
from jaxnets.errors import UserError
from jaxnets.platform.lowering_rule import lowering_for


def precision_policy(config) -> tuple[jnp.dtype, jnp.dtype]:
    """(compute dtype, parameter dtype) from `train.compute_dtype` / `train.param_dtype`."""
    return (jnp.dtype(config.train.compute_dtype),
            jnp.dtype(config.train.get("param_dtype", "float32")))


def compute_defaults(config) -> dict:
    """{"dtype": compute dtype} as a model constructor default; {} in float32."""
    compute, _ = precision_policy(config)
    return {} if compute == jnp.float32 else {"dtype": compute}


def store_params(model, config):
    """Cast the model's floating parameters to the policy's parameter dtype (in place)."""
    _, dtype = precision_policy(config)
    if dtype != jnp.float32:
        state = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(
            lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, state))
    return model


def build_task_model(model_config, config, rngs, **defaults):
    """`jaxnets.models.build_model` under the precision policy and the platform's choices: the
    compute dtype goes in as the `dtype` default and the backend's layer choices as the
    `lowering` default (`jaxnets.platform.lowering_rule.lowering_for(config.platform)`, for models
    that take one); the parameters are then stored in the parameter dtype."""
    platform = {"lowering": lowering_for(config.get("platform"))}
    model = models.build_model(model_config, rngs,
                               **{**platform, **compute_defaults(config), **defaults})
    return store_params(model, config)


def image_model_defaults(config, dataset) -> dict:
    """Constructor defaults of image models (AE, VAE, GAN, U-Net): the dataset's image shape
    and the compute dtype."""
    return {"image_shape": tuple(dataset.info["image_shape"]), **compute_defaults(config)}


def to_unit_range(x: jax.Array) -> jax.Array:
    """uint8 0..255 -> float32 [0, 1]; float input is taken to be in [0, 1] already."""
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)


def heldout_images(dataset, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n images of `split` as float32 in [0, 1], and their labels."""
    data = dataset.splits[split]
    x = np.asarray(data["image"][:n], np.float32)
    x = x / 255.0 if np.asarray(data["image"][:1]).dtype == np.uint8 else x
    return x, np.asarray(data["label"][:n])


def encode_text(vocab, text: str) -> list[int]:
    """Character ids of `text` in a character vocabulary; a character outside it is a UserError."""
    if not vocab:
        raise UserError("This dataset has no character vocabulary to encode text with.")
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted({c for c in text if c not in index})
    if unknown:
        raise UserError(f"Characters {''.join(unknown)!r} are not in the model's vocabulary.")
    return [index[c] for c in text]


def image_batch_input(x: np.ndarray) -> np.ndarray:
    """An example input as the model sees it: uint8 pixels scaled to float32 [0, 1]."""
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x


def sum_squared_error(recon, x):
    """Per-example sum of squared errors [B]."""
    return jnp.sum(jnp.square(recon - x).reshape(x.shape[0], -1), axis=-1)


def interpolation_codes(z_a: np.ndarray, z_b: np.ndarray, steps: int) -> np.ndarray:
    """Codes on the straight lines from z_a[i] to z_b[i]: (pairs * steps, latent)."""
    w = np.linspace(0.0, 1.0, steps)[None, :, None]
    return ((1 - w) * z_a[:, None] + w * z_b[:, None]).reshape(-1, z_a.shape[-1])


def latent_map(decode, lo: np.ndarray, hi: np.ndarray, n: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Decode an n x n grid over the 2-D box [lo, hi] (rows top to bottom = high to low z_2)."""
    u, v = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(hi[1], lo[1], n))
    grid = np.stack([u.ravel(), v.ravel()], -1).astype(np.float32)
    return np.asarray(decode(grid)), grid


def one_of_each_digit(labels: np.ndarray, rows: int) -> np.ndarray:
    """Indices of `rows` rows of ten held-out digits, 0..9 in each row (the split is label-sorted)."""
    return np.asarray([np.flatnonzero(labels == c)[k] for k in range(rows) for c in range(10)])


def different_digit_pairs(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
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
    storage.write_text(storage.join(workdir, "report.md"), "\n".join(lines) + "\n")
