"""How layers lower for the backend a program compiles for: choices a model receives as an
argument, as it receives `dtype`.

    model = ResNet(depth=20, lowering=Lowering(fusion_barriers=True, conv=ConvLowering()), rngs=...)

The defaults change nothing (plain lax/XLA code, right for GPU and TPU). The platform layer
decides the values for a run (`lowering_for` in the platform layer: a fixed rule per backend
plus the kernel table `jaxnets tune` writes) and tasks pass them to the models they build; no
layer reads the environment or times anything while it is traced, so every host of a job
compiles the same program from the same choices.
"""
from __future__ import annotations

import dataclasses

from jax import lax

from jaxnets.nn.layers import native_rows_dot, rows_dot


@dataclasses.dataclass(frozen=True)
class ConvLowering:
    """3x3 stride-1 'same' NHWC convolutions through `jaxnets.nn.conv.conv3x3` (XLA:CPU).

    forward: "native" (the C++ kernel, `jaxnets.kernels.conv_forward`, where its operands allow)
        or "xla": the convolution itself and its input gradient (a convolution of the same kind).
    fold: fold narrow layers' column pairs into channels (single-threaded CPU devices win) where
        the convolution stays with XLA.
    filter_grad: ((shape key, "native" | "xla"), ...) from a kernel table; a shape not listed
        takes `default_filter_grad`. Keys: `filter_grad_key(x.shape, g.shape)`.
    default_filter_grad: "native" (the C++ kernel where its operands allow) or "xla".
    native_threads: 1 runs the native kernel on the calling thread (single-threaded or several
        CPU devices sharing XLA's pool), 0 splits it over XLA's intra-op pool.
    pointwise: "native": unpadded 1x1 convolutions (stride 1 or 2) as matmuls whose filter
        gradient is the native dense weight gradient (`jaxnets.nn.conv.conv1x1`), or "xla".
    """
    forward: str = "xla"
    fold: bool = False
    filter_grad: tuple[tuple[str, str], ...] = ()
    default_filter_grad: str = "native"
    native_threads: int = 1
    pointwise: str = "xla"

    def filter_grad_choice(self, x_shape, g_shape) -> str:
        return dict(self.filter_grad).get(filter_grad_key(x_shape, g_shape), self.default_filter_grad)


def filter_grad_key(x_shape, g_shape) -> str:
    """Kernel-table key of a filter gradient: the operands' shapes as traced (global batch);
    a strided convolution's (fewer output pixels than input pixels) adds its output's."""
    b, h, w, c = x_shape
    key = f"{b}x{h}x{w}x{c}->{g_shape[-1]}"
    return key if tuple(g_shape[1:3]) == (h, w) else f"{key}@{g_shape[1]}x{g_shape[2]}"


@dataclasses.dataclass(frozen=True)
class Lowering:
    """fusion_barriers: `materialize` the inputs of convolutions XLA runs, and a network's
        residual sums (an identity matmul XLA:CPU does not fuse through; see
        jaxnets.nn.conv.materialize and `jaxnets.models.resnet.barrier`).
    rows_dot: Linear layers merge leading dims into rows (`jaxnets.nn.layers.rows_dot`).
    unroll_layers: scanned stacks of up to this many identical layers are unrolled (0: the loop).
    conv: `ConvLowering` for 3x3 convolutions, or None for lax's convolution as it is.
    batch_norm_sums: "native" (batch norm's per-channel sums by the CPU kernel of
        `jaxnets.kernels.channel_moments`, where its operands allow) or "xla".
    dense_weight_grad: "native" (with `rows_dot`: Linear layers' weight gradients by the CPU
        kernel of `jaxnets.kernels.dense_weight_grad`, where its operands allow) or "xla".
    layer_norm: "native" (LayerNorm layers by the CPU kernels of `jaxnets.kernels.layer_norm`,
        where their operands allow) or "xla".
    """
    fusion_barriers: bool = False
    rows_dot: bool = False
    unroll_layers: int = 0
    conv: ConvLowering | None = None
    batch_norm_sums: str = "xla"
    dense_weight_grad: str = "xla"
    layer_norm: str = "xla"

    @property
    def batch_norm(self) -> tuple[str, int]:
        """`sums=` for `jaxnets.nn.batch_norm.BatchNorm` layers."""
        return (self.batch_norm_sums, self.native_threads)

    @property
    def native_threads(self) -> int:
        """Threads of every native CPU kernel (the conv filter gradient, causal attention): the
        platform's one decision, stored on `conv`; 1 (the calling thread) without it."""
        return self.conv.native_threads if self.conv else 1

    @property
    def norm_threads(self) -> int | None:
        """`native_threads=` for LayerNorm layers (None: XLA's form)."""
        return self.native_threads if self.layer_norm == "native" else None

    @property
    def dot_general(self):
        """The `dot_general=` for Linear layers."""
        if not self.rows_dot:
            return lax.dot_general
        return native_rows_dot(self.native_threads) if self.dense_weight_grad == "native" else rows_dot

    def scan_unroll(self, num_layers: int) -> int:
        """`unroll` for the lax.scan over `num_layers` identical layers."""
        return max(num_layers, 1) if 0 < num_layers <= self.unroll_layers else 1


PLAIN = Lowering()
PLAIN_CONV = ConvLowering()
