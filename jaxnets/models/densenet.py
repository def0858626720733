"""DenseNet-BC for CIFAR (Huang et al. 2017): every layer sees the concatenation of all
earlier feature maps in its block, so features are reused instead of relearned.

    DenseNet(depth=100, growth_rate=12, num_classes=10, rngs=nnx.Rngs(0))   # 0.8M params

BC = bottleneck layers (BN-ReLU-conv1x1 to 4k channels, BN-ReLU-conv3x3 to k) and compression
(transitions halve the channels, BN-ReLU-conv1x1-avgpool2). Three dense blocks of (depth-4)/6
layers each; the stem is a 3x3 conv to 2k channels. Inputs are NHWC.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnets.models.resnet import conv, norm
from jaxnets.nn.layers import Linear
from jaxnets.nn.lowering import PLAIN, Lowering


class DenseLayer(nnx.Module):
    def __init__(self, cin, growth_rate, *, dtype, rngs, lowering: Lowering = PLAIN):
        self.norm1 = norm(cin, enabled=True, dtype=dtype, rngs=rngs, lowering=lowering)
        self.conv1 = conv(cin, 4 * growth_rate, 1, 1, bias=False, dtype=dtype, rngs=rngs, lowering=lowering)
        self.norm2 = norm(4 * growth_rate, enabled=True, dtype=dtype, rngs=rngs, lowering=lowering)
        self.conv2 = conv(4 * growth_rate, growth_rate, 3, 1, bias=False, dtype=dtype, rngs=rngs, lowering=lowering)

    def __call__(self, x, train):
        y = self.conv1(jax.nn.relu(self.norm1(x, use_running_average=not train)))
        y = self.conv2(jax.nn.relu(self.norm2(y, use_running_average=not train)))
        return jnp.concatenate([x, y], axis=-1)


class Transition(nnx.Module):
    def __init__(self, cin, cout, *, dtype, rngs, lowering: Lowering = PLAIN):
        self.norm = norm(cin, enabled=True, dtype=dtype, rngs=rngs, lowering=lowering)
        self.conv = conv(cin, cout, 1, 1, bias=False, dtype=dtype, rngs=rngs, lowering=lowering)

    def __call__(self, x, train):
        y = self.conv(jax.nn.relu(self.norm(x, use_running_average=not train)))
        return nnx.avg_pool(y, (2, 2), strides=(2, 2))


class DenseNet(nnx.Module):
    def __init__(self, depth: int = 100, num_classes: int = 10, *, growth_rate: int = 12,
                 compression: float = 0.5, in_channels: int = 3, dtype=jnp.float32,
                 lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4 (e.g. 100, 250, 190), got {depth}")
        per_block = (depth - 4) // 6
        self.dtype = dtype
        channels = 2 * growth_rate
        self.stem = conv(in_channels, channels, 3, 1, bias=False, dtype=dtype, rngs=rngs, lowering=lowering)
        layers = []
        for block in range(3):
            for _ in range(per_block):
                layers.append(DenseLayer(channels, growth_rate, dtype=dtype, rngs=rngs, lowering=lowering))
                channels += growth_rate
            if block < 2:
                reduced = int(channels * compression)
                layers.append(Transition(channels, reduced, dtype=dtype, rngs=rngs, lowering=lowering))
                channels = reduced
        self.layers = nnx.List(layers)
        self.final_norm = norm(channels, enabled=True, dtype=dtype, rngs=rngs, lowering=lowering)
        self.head = Linear(channels, num_classes, axes=("embed", None), dtype=dtype, rngs=rngs)

    def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
        del rngs  # no dropout (the paper uses none with data augmentation)
        x = self.stem(x.astype(self.dtype))
        for layer in self.layers:
            x = layer(x, train)
        x = jax.nn.relu(self.final_norm(x, use_running_average=not train))
        return self.head(x.mean(axis=(1, 2))).astype(jnp.float32)
