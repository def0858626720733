"""Convolution helpers for XLA:CPU: a fusion barrier, native 3x3 convolutions and filter
gradients, and folded narrow 3x3 convolutions, applied as a `jaxnets.nn.lowering.ConvLowering`
says.

    conv = conv_function(lowering.conv)     # lax.conv_general_dilated when lowering.conv is None
    nnx.Conv(16, 16, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=conv, ...)

`conv_function(c)` is a drop-in for `jax.lax.conv_general_dilated` (the hook `nnx.Conv`
exposes). Every case but one goes straight to lax. The exception: a 3x3 NHWC convolution
padded by one pixel on every side, stride 1 ("same") or 2 (`conv3x3`, with its own VJP). There:

1. The convolution runs in a native kernel (`jaxnets.kernels.conv_forward`, C++ through XLA's
   FFI) where `ConvLowering.forward` is "native" and the kernel takes the operands, and so does
   the input gradient, the same kind of convolution (of the output gradient, with the kernel
   flipped and its channel axes swapped). XLA:CPU ran 16-channel layers at about half the FLOP
   rate it reaches with 32 or more channels; the kernel does not care how narrow they are.
2. Where the convolution stays with XLA, narrow layers (at most 16 input channels, even width)
   are folded where `ConvLowering.fold` says (the platform layer sets it on single-threaded
   CPU devices; see `_foldable`): pairs of neighbouring columns go into channels and the
   folded image is convolved instead,

       xp[b, h, j] = (x[b, h, 2j - 1], x[b, h, 2j])       j = 0 .. W/2   (one zero column each side)
       y[b, h, 2j + q] = sum over rows h-1..h+1 and folded columns j, j+1 of xp . K'

   a 3x2 convolution from 2C to 2O channels, whose kernel K' holds the 3x3 taps (and zeros) at
   fixed places: 4/3 of the multiply-adds, on the library XLA uses for wider layers.
   Stride 2 (a ResNet's downsampling layers): the convolution runs natively as in 1., its input
   gradient (a transposed convolution) stays with XLA.
3. The filter gradient runs in a native kernel (`jaxnets.kernels.conv_filter_grad`) where one
   is built and `ConvLowering.filter_grad_choice` says so: XLA:CPU computes it as a convolution
   whose kernel is the whole gradient image, behind two transposes, at about half the speed.
   Without a compiler, lax's forms run.

Results are the same sums in another order (float32 rounding only). The measurements behind
each choice, with their commands: docs/cpu_choices.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxnets.kernels import conv_filter_grad, conv_forward, fusion_barrier
from jaxnets.nn.layers import rows_dot
from jaxnets.nn.lowering import PLAIN_CONV, ConvLowering

FOLD_MAX_CHANNELS = 16
_NHWC = ("NHWC", "HWIO", "NHWC")


def materialize(x):
    """x itself, computed once: a fusion barrier for XLA:CPU on every convolution input.

    Why: XLA:CPU copies the elementwise chain that produces an activation (BN, ReLU and,
    across residual blocks, the whole stage: BN, add, ReLU, BN, add, ...) into every fusion
    that reads it, including the transposed copies its filter-gradient convolutions take,
    and such a fused transpose runs at a fraction of a plain one's speed: one of them
    recomputed several blocks of BN inside a ResNet step. XLA does not fuse through a custom
    call: the barrier is one (`jaxnets.kernels.fusion_barrier`, a copy at most) where a native
    library is built, else a matmul with the identity, which XLA does not fuse through either
    and which is exact (each output is 1 * x_d plus exact zeros). Other backends get x untouched.

    The cotangent passes straight through, with no barrier of its own: with the native filter
    gradient, a barrier there too measured slower. Figures: docs/cpu_choices.md.

    Whether a model calls it is its `Lowering.fusion_barriers` (the platform layer: CPU only).
    """
    return _barrier(x)


@jax.custom_vjp
def _barrier(x):
    return _barrier_call(x)


def _barrier_call(x):
    if fusion_barrier.supported(x):
        return fusion_barrier.fusion_barrier(x)
    return _identity_matmul(x)


def _identity_matmul(x):
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    return jnp.einsum("...c,cd->...d", x, eye, precision=lax.Precision.HIGHEST)


_barrier.defvjp(lambda x: (_barrier_call(x), None), lambda _, g: (g,))


def fold_kernel(w):
    """[3, 3, C, O] 3x3 taps -> [3, 2, 2C, 2O] kernel of the column-pair-folded convolution.

    Output pixel 2j + q reads input pixels 2j + q - 1 .. 2j + q + 1; in folded coordinates
    (column j holds pixels 2j - 1, 2j as slots p = 0, 1) tap dw of output q sits at folded
    column (q + dw) // 2, slot (q + dw) % 2.
    """
    kh, _, c, o = w.shape
    zero = jnp.zeros((kh, c, o), w.dtype)
    taps = [[[zero, zero], [zero, zero]], [[zero, zero], [zero, zero]]]  # [column][p][q]
    for q in range(2):
        for dw in range(3):
            taps[(q + dw) // 2][(q + dw) % 2][q] = w[:, dw]
    # [kh, column, p, C, q, O] -> [kh, 2, 2C, 2O]
    k = jnp.stack([jnp.stack([jnp.stack(taps[col][p], axis=2) for p in range(2)], axis=1)
                   for col in range(2)], axis=1)
    return k.reshape(kh, 2, 2 * c, 2 * o)


def _folded(x, w, precision):
    b, h, width, c = x.shape
    xp = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0))).reshape(b, h, width // 2 + 1, 2 * c)
    y = lax.conv_general_dilated(xp, fold_kernel(w), (1, 1), ((1, 1), (0, 0)),
                                 dimension_numbers=_NHWC, precision=precision)
    return y.reshape(b, h, width, w.shape[-1])


def _direct(x, w, precision, stride=1):
    return lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=_NHWC,
                                    precision=precision)


def _foldable(channels, width, fold):
    """Fold this input? Only where `fold` (ConvLowering.fold) asks and the shape allows.
    The platform layer asks on single-threaded XLA:CPU devices (as resnet_cifar runs). With one
    multi-threaded device Eigen's threading of the narrow layers wins (docs/cpu_choices.md)."""
    return bool(fold) and channels <= FOLD_MAX_CHANNELS and width % 2 == 0


