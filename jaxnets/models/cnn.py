"""Feed-forward baselines: a multilayer perceptron and a small convolutional network."""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnets.nn.conv import conv_function
from jaxnets.nn.layers import Conv, Linear
from jaxnets.nn.lowering import PLAIN, Lowering


class MLP(nnx.Module):
    """Flatten -> [Dense -> ReLU -> Dropout] * len(hidden) -> Dense."""

    def __init__(self, in_features: int | Sequence[int], num_classes: int, *,
                 hidden: Sequence[int] = (256, 256), dropout: float = 0.0,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        width = in_features if isinstance(in_features, int) else math.prod(in_features)
        self.layers = nnx.List()
        for h in hidden:
            self.layers.append(Linear(width, h, axes=("embed", "mlp"), dtype=dtype, rngs=rngs))
            width = h
        self.head = Linear(width, num_classes, axes=("mlp", None), dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = self.dropout(jax.nn.relu(layer(x)), deterministic=not train, rngs=rngs)
        return self.head(x)


class CNN(nnx.Module):
    """[Conv3x3 -> ReLU -> MaxPool2] per entry of `features`, then Dense -> Dropout -> Dense.

    NHWC input. The defaults (32, 64 channels, 128 hidden units, dropout 0.5) are the classic
    small MNIST network; `in_channels`/`input_size` come from the dataset through the task.
    """

    def __init__(self, in_channels: int, num_classes: int, *, input_size: int = 28,
                 features: Sequence[int] = (32, 64), hidden: int = 128, dropout: float = 0.5,
                 dtype=jnp.float32, lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        self.convs = nnx.List()
        c, size = in_channels, input_size
        for f in features:
            self.convs.append(Conv(c, f, (3, 3), padding="SAME", dtype=dtype,
                                   conv_general_dilated=conv_function(lowering.conv), rngs=rngs))
            c, size = f, size // 2
        self.fc = Linear(c * size * size, hidden, axes=("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.head = Linear(hidden, num_classes, axes=("mlp", None), dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def features(self, x):
        """Penultimate activations (used e.g. as the feature space of a Frechet distance)."""
        for conv in self.convs:
            x = nnx.max_pool(jax.nn.relu(conv(x)), (2, 2), strides=(2, 2))
        return jax.nn.relu(self.fc(x.reshape(x.shape[0], -1)))

    def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
        x = self.dropout(self.features(x), deterministic=not train, rngs=rngs)
        return self.head(x)
