"""ResNet, PlainNet and pre-activation ResNet (He et al. 2016a, 2016b), one code path.

    ResNet(depth=56, num_classes=10, rngs=nnx.Rngs(0))        # CIFAR form, depth 6n+2
    PlainNet(depth=56, num_classes=10, rngs=nnx.Rngs(0))      # same network, no shortcuts
    ResNet(depth=50, form="imagenet", num_classes=1000, rngs=...)   # 18/34 basic, 50 bottleneck
    PreActResNet(depth=110, rngs=...)                          # BN-ReLU-conv units (2016b)

Inputs are NHWC (channels last: XLA's CPU and GPU convolutions prefer it). Options:
`residual` (False gives the plain net), `shortcut` ("A": parameter-free subsample + zero-padded
channels, the CIFAR paper's choice; "B": 1x1 projection + BN where the shape changes),
`preact`, `batch_norm` (False: convs get biases, no normalisation; for the degradation study),
`dtype` (compute dtype, e.g. jnp.bfloat16; parameters stay float32), `width` (first stage's
channels), `stem_stride` (2 on small offline data: 4x fewer pixels, same depth),
`zero_init_residual` (the last BN scale of every residual branch starts at 0, so each block
starts as its shortcut: Goyal et al. 2017's large-batch ImageNet recipe).

Lesion studies (Veit et al. 2016): `model(x, skip_blocks=(3,))` deletes block 3, i.e. the block
output becomes its shortcut. A plain block has no shortcut; deleting it passes its input through
the parameter-free option-A map so shapes still fit. `skip_blocks` may also be a float array of
length `model.num_blocks` (1 = delete), so one compiled function evaluates every lesion.

Speed on CPU: `lowering` (a `jaxnets.nn.lowering.Lowering`, chosen per backend by
the platform layer and passed in by the task) sends 3x3 convolutions through
`jaxnets.nn.conv.conv3x3` (the convolutions, their input and filter gradients in native
kernels), a fusion barrier (`materialize`) on block outputs and on the inputs of
convolutions XLA runs (`barrier`), and batch norm's channel sums to a native kernel. The
default `Lowering()` is plain XLA (GPU/TPU). Batch norm is `jaxnets.nn.batch_norm` (its
gradient written out) on every backend.

Per-layer gradient norms: `model.layer_paths()` lists the parameter paths of the weight layers
in depth order; `layer_norms(grads, model.layer_paths())` reads their norms from a gradient
(or parameter) state.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnets.nn.conv import conv_function, materialize, native_reads
from jaxnets.nn.layers import BatchNorm, Conv, Linear
from jaxnets.nn.lowering import PLAIN, Lowering

# He et al. 2015 initialisation (fan_out, as torchvision), used by both papers.
he_normal = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

IMAGENET_LAYOUT = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True)}


def conv(cin, cout, kernel, stride, *, bias, dtype, rngs, lowering: Lowering = PLAIN):
    # Explicit symmetric padding k//2 (as the papers / PyTorch); 'SAME' pads stride-2 convs
    # asymmetrically, which changes which pixels a downsampling layer sees.
    pad = kernel // 2
    return Conv(cin, cout, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                use_bias=bias, dtype=dtype, kernel_init=he_normal,
                conv_general_dilated=conv_function(lowering.conv), rngs=rngs)


def norm(features, *, enabled, dtype, rngs, lowering: Lowering = PLAIN):
    # momentum 0.9 = PyTorch's 0.1: running statistics that follow short training runs.
    if not enabled:
        return None
    return BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, sums=lowering.batch_norm,
                     rngs=rngs)


def barrier(lowering: Lowering, x, readers=None):
    """`materialize(x)` where the lowering asks for fusion barriers, else x; with `readers` (the
    convolutions reading x: nnx.Conv layers, None for an absent one), only where XLA runs one
    of them: native kernels read their input as one buffer (`native_reads`), and a barrier in
    front of them measured slower (docs/cpu_choices.md)."""
    if not lowering.fusion_barriers:
        return x
    if readers is not None and all(
            native_reads(x, c.kernel.shape, _pair(c.strides), c.padding, lowering.conv)
            for c in readers if c is not None):
        return x
    return materialize(x)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def apply_norm(layer, y, train):
    return y if layer is None else layer(y, use_running_average=not train)


def option_a_shortcut(x, stride, cout):
    """Parameter-free shortcut: subsample by `stride`, zero-pad new channels (He et al. 2016a)."""
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    extra = cout - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


class Block(nnx.Module):
    """One residual unit (basic: 3x3, 3x3; bottleneck: 1x1, 3x3, 1x1) or its plain twin.

    Post-activation (2016a): relu(F(x) + s(x)), F = conv-BN-ReLU-...-conv-BN.
    Pre-activation (2016b): F(x) + s(x), F = BN-ReLU-conv-...-BN-ReLU-conv.
    """

    def __init__(self, cin, cout, stride, *, bottleneck, residual, preact, shortcut, batch_norm,
                 dtype, rngs, lowering: Lowering = PLAIN, zero_init_residual=False):
        self.cin, self.cout, self.stride, self.lowering = cin, cout, stride, lowering
        self.residual, self.preact = residual, preact
        mid = cout // 4 if bottleneck else cout
        specs = ([(cin, mid, 1, 1), (mid, mid, 3, stride), (mid, cout, 1, 1)] if bottleneck
                 else [(cin, cout, 3, stride), (cout, cout, 3, 1)])
        bias = not batch_norm
        self.convs = nnx.List([conv(i, o, k, s, bias=bias, dtype=dtype, rngs=rngs, lowering=lowering)
                               for i, o, k, s in specs])
        self.norms = nnx.List([norm(i if preact else o, enabled=batch_norm, dtype=dtype, rngs=rngs,
                                    lowering=lowering)
                               for i, o, _, _ in specs])
        if zero_init_residual and residual and batch_norm and not preact:
            self.norms[-1].scale[...] = jnp.zeros_like(self.norms[-1].scale[...])
        project = residual and (stride != 1 or cin != cout) and shortcut == "B"
        self.projection = nnx.data(
            conv(cin, cout, 1, stride, bias=bias, dtype=dtype, rngs=rngs, lowering=lowering) if project else None)
        # Pre-activation projections act on the already normalised input; no extra BN.
        self.projection_norm = nnx.data(
            norm(cout, enabled=batch_norm, dtype=dtype, rngs=rngs, lowering=lowering)
            if project and not preact
            else None)

    def shortcut(self, x, x_preact, train):
        if self.projection is not None:
            return apply_norm(self.projection_norm, self.projection(x_preact), train)
        return option_a_shortcut(x, self.stride, self.cout)

    def __call__(self, x, *, train=False, keep=True):
        """`keep`: True (normal), False (block deleted), or a traced 0/1 scalar gate."""
        y, x_preact = x, x
        last = len(self.convs) - 1
        for j, (conv_j, norm_j) in enumerate(zip(self.convs, self.norms)):
            if self.preact:
                # conv j reads relu(bn(y)); the first conv with the projection.
                y = barrier(self.lowering, jax.nn.relu(apply_norm(norm_j, y, train)),
                            [conv_j, self.projection if j == 0 else None])
                if j == 0:
                    x_preact = y
                y = conv_j(y)
            else:
                y = apply_norm(norm_j, conv_j(y), train)
                if j < last:
                    y = barrier(self.lowering, jax.nn.relu(y), [self.convs[j + 1]])
        s = self.shortcut(x, x_preact, train) if (self.residual or keep is not True) else None
        if keep is True:
            out = y + s if self.residual else y
        elif keep is False:
            out = s
        else:
            out = keep * y + s if self.residual else keep * y + (1 - keep) * s
        # Always a barrier: without one XLA recomputes the chain of residual sums inside later
        # blocks' fusions (ResNet-56 step 1.02x slower).
        return barrier(self.lowering, out if self.preact else jax.nn.relu(out))


class ResNet(nnx.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10, *, form: str = "cifar",
                 residual: bool = True, shortcut: str | None = None, preact: bool = False,
                 batch_norm: bool = True, in_channels: int = 3, width: int | None = None,
                 stem_stride: int | None = None, zero_init_residual: bool = False,
                 dtype=jnp.float32, lowering: Lowering = PLAIN, rngs: nnx.Rngs):
        if form == "cifar":
            if (depth - 2) % 6:
                raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
            n, width = (depth - 2) // 6, width or 16
            stages, bottleneck = (n, n, n), False
            widths = [width, 2 * width, 4 * width]
            shortcut = shortcut or "A"
        elif form == "imagenet":
            if depth not in IMAGENET_LAYOUT:
                raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_LAYOUT)}")
            stages, bottleneck = IMAGENET_LAYOUT[depth]
            width = width or 64
            widths = [width * 2 ** i * (4 if bottleneck else 1) for i in range(4)]
            shortcut = shortcut or "B"
        else:
            raise ValueError(f"form must be 'cifar' or 'imagenet', got {form!r}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.depth, self.form, self.residual, self.preact = depth, form, residual, preact
        self.dtype, self.lowering = dtype, lowering
        stem_kernel = 3 if form == "cifar" else 7
        stem_stride = stem_stride or (1 if form == "cifar" else 2)
        self.stem = conv(in_channels, width, stem_kernel, stem_stride, bias=not batch_norm,
                         dtype=dtype, rngs=rngs, lowering=lowering)
        # Pre-activation nets normalise inside the blocks and once more before pooling.
        self.stem_norm = nnx.data(None if preact else norm(width, enabled=batch_norm, dtype=dtype,
                                                           rngs=rngs, lowering=lowering))
        blocks, cin = [], width
        for stage, (count, cout) in enumerate(zip(stages, widths)):
            for i in range(count):
                stride = 2 if (i == 0 and stage > 0) else 1
                blocks.append(Block(cin, cout, stride, bottleneck=bottleneck, residual=residual,
                                    preact=preact, shortcut=shortcut, batch_norm=batch_norm,
                                    dtype=dtype, rngs=rngs, lowering=lowering,
                                    zero_init_residual=zero_init_residual))
                cin = cout
        self.blocks = nnx.List(blocks)
        self.final_norm = nnx.data(norm(cin, enabled=batch_norm, dtype=dtype, rngs=rngs,
                                        lowering=lowering) if preact else None)
        self.head = Linear(cin, num_classes, axes=("embed", None), dtype=dtype,
                           dot_general=lowering.dot_general, rngs=rngs)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None,
                 skip_blocks: Sequence[int] | jax.Array = ()):
        del rngs  # no dropout in these networks; accepted for the common call convention
        x = self.stem(x.astype(self.dtype))
        if not self.preact:
            x = barrier(self.lowering, jax.nn.relu(apply_norm(self.stem_norm, x, train)))
        if self.form == "imagenet":
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        static_skip = isinstance(skip_blocks, (tuple, list, set, range))
        for i, block in enumerate(self.blocks):
            keep = (i not in skip_blocks) if static_skip else 1 - skip_blocks[i].astype(x.dtype)
            x = block(x, train=train, keep=keep)
        if self.preact:
            x = jax.nn.relu(apply_norm(self.final_norm, x, train))
        return self.head(x.mean(axis=(1, 2))).astype(jnp.float32)

    def layer_paths(self) -> list[tuple]:
        """Parameter paths of the weight layers (conv/linear kernels) ordered by depth."""
        paths = [("stem", "kernel")]
        for i, block in enumerate(self.blocks):
            paths += [("blocks", i, "convs", j, "kernel") for j in range(len(block.convs))]
        return paths + [("head", "kernel")]


class PlainNet(ResNet):
    """ResNet with every shortcut removed (He et al. 2016a's plain baseline); same code, same params."""

    def __init__(self, depth: int = 20, num_classes: int = 10, **kwargs):
        super().__init__(depth, num_classes, residual=False, **kwargs)


class PreActResNet(ResNet):
    """Pre-activation ResNet (He et al. 2016b, "Identity Mappings in Deep Residual Networks")."""

    def __init__(self, depth: int = 20, num_classes: int = 10, **kwargs):
        super().__init__(depth, num_classes, preact=True, **kwargs)


def _signature_without(name):
    sig = inspect.signature(ResNet.__init__)
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.name != name])


# Explicit signatures, so config-driven construction (`jaxnets.models.build_model`) sees which
# keywords the subclasses accept instead of an open **kwargs.
PlainNet.__init__.__signature__ = _signature_without("residual")
PreActResNet.__init__.__signature__ = _signature_without("preact")


def layer_norms(state, paths: Sequence[tuple]) -> np.ndarray:
    """L2 norms of the variables at `paths` in an nnx.State (gradients or parameters)."""
    flat = {path: v for path, v in nnx.to_flat_state(state)}
    return np.array([float(jnp.linalg.norm(jnp.asarray(flat[p][...], jnp.float32))) for p in paths])


def param_count(model: nnx.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