def native_filter_grad(x_shape, g_shape, lowering: ConvLowering) -> bool:
    """Whether the filter gradient of these operands runs in the native kernel: its register
    tiles need 8 input channels at a time (so the 3-channel stem stays on lax, faster there) and
    the lowering (the kernel table, else its default) must choose it."""
    return x_shape[-1] % 8 == 0 and lowering.filter_grad_choice(x_shape, g_shape) == "native"


def _native_filter_grad_runs(x, g, lowering: ConvLowering, stride: int = 1) -> bool:
    return native_filter_grad(x.shape, g.shape, lowering) and conv_filter_grad.supported(x, g, stride)


def native_reads(x, kernel_shape, strides, padding, lowering: ConvLowering | None) -> bool:
    """Whether only native kernels read x in a convolution of it (the forward and the filter
    gradient of a 3x3 stride-1 one-pixel-padded convolution the lowering sends to them). A
    custom call reads its operand as one buffer, so a fusion barrier in front (`materialize`)
    would only cost its copy; every other convolution reads x through XLA, and needs one."""
    if lowering is None or tuple(kernel_shape[:2]) != (3, 3):
        return False
    if tuple(strides) != (1, 1) or [tuple(p) for p in padding] != [(1, 1), (1, 1)]:
        return False
    kernel = jax.ShapeDtypeStruct(tuple(kernel_shape), x.dtype)
    g = jax.ShapeDtypeStruct(tuple(x.shape[:-1]) + (kernel_shape[-1],), x.dtype)
    return native_forward(x, kernel, lowering) and _native_filter_grad_runs(x, g, lowering)


_recorded: list | None = None   # (x shape, g shape) of traced filter gradients, while recording


@contextlib.contextmanager
def record_filter_grads():
    """Collect the operand shapes of every 3x3 filter gradient traced inside (for `jaxnets
    tune`, which times the kernels for exactly those shapes)."""
    global _recorded
    saved, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = saved


def _filter_grad(x, g, precision, lowering, stride=1):
    if _recorded is not None:
        _recorded.append((tuple(x.shape), tuple(g.shape)))
    # The native kernel (jaxnets/kernels/conv3x3_filter_grad.cc) where chosen and supported.
    if _native_filter_grad_runs(x, g, lowering, stride):
        return conv_filter_grad.conv3x3_filter_grad(x, g, lowering.native_threads, stride)
    return conv_filter_grad.reference(x, g, precision, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv3x3(x, w, precision=None, lowering: ConvLowering = PLAIN_CONV, stride: int = 1):
    """3x3 NHWC convolution padded by one pixel, `stride` 1 ('same') or 2: native, folded or
    lax's as `lowering` chooses, and so its gradients (see module)."""
    return _forward(x, w, precision, lowering, stride)


def native_forward(x, w, lowering: ConvLowering) -> bool:
    """Whether this convolution runs in the native kernel: the lowering asks for it and the
    kernel takes the operands (float32, output channels a multiple of 16)."""
    return lowering.forward == "native" and conv_forward.supported(x, w)


def _forward(x, w, precision, lowering, stride=1):
    if native_forward(x, w, lowering):
        return conv_forward.conv3x3_forward(x, w, lowering.native_threads, stride=stride)
    if stride == 1 and _foldable(x.shape[-1], x.shape[2], lowering.fold):
        return _folded(x, w, precision)
    return _direct(x, w, precision, stride)


def _fwd(x, w, precision, lowering, stride):
    return _forward(x, w, precision, lowering, stride), (x, w)


def _bwd(precision, lowering, stride, res, g):
    x, w = res
    if stride != 1:   # the input gradient of a strided convolution: XLA's transposed convolution
        dx = jax.vjp(lambda x: _direct(x, w, precision, stride), x)[1](g)[0]
        return dx, _filter_grad(x, g, precision, lowering, stride).astype(w.dtype)
    w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)   # input gradient = convolution with this kernel
    # g arrives as batch norm's backward chain: computed once, not inside every XLA consumer (a
    # fused pad runs 5x slower than a plain one). Native kernels read it as one buffer anyway.
    if not (native_forward(g, w_t, lowering) and _native_filter_grad_runs(x, g, lowering)):
        g = materialize(g)
    dx = _forward(g, w_t, precision, lowering)
    return dx, _filter_grad(x, g, precision, lowering).astype(w.dtype)


