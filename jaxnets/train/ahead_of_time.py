"""`jaxnets compile`: the train step `jaxnets train` would run, compiled for a target ahead of time.

    report = compile_for_target(config, parse_target("tpu:v5p-64"))

The trainer itself builds the step (model, optimizer, sharding rules, mesh, non-finite guard,
donation, dtype policy, layer choices for the target's platform) from its abstract state
(`Trainer(..., layout_only=True, devices=...)`): nothing is allocated. The step is lowered with
`jax.ShapeDtypeStruct`s carrying the shardings the run would give it, compiled by the target's
compiler and read back by `jaxnets.parallel.compile.analyse`.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import jax

from jaxnets.parallel.compile import analyse, analyse_out_of_memory, compile_with_text, out_of_memory
from jaxnets.parallel.targets import Target, devices as target_devices
from jaxnets.train.trainer import Trainer


def compile_for_target(config, target: Target) -> dict[str, Any]:
    """Build, lower and compile the train step for `target`; the report as a JSON-able dict."""
    t0 = time.time()
    devices = target_devices(target)
    with contextlib.redirect_stdout(sys.stderr):   # stdout carries the report only
        trainer = Trainer(config, None, layout_only=True, devices=devices)
    lowered = trainer.jit_train_step.lower(*trainer.abstract_step_args())
    t_lower = time.time()
    try:
        compiled, text = compile_with_text(lowered)
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler refuses a program that cannot fit its chip's HBM: that is the answer
        # `fits: false`, with the compiler's own figure of what it needed.
        if not out_of_memory(str(e)):
            raise
        return analyse_out_of_memory(trainer, target, str(e), timings={
            "build_and_lower_s": t_lower - t0, "compile_s": time.time() - t_lower})
    t_compile = time.time()
    return analyse(trainer, target, compiled, text, timings={
        "build_and_lower_s": t_lower - t0, "compile_s": t_compile - t_lower})
