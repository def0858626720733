"""`jaxnets tune`: time the kernel choices of an experiment on this machine and write the table.

    jaxnets tune --config experiments/resnet_cifar.py:smoke --out kernels.json
    jaxnets train --config experiments/resnet_cifar.py:smoke --config.platform.kernel_table=kernels.json ...

The experiment's train step is traced (not compiled, nothing trained) with the platform's layer
choices, recording the operand shapes of every 3x3 filter gradient; each shape is then timed
as the native kernel and as XLA's form at its per-device batch, with the run's threading, and
the faster goes into the table with both timings (`jaxnets.kernels.conv_filter_grad.time_choice`).
Give every host of a job the same table: they compile the same program.
"""
from __future__ import annotations

import datetime
import os
import platform as host_platform

import jax

from jaxnets.kernels import conv_filter_grad, native
from jaxnets.data.pipeline import TrainIterator
from jaxnets.errors import UserError
from jaxnets.nn import conv
from jaxnets.nn.lowering import filter_grad_key
from jaxnets.parallel import sharding
from jaxnets.platform import kernel_table
from jaxnets.platform.lowering_rule import cpu_conv_lowering


def abstract_step_args(trainer) -> tuple:
    """(state, batch, step) of `trainer`'s train step as sharded shapes: for tracing or lowering
    the step without allocating anything (a `Trainer(..., layout_only=True)` is enough)."""
    c = trainer.config
    # One batch read as the run reads it (after its transform): its keys, shapes and dtypes.
    local = TrainIterator(trainer.dataset.splits[c.data.train_split], c.data.batch_size, c.seed,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          transform=trainer.dataset.train_transform).batch(0)
    batch = {k: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(),) + v.shape[1:], v.dtype,
                                     sharding=trainer.batch_sharding) for k, v in local.items()}
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         trainer.abstract_state, trainer.state_sharding)
    return state, batch, jax.ShapeDtypeStruct((), "int32")


def traced_filter_grads(trainer) -> list[tuple[tuple, tuple]]:
    """Operand shapes of the 3x3 filter gradients in `trainer`'s train step (traced only)."""
    trainer._compile_steps()
    with conv.record_filter_grads() as shapes:
        trainer.jit_train_step.trace(*abstract_step_args(trainer))
    return sorted(set(shapes))


def tune(trainer, command: str = "") -> dict:
    """The kernel table for `trainer`'s experiment on this machine."""
    if jax.default_backend() != "cpu" or native.ffi_target(conv_filter_grad.NAME, "Conv3x3FilterGrad") is None:
        raise UserError("jaxnets tune times the native CPU kernels against XLA's: it needs the CPU "
                        "backend and a built native kernel (a C++ compiler; JAXNETS_NATIVE_KERNELS unset).")
    lowering = cpu_conv_lowering()
    devices = sharding.data_parallel_size(trainer.mesh, trainer.rules)
    entries = {}
    for x_shape, g_shape in traced_filter_grads(trainer):
        if x_shape[-1] % 8 or g_shape[-1] % 16:   # the kernel does not apply: nothing to choose
            continue
        per_device = (x_shape[0] // devices,) + x_shape[1:], (g_shape[0] // devices,) + g_shape[1:]
        entry = conv_filter_grad.time_choice(*per_device, threads=lowering.native_threads)
        entries[filter_grad_key(x_shape, g_shape)] = {**entry, "per_device": list(per_device[0])}
        print(f"{kernel_table.FILTER_GRAD} {filter_grad_key(x_shape, g_shape)}: {entry}", flush=True)
    return {"format": kernel_table.FORMAT,
            "written_by": {"command": command, "isa": native.machine_isa(),
                           "machine": host_platform.processor() or host_platform.machine(),
                           "jax": jax.__version__, "devices": jax.device_count(),
                           "load": round(os.getloadavg()[0], 2),
                           "date": datetime.date.today().isoformat()},
            kernel_table.FILTER_GRAD: entries}
