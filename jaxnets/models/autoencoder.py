"""AutoEncoder and VAE: MLP or convolutional encoder/decoder pairs, plus the VAE's likelihoods.

AutoEncoder: x -> z = f(x) -> g(z); trained on sum ||x - g(f(x))||^2 (see jaxnets.tasks.reconstruction).
Nothing pulls its codes towards any distribution, so the latent space has holes.

VAE: the encoder outputs a mean and a log-variance (exponentiated, so the variance stays
positive); z = mean + exp(logvar / 2) * eps (reparameterisation); the decoder gives the
parameters of p(x|z): Bernoulli logits or a Gaussian mean with one learned log-scale.
ELBO = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)), in nats; the KL is the closed form for
diagonal Gaussians. Images are NHWC with values in [0, 1].
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnets.nn.layers import Conv, ConvTranspose, Linear, Param


class MLPEncoder(nnx.Module):
    def __init__(self, image_shape: Sequence[int], out_dim: int, hidden: Sequence[int] = (512, 256),
                 *, dtype=None, rngs: nnx.Rngs):
        sizes = [math.prod(image_shape), *hidden]
        self.hidden = nnx.List([Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
        self.out = Linear(sizes[-1], out_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            h = jax.nn.relu(layer(h))
        return self.out(h)


class MLPDecoder(nnx.Module):
    def __init__(self, image_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (256, 512),
                 *, dtype=None, rngs: nnx.Rngs):
        self.image_shape = tuple(image_shape)
        sizes = [latent_dim, *hidden]
        self.hidden = nnx.List([Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
        self.out = Linear(sizes[-1], math.prod(image_shape), dtype=dtype, rngs=rngs)

    def __call__(self, z):
        h = z
        for layer in self.hidden:
            h = jax.nn.relu(layer(h))
        return self.out(h).reshape((z.shape[0], *self.image_shape))


class ConvEncoder(nnx.Module):
    """Two stride-2 convolutions (H -> H/4), then a dense layer to out_dim."""

    def __init__(self, image_shape: Sequence[int], out_dim: int, channels: Sequence[int] = (32, 64),
                 *, dtype=None, rngs: nnx.Rngs):
        h, w, c = image_shape
        sizes = [c, *channels]
        self.convs = nnx.List([Conv(a, b, (4, 4), strides=2, dtype=dtype, rngs=rngs)
                               for a, b in zip(sizes, sizes[1:])])
        scale = 2 ** len(channels)
        self.out = Linear((h // scale) * (w // scale) * channels[-1], out_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = x
        for conv in self.convs:
            h = jax.nn.relu(conv(h))
        return self.out(h.reshape(h.shape[0], -1))


class ConvDecoder(nnx.Module):
    """Dense to an (H/4, W/4, C) map, then stride-2 transposed convolutions back to the image."""

    def __init__(self, image_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (64, 32),
                 *, dtype=None, rngs: nnx.Rngs):
        h, w, c = image_shape
        scale = 2 ** len(channels)
        if h % scale or w % scale:
            raise ValueError(f"ConvDecoder needs H and W divisible by {scale}, got {image_shape}")
        self.start = (h // scale, w // scale, channels[0])
        self.inp = Linear(latent_dim, math.prod(self.start), dtype=dtype, rngs=rngs)
        sizes = [*channels, channels[-1]]
        self.deconvs = nnx.List([ConvTranspose(a, b, (4, 4), strides=2, dtype=dtype, rngs=rngs)
                                 for a, b in zip(sizes, sizes[1:])])
        self.out = Conv(channels[-1], c, (3, 3), dtype=dtype, rngs=rngs)

    def __call__(self, z):
        h = jax.nn.relu(self.inp(z)).reshape((z.shape[0], *self.start))
        for deconv in self.deconvs:
            h = jax.nn.relu(deconv(h))
        return self.out(h)


def _encoder_decoder(arch, image_shape, enc_out, latent_dim, hidden, dtype, rngs):
    if arch == "mlp":
        hidden = tuple(hidden or (512, 256))
        return (MLPEncoder(image_shape, enc_out, hidden, dtype=dtype, rngs=rngs),
                MLPDecoder(image_shape, latent_dim, hidden[::-1], dtype=dtype, rngs=rngs))
    if arch == "conv":
        hidden = tuple(hidden or (32, 64))
        return (ConvEncoder(image_shape, enc_out, hidden, dtype=dtype, rngs=rngs),
                ConvDecoder(image_shape, latent_dim, hidden[::-1], dtype=dtype, rngs=rngs))
    raise ValueError(f"Unknown autoencoder arch {arch!r}; expected 'mlp' or 'conv'.")


class AutoEncoder(nnx.Module):
    """Deterministic autoencoder; `__call__` returns the reconstruction in [0, 1] (sigmoid output)."""

    def __init__(self, image_shape: Sequence[int] = (28, 28, 1), latent_dim: int = 16,
                 arch: str = "mlp", hidden: Sequence[int] | None = None, *, dtype=None,
                 rngs: nnx.Rngs):
        self.latent_dim = latent_dim
        self.encoder, self.decoder = _encoder_decoder(arch, image_shape, latent_dim, latent_dim,
                                                      hidden, dtype, rngs)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return jax.nn.sigmoid(self.decoder(z))

    def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
        return self.decode(self.encode(x))


class VAE(nnx.Module):
    """Gaussian encoder q(z|x) = N(mean, diag(exp(logvar))); Bernoulli or Gaussian decoder p(x|z)."""

    def __init__(self, image_shape: Sequence[int] = (28, 28, 1), latent_dim: int = 16,
                 arch: str = "mlp", likelihood: str = "bernoulli",
                 hidden: Sequence[int] | None = None, *, dtype=None, rngs: nnx.Rngs):
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        self.latent_dim, self.likelihood = latent_dim, likelihood
        self.encoder, self.decoder = _encoder_decoder(arch, image_shape, 2 * latent_dim, latent_dim,
                                                      hidden, dtype, rngs)
        # One shared observation log-std for the Gaussian decoder, learned with the rest.
        self.log_scale = Param(jnp.zeros(()), ()) if likelihood == "gaussian" else None

    def encode(self, x):
        mean, logvar = jnp.split(self.encoder(x).astype(jnp.float32), 2, axis=-1)
        return mean, logvar

    def decode(self, z):
        """Decoder output: Bernoulli logits, or the Gaussian mean."""
        return self.decoder(z).astype(jnp.float32)

    def mean_image(self, z):
        """E[x|z] in image space: sigmoid(logits) or the Gaussian mean."""
        out = self.decode(z)
        return jax.nn.sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_likelihood(self, decoded, x):
        """log p(x|z) per example, in nats."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(decoded, x)
        return gaussian_log_likelihood(decoded, self.log_scale[...], x)

    def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
        """Returns dict(decoded, mean, logvar, z). z is sampled when `rngs` is given (stream
        'latent', falling back to 'default'), else z = mean (deterministic reconstruction)."""
        mean, logvar = self.encode(x)
        z = mean
        if rngs is not None:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rngs.latent(), mean.shape)
        return {"decoded": self.decode(z), "mean": mean, "logvar": logvar, "z": z}

    def elbo_terms(self, x, rngs: nnx.Rngs):
        """One-sample ELBO estimate per example: {'log_px_z', 'kl', 'elbo'} in nats."""
        out = self(x, rngs=rngs)
        log_px_z = self.log_likelihood(out["decoded"], x)
        kl = gaussian_kl(out["mean"], out["logvar"])
        return {"log_px_z": log_px_z, "kl": kl, "elbo": log_px_z - kl}


def diagonal_gaussian_kl(mean_q, logvar_q, mean_p, logvar_p):
    """KL(N(mean_q, diag e^logvar_q) || N(mean_p, diag e^logvar_p)), summed over the last axis."""
    return 0.5 * jnp.sum(logvar_p - logvar_q + (jnp.exp(logvar_q) + jnp.square(mean_q - mean_p))
                         * jnp.exp(-logvar_p) - 1.0, axis=-1)


def gaussian_kl(mean, logvar):
    """KL(q || N(0, I)) = 1/2 sum(exp(logvar) + mean^2 - 1 - logvar)."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def bernoulli_log_likelihood(logits, x):
    """sum_i x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i), per example (stable form)."""
    ll = x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits)
    return ll.reshape(ll.shape[0], -1).sum(-1)


def gaussian_log_likelihood(mean, log_scale, x):
    """sum_i log N(x_i; mean_i, exp(log_scale)^2), per example."""
    ll = -0.5 * jnp.square((x - mean) * jnp.exp(-log_scale)) - log_scale - 0.5 * math.log(2 * math.pi)
    return ll.reshape(ll.shape[0], -1).sum(-1)
