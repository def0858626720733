"""When XLA:CPU must finish one collective program before the next one is launched.

With several processes (collectives over gloo) and several CPU devices in a process, launching
train steps back to back (JAX's asynchronous dispatch) deadlocks now and then: gdb showed one
local device inside step N's all-reduce (gloo `waitSend`) while the launch of the other local
device's step N waited behind a queued step N+1, and the other rank's devices waited in
`waitRecv`; every thread idle, for good. `jaxnets launch --processes 2 --devices-per-process 2
-- train --config experiments/mnist_cnn.py:smoke` hung so in 11 of 20 runs (at any step, also
without checkpoints or evaluation, with JAX_CPU_ENABLE_ASYNC_DISPATCH=false, with either
intra-op thread setting, without jaxnets' native kernels). Waiting for each step's results
before the next launch ended every run since, in the same time (on CPU the host has little to
overlap); one device per process, or one process with several devices, never hung. Figures:
benchmarks/results/faults_cpu.md. The trainer asks `serial_collective_launches()` once and
then blocks on each train and eval step's results.
"""
from __future__ import annotations

import jax


def serial_collective_launches() -> bool:
    return jax.default_backend() == "cpu" and jax.process_count() > 1 and jax.local_device_count() > 1
