"""DCGAN generator and discriminator (Radford et al. 2016) for small images (H, W divisible by 4).

Generator: z -> dense -> (H/4, W/4, 2C) -> BN, ReLU -> stride-2 transposed conv (C) -> BN, ReLU
-> stride-2 transposed conv -> tanh, so images lie in [-1, 1]. Discriminator: stride-2
convolutions with LeakyReLU(0.2) and dropout (no batch norm: real and fake batches are scored
in separate calls, and batch statistics would let D tell them apart by the batch, not the
image), then one logit, D(x) = sigmoid(logit). The objective and the alternating updates live
in jaxnets.tasks.gan.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnets.nn.layers import BatchNorm, Conv, ConvTranspose, Linear


class DCGANGenerator(nnx.Module):
    def __init__(self, latent_dim: int = 64, image_shape: Sequence[int] = (28, 28, 1),
                 channels: int = 64, *, dtype=None, rngs: nnx.Rngs):
        h, w, c = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"DCGANGenerator needs H and W divisible by 4, got {image_shape}")
        self.latent_dim = latent_dim
        self.start = (h // 4, w // 4, 2 * channels)
        self.inp = Linear(latent_dim, math.prod(self.start), use_bias=False, dtype=dtype, rngs=rngs)
        self.bn0 = BatchNorm(math.prod(self.start), momentum=0.9, dtype=dtype, rngs=rngs)
        self.up1 = ConvTranspose(2 * channels, channels, (4, 4), strides=2, use_bias=False,
                                     dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm(channels, momentum=0.9, dtype=dtype, rngs=rngs)
        self.up2 = ConvTranspose(channels, c, (4, 4), strides=2, dtype=dtype, rngs=rngs)

    def __call__(self, z, *, train: bool = False, rngs: nnx.Rngs | None = None):
        h = jax.nn.relu(self.bn0(self.inp(z), use_running_average=not train))
        h = h.reshape((z.shape[0], *self.start))
        h = jax.nn.relu(self.bn1(self.up1(h), use_running_average=not train))
        return jnp.tanh(self.up2(h).astype(jnp.float32))


class DCGANDiscriminator(nnx.Module):
    def __init__(self, image_shape: Sequence[int] = (28, 28, 1), channels: int = 64,
                 dropout: float = 0.3, *, dtype=None, rngs: nnx.Rngs):
        h, w, c = image_shape
        self.conv1 = Conv(c, channels, (4, 4), strides=2, dtype=dtype, rngs=rngs)
        self.conv2 = Conv(channels, 2 * channels, (4, 4), strides=2, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(dropout)
        self.out = Linear((h // 4) * (w // 4) * 2 * channels, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
        """Returns the logit of 'x is real', shape (B,)."""
        h = self.drop(jax.nn.leaky_relu(self.conv1(x), 0.2), deterministic=not train, rngs=rngs)
        h = self.drop(jax.nn.leaky_relu(self.conv2(h), 0.2), deterministic=not train, rngs=rngs)
        return self.out(h.reshape(h.shape[0], -1))[:, 0].astype(jnp.float32)