conv3x3.defvjp(_fwd, _bwd)


def _stride(size, lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, kwargs) -> int:
    """The stride (1 or 2) of a `size` x `size` NHWC convolution padded by size // 2 pixels on
    every side (3x3: one pixel; 1x1: none), else 0."""
    if lhs.ndim != 4 or rhs.shape[:2] != (size, size) or feature_group_count != 1:
        return 0
    if any(v is not None for v in kwargs.values()):   # out_sharding, preferred_element_type
        return 0
    if tuple(strides) not in ((1, 1), (2, 2)):
        return 0
    pad = size // 2
    if isinstance(padding, str):
        # For a 3x3 kernel at stride 1, "SAME" is one pixel on every side (nnx.Conv's default);
        # at stride 2 it pads even sizes on one side only. "VALID" is no padding.
        if padding.upper() != ("SAME" if pad else "VALID") or (pad and tuple(strides) != (1, 1)):
            return 0
    elif [tuple(p) for p in padding] != [(pad, pad), (pad, pad)]:
        return 0
    if any(d is not None and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation)):
        return 0
    nhwc = dimension_numbers is not None and (
        lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
    return strides[0] if nhwc else 0


def _3x3_stride(*args) -> int:
    """The stride (1 or 2) of a 3x3 NHWC convolution padded by one pixel on every side, else 0."""
    return _stride(3, *args)


def _1x1_stride(*args) -> int:
    """The stride (1 or 2) of an unpadded 1x1 NHWC convolution, else 0."""
    return _stride(1, *args)


def conv1x1(x, w, precision=None, lowering: ConvLowering = PLAIN_CONV, stride: int = 1):
    """An unpadded 1x1 NHWC convolution, `stride` 1 or 2 (a ResNet's projection shortcut), as
    `rows_dot` of the sampled pixels, whose filter gradient x^T dy is the native kernel of
    `jaxnets.kernels.dense_weight_grad` where it takes the operands (`ConvLowering.pointwise`
    "native"); the input gradient is the sampling's transpose (zeros between the pixels).
    XLA:CPU took that filter gradient as a convolution behind a transposed copy of x: 1.25 ms
    for a ResNet's 16 -> 32 projection at batch 64 (one core), about a tenth of the matmul's
    FLOP rate."""
    xs = x if stride == 1 else x[:, ::stride, ::stride, :]
    return rows_dot(xs, w[0, 0], (((3,), (0,)), ((), ())), precision,
                    native_threads=lowering.native_threads)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, *,
                         lowering: ConvLowering | None = None, **kwargs):
    """`lax.conv_general_dilated`; with a `lowering`, 3x3 NHWC convolutions padded by one pixel,
    stride 1 or 2, go through `conv3x3` (see module), and unpadded 1x1 ones through `conv1x1`
    where `lowering.pointwise` is "native"."""
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, kwargs)
    stride = lowering is not None and _3x3_stride(*args)
    if stride:
        return conv3x3(lhs, rhs, precision, lowering, stride)
    stride = lowering is not None and lowering.pointwise == "native" and _1x1_stride(*args)
    if stride:
        return conv1x1(lhs, rhs, precision, lowering, stride)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision,
                                    **kwargs)


@dataclasses.dataclass(frozen=True)
class _LoweredConv:
    """`conv_general_dilated` with a fixed lowering; compares by value (a static attribute of the
    nnx.Conv layers holding it)."""
    lowering: ConvLowering

    def __call__(self, *args, **kwargs):
        return conv_general_dilated(*args, lowering=self.lowering, **kwargs)


def conv_function(lowering: ConvLowering | None):
    """The `conv_general_dilated=` hook for nnx.Conv layers under `lowering` (None: lax's own)."""
    return lax.conv_general_dilated if lowering is None else _LoweredConv(lowering)
