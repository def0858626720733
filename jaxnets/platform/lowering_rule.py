"""The layer choices of a run (`jaxnets.nn.lowering.Lowering`), decided before anything is traced.

    lowering = lowering_for(config.platform)      # tasks pass it to the models they build

The rule, per backend (`config.platform.lowering`: "auto" applies it, "plain" turns all off):
- GPU/TPU: nothing (`Lowering()`): XLA's own fusion, loops and convolutions.
- CPU: fusion barriers (on the inputs of convolutions XLA runs and on residual sums),
  `rows_dot` Linear layers, layer stacks of up to UNROLL_MAX_LAYERS unrolled, 3x3 convolutions
  through `jaxnets.nn.conv.conv3x3` (narrow layers folded on single-threaded devices; the
  filter gradient from the kernel table `config.platform.kernel_table` written by `jaxnets
  tune`, else the native kernel wherever it applies), batch norm's channel sums and
  LayerNorm layers by native kernels, and Linear layers' weight gradients by the native kernel
  on AVX-512 builds. Why each pays: the docstrings of `jaxnets.nn.conv.materialize`,
  `jaxnets.nn.layers.rows_dot`, `jaxnets.nn.conv`, `jaxnets.kernels.channel_moments`,
  `jaxnets.kernels.layer_norm`, `jaxnets.kernels.dense_weight_grad` and UNROLL_MAX_LAYERS below.

Every input of the rule is fixed before tracing (backend, XLA_FLAGS as installed, device count,
the table's contents), so every host of a job given the same table compiles the same program;
nothing is timed here.
"""
from __future__ import annotations

import contextlib
import threading

import jax

from jaxnets.errors import UserError
from jaxnets.kernels import native
from jaxnets.nn.lowering import ConvLowering, Lowering
from jaxnets.platform import kernel_table
from jaxnets.platform.devices import single_threaded_cpu

# Layer stacks up to this deep are unrolled on CPU (compile time grows with the depth). On CPU,
# XLA runs a scan over layers as a while loop that copies every layer's saved activations into
# stacked buffers (initialised by broadcasts) for the backward pass: about a sixth of the
# 6 x 384 LM's train step on one core (compare `python -m benchmarks.transformer_step --pin 0
# --sizes large` with and without `--set model.scan_layers=False`). Unrolled, each layer's
# activations keep their own buffers while its parameters stay stacked. GPU/TPU keep the loop:
# one compiled layer, fast compiles for deep stacks.
UNROLL_MAX_LAYERS = 12
MODES = ("auto", "plain")


class _Building(threading.local):
    backend: str | None = None


_building = _Building()


@contextlib.contextmanager
def building_for(backend: str):
    """While active, `lowering_for` decides for `backend`: the trainer builds its models for
    its mesh's platform (a TPU slice's under `jaxnets compile`, on a CPU host)."""
    saved, _building.backend = _building.backend, backend
    try:
        yield
    finally:
        _building.backend = saved


def lowering_for(platform_config=None, backend: str | None = None) -> Lowering:
    """The `Lowering` for `backend` (default: that of `building_for`, else JAX's default
    backend) under `platform_config`
    (a run's `config.platform`: {"lowering": "auto" | "plain", "kernel_table": path or ""})."""
    settings = dict(platform_config or {})
    mode = settings.get("lowering", "auto")
    if mode not in MODES:
        raise UserError(f"platform.lowering must be one of {MODES}, got {mode!r}.")
    backend = backend or getattr(_building, "backend", None) or jax.default_backend()
    if mode == "plain" or backend != "cpu":
        return Lowering()
    table = kernel_table.load(settings.get("kernel_table") or "")
    return Lowering(fusion_barriers=True, rows_dot=True, unroll_layers=UNROLL_MAX_LAYERS,
                    conv=cpu_conv_lowering(table),
                    # Every build (portable too: memory-bound sums): one program on every host.
                    batch_norm_sums="native" if native.enabled() else "xla",
                    dense_weight_grad="native" if native_dense_weight_grads() else "xla",
                    # Every build too: each beat XLA's LayerNorm forward+backward 2-5x
                    # (docs/cpu_choices.md).
                    layer_norm="native" if native.enabled() else "xla")


def native_dense_weight_grads() -> bool:
    """Whether x^T dy weight gradients (Linear layers, 1x1 convolutions) take the native kernel:
    AVX-512 builds only. The AVX2 build ran the Transformer LM's feed-forward shapes slower than
    XLA (docs/cpu_choices.md), the portable one 3x slower."""
    return native.enabled() and native.machine_isa() == "avx512"


def cpu_conv_lowering(table: dict | None = None) -> ConvLowering:
    """3x3 convolutions on XLA:CPU: fold on single-threaded devices; filter gradients from the
    table, else the native kernel where a native library is available (`jaxnets.kernels.native`)."""
    single = single_threaded_cpu()
    entries = kernel_table.filter_grad_entries(table or {})
    return ConvLowering(
        # As the filter gradient: the same program on every host whatever its build (the forced
        # portable build on x86, SSE2, is slower than XLA: docs/cpu_choices.md).
        forward="native" if native.enabled() else "xla",
        fold=single, filter_grad=entries,
        default_filter_grad="native" if native.enabled() else "xla",
        # Inline on single-threaded devices and wherever several CPU devices share XLA's one
        # intra-op pool: there each device's call split its batch over the pool, and one
        # device's tasks could wait behind the other's (a CI run hung 40 s in the partitioned
        # step's all-reduce; tests/test_conv_filter_grad.py::
        # test_threaded_split_on_several_devices_finishes). Only one multi-threaded device
        # uses the pool.
        native_threads=1 if single or jax.local_device_count() > 1 else 0,
        pointwise="native" if native_dense_weight_grads() else "xla")
